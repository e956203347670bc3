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
//! - Guarantees on failure (the only mid-operation failure is a table-page allocation):
//!   `map` is all-or-nothing — a failure removes again the pages this call mapped and detaches
//!   the tables it added, so every GPA keeps its old translation or none. `unmap`, `protect` and
//!   `grant` first split the large leaves straddling the range's two ends (at most two splits per
//!   end), which keeps every translation identical, and only then change entries without
//!   allocating; on failure every translation is unchanged (split tables may stay, still
//!   consistent). `harvest_dirty`, `lookup` and `teardown` never allocate. An entry is published
//!   only after the table it references is fully written, and only ever references a fully
//!   initialized table page or a host range the caller passed to `map`.
//! - Large pages: 2 MiB and 1 GiB leaves where GPA and HPA are both aligned, the range covers
//!   the whole page and the caller's `max_page` allows it. Pages are never merged back into a
//!   large leaf after a split.
//! - Invalidation: each change records whether cached translations may be stale (leaf removed,
//!   rights reduced, dirty flag cleared, table detached). Operations return the owed
//!   [`Invalidation`]; the caller performs it and calls [`Table::finish_invalidation`]. Detached
//!   table pages are freed only then, because a CPU's paging-structure caches may still walk them;
//!   likewise the core must not release host pages reported by `unmap`/`teardown` before it.
//!   Adding rights or mapping a not-present GPA owes nothing: a stale, less permissive cached
//!   entry only causes a spurious EPT violation / nested page fault, which the core retries.
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
