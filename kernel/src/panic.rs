//! The kernel object's panic handler: hands the location to the host and never returns.
//!
//! okvm is written so that no input from userspace or a guest reaches a panic; this exists
//! because `core` requires it, and it stops the machine the way the host OS stops itself.

use core::panic::PanicInfo;

extern "C" {
    /// Host service (okvm.h): report a fatal internal error and halt; never returns.
    fn okvm_host_panic(file: *const core::ffi::c_char, file_len: usize, line: u32) -> !;
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    let (file, line) = match info.location() {
        Some(loc) => (loc.file(), loc.line()),
        None => ("?", 0),
    };
    // SAFETY: the pointer and length describe a live &str; the host only reads them.
    unsafe { okvm_host_panic(file.as_ptr().cast(), file.len(), line) }
}
