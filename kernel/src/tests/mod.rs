//! Host tests of the core (fake host + soft backend as the fake backend).

mod header;
mod qemu;
mod exits;
mod memslots;
mod badinput;
