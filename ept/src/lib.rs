//! Second-level address translation tables: Intel EPT and AMD NPT formats.
//!
//! # Design
//! - One [`Table`] implementation, two entry formats chosen by [`Format`] at creation: Intel EPT
//!   ([`ept_entry`]) and AMD nested paging, which is the ordinary x86-64 long-mode format
//!   ([`x86_entry`], reusable by shadow paging). 4 levels, 48-bit GPAs at most.
//! - Table pages come from the host through [`TableMemory`]; this crate never allocates on its
//!   own, and nothing it allocates depends on a caller-chosen size beyond the table pages a
//!   mapping needs.
//! - Every operation is a walk over a GPA range with an explicit stack of depth 4 (no recursion,
//!   small frames); per-operation behaviour is a small visitor (`ops`).
//! - Guarantees on failure: `map` is all-or-nothing (a failure undoes the pages this call mapped);
//!   `unmap`/`protect`/`grant` first split the large leaves straddling the range's two ends, which
//!   keeps every translation identical, and only then change entries without allocating, so they
//!   are all-or-nothing too. No entry is ever written that points at anything but a host page the
//!   caller mapped or a fully initialized table page.
//! - Invalidation: each change records whether cached translations may be stale (leaf removed,
//!   rights reduced, dirty flag cleared, table detached). Operations return the owed
//!   [`Invalidation`]; the caller performs it and calls [`Table::finish_invalidation`]. Detached
//!   table pages are freed only then, because a CPU's paging-structure caches may still walk them.
//! - Concurrency: software access is exclusive (`&mut self`); the processor sets accessed/dirty
//!   flags concurrently, so present leaves are only changed with atomic read-modify-writes.
#![cfg_attr(not(test), no_std)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)
)]

pub mod ept_entry;
mod error;
mod format;
mod memory;
mod ops;
mod table;
mod walk;
pub mod x86_entry;

pub use error::Error;
pub use format::{entry_span, Attrs, Format, Invalidation, Kind, Leaf, MemType, PageSize, Perms, LEVELS};
pub use memory::{TableMemory, ENTRIES_PER_PAGE};
pub use table::{Config, RemovedLeaf, Table, Translation};
