//! Second-level address translation tables: Intel EPT and AMD NPT formats.
//!
//! Table pages come from the host through [`TableMemory`]; this crate never allocates on its own.
#![cfg_attr(not(test), no_std)]

mod memory;

pub use memory::TableMemory;
