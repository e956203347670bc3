//! Host tests of the core (fake host + soft backend as the fake backend).
#![allow(clippy::mut_from_ref, clippy::not_unsafe_ptr_arg_deref)]

mod badinput;
mod clock;
mod devfuzz;
mod emulation;
mod eventfd;
mod exits;
mod fullchip;
mod header;
mod irqchip;
mod lapic;
mod lifetime;
mod mce;
mod memslots;
mod pit;
mod qemu;
mod singlestep;
mod svm;
mod vmx;
