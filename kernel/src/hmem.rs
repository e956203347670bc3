//! Owned memory from the host heap and page allocator, freed on drop.
//!
//! Every allocation the core makes goes through these wrappers so that failure is an `ENOMEM`
//! (never a panic) and the fake host can count every byte and page.

use core::marker::PhantomData;
use core::mem::{align_of, size_of};
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

use zerocopy::FromZeros;

use crate::errno::{KResult, ENOMEM};
use crate::host::{Host, Page};

/// A `T` in the host heap (like `Box<T>`), created zeroed so large values never touch the stack.
pub struct HBox<T, H: Host> {
    ptr: NonNull<T>,
    host: &'static H,
}

// SAFETY: HBox owns its T exclusively, like Box.
unsafe impl<T: Send, H: Host> Send for HBox<T, H> {}
// SAFETY: shared access only hands out &T.
unsafe impl<T: Sync, H: Host> Sync for HBox<T, H> {}

impl<T: FromZeros, H: Host> HBox<T, H> {
    /// Allocates a zeroed `T` (all-zero is a valid `T`).
    pub fn new_zeroed(host: &'static H) -> KResult<Self> {
        const { assert!(align_of::<T>() <= 16) };
        let size = size_of::<T>().max(1);
        let p = host.heap_alloc(size).ok_or(ENOMEM)?;
        // The host returns zeroed memory, which is a valid T (FromZeros).
        Ok(Self {
            ptr: p.cast(),
            host,
        })
    }
}

impl<T, H: Host> HBox<T, H> {
    /// Moves `value` into the host heap. Only for small `T` (the value passes through the stack).
    pub fn new(host: &'static H, value: T) -> KResult<Self> {
        const { assert!(align_of::<T>() <= 16) };
        let size = size_of::<T>().max(1);
        let p = host.heap_alloc(size).ok_or(ENOMEM)?.cast::<T>();
        // SAFETY: p is a fresh allocation of size_of::<T>() bytes, suitably aligned.
        unsafe { p.as_ptr().write(value) };
        Ok(Self { ptr: p, host })
    }

    /// Allocates a byte-for-byte copy of `init` without passing the value through the stack
    /// (for large `T` built by a `const fn`: keep the initial value in a `static`).
    ///
    /// # Safety
    /// A bitwise copy of `*init` must be a valid, independent `T`: `T` owns no resources and
    /// has no `Drop` (plain data, as a `Copy` type would be).
    pub unsafe fn new_copy(host: &'static H, init: &'static T) -> KResult<Self> {
        const { assert!(align_of::<T>() <= 16) };
        let size = size_of::<T>().max(1);
        let p = host.heap_alloc(size).ok_or(ENOMEM)?.cast::<T>();
        // SAFETY: p is a fresh allocation of size_of::<T>() bytes, suitably aligned and not
        // overlapping `init`; the caller guarantees a bitwise copy is a valid T.
        unsafe { core::ptr::copy_nonoverlapping(init as *const T, p.as_ptr(), 1) };
        Ok(Self { ptr: p, host })
    }

    /// Gives up ownership; the pointer must come back through [`HBox::from_raw`].
    pub fn into_raw(self) -> NonNull<T> {
        let p = self.ptr;
        core::mem::forget(self);
        p
    }

    /// Takes ownership back of a pointer from [`HBox::into_raw`].
    ///
    /// # Safety
    /// `ptr` came from `into_raw` with the same host and is not owned by anyone else.
    pub unsafe fn from_raw(host: &'static H, ptr: NonNull<T>) -> Self {
        Self { ptr, host }
    }
}

impl<T, H: Host> Deref for HBox<T, H> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: ptr is a live, initialized, exclusively owned T.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T, H: Host> DerefMut for HBox<T, H> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in deref, and &mut self gives exclusive access.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T, H: Host> Drop for HBox<T, H> {
    fn drop(&mut self) {
        // SAFETY: we own the value; drop it in place then free the block with its size.
        unsafe {
            core::ptr::drop_in_place(self.ptr.as_ptr());
            self.host.heap_free(self.ptr.cast(), size_of::<T>().max(1));
        }
    }
}

