//! Host tests of the core (fake host + soft backend as the fake backend).
#![allow(clippy::mut_from_ref, clippy::not_unsafe_ptr_arg_deref)]

mod badinput;
mod emulation;
mod eventfd;
mod exits;
mod header;
mod irqchip;
mod lapic;
mod lifetime;
mod memslots;
mod qemu;
mod svm;
mod vmx;