/// A fixed-length zero-initialized array in the host heap.
pub struct HSlice<T, H: Host> {
    ptr: NonNull<T>,
    len: usize,
    host: &'static H,
}

// SAFETY: owns its elements exclusively.
unsafe impl<T: Send, H: Host> Send for HSlice<T, H> {}
// SAFETY: shared access only hands out &[T].
unsafe impl<T: Sync, H: Host> Sync for HSlice<T, H> {}

impl<T: FromZeros, H: Host> HSlice<T, H> {
    /// Allocates `len` zeroed elements; `ENOMEM` when the size overflows or the host is short.
    pub fn new_zeroed(host: &'static H, len: usize) -> KResult<Self> {
        const { assert!(align_of::<T>() <= 16) };
        let bytes = size_of::<T>().checked_mul(len).ok_or(ENOMEM)?.max(1);
        let p = host.heap_alloc(bytes).ok_or(ENOMEM)?;
        Ok(Self {
            ptr: p.cast(),
            len,
            host,
        })
    }
}

impl<T, H: Host> HSlice<T, H> {
    /// Allocates `len` elements initialized by `f(index)`.
    pub fn new_with(host: &'static H, len: usize, mut f: impl FnMut(usize) -> T) -> KResult<Self> {
        const { assert!(align_of::<T>() <= 16) };
        let bytes = size_of::<T>().checked_mul(len).ok_or(ENOMEM)?.max(1);
        let p = host.heap_alloc(bytes).ok_or(ENOMEM)?.cast::<T>();
        for i in 0..len {
            // SAFETY: i < len, inside the fresh allocation; each slot is written once.
            unsafe { p.as_ptr().add(i).write(f(i)) };
        }
        Ok(Self { ptr: p, len, host })
    }
}

impl<T, H: Host> Deref for HSlice<T, H> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: ptr points to len initialized (zeroed, valid) elements we own.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T, H: Host> DerefMut for HSlice<T, H> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in deref, with exclusive access.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T, H: Host> Drop for HSlice<T, H> {
    fn drop(&mut self) {
        // SAFETY: we own len elements; drop them, then free the block with the same size.
        unsafe {
            core::ptr::drop_in_place(core::ptr::slice_from_raw_parts_mut(
                self.ptr.as_ptr(),
                self.len,
            ));
            self.host
                .heap_free(self.ptr.cast(), (size_of::<T>() * self.len).max(1));
        }
    }
}

/// A page from the host page allocator, freed on drop (and, by the glue, unmapped from users).
pub struct HPage<H: Host> {
    page: Option<Page>,
    host: &'static H,
    _p: PhantomData<*mut u8>,
}

// SAFETY: the page is plain memory owned by this value.
unsafe impl<H: Host> Send for HPage<H> {}
// SAFETY: shared access only exposes addresses; writers synchronize through the owner's locks.
unsafe impl<H: Host> Sync for HPage<H> {}

impl<H: Host> HPage<H> {
    /// Allocates a zeroed page.
    pub fn new(host: &'static H) -> KResult<Self> {
        let page = host.page_alloc().ok_or(ENOMEM)?;
        Ok(Self {
            page: Some(page),
            host,
            _p: PhantomData,
        })
    }

    /// Kernel virtual address of the page.
    pub fn va(&self) -> *mut u8 {
        self.page
            .as_ref()
            .map_or(core::ptr::null_mut(), |p| p.va.as_ptr())
    }

    /// Host physical address of the page.
    pub fn pa(&self) -> u64 {
        self.page.as_ref().map_or(0, |p| p.pa)
    }
}

impl<H: Host> Drop for HPage<H> {
    fn drop(&mut self) {
        if let Some(p) = self.page.take() {
            // SAFETY: we own the page and nothing in the core refers to it any more.
            unsafe { self.host.page_free(p) };
        }
    }
}
