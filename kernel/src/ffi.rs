//! The entry points of okvm.h (`okvm_*`), exported unmangled from the kernel object.
//!
//! The kernel object instantiates the generic core with [`CHost`] and, until the VMX/SVM
//! backends land, the soft backend (state ioctls work; `KVM_RUN` reports `KVM_EXIT_FAIL_ENTRY`).
//! Signatures are checked against include/okvm.h by a test (`tests::header`).
//!
//! Contract with the glue (okvm.h): `okvm_attach` runs once before anything else and
//! `okvm_detach` after every descriptor is closed; no entry point runs concurrently with them.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::backend::CpuidResult;
use crate::errno::{EINVAL, ENODEV};
use crate::ffi_host::{CHost, OkvmHandle, CHOST};
use crate::host::{Host, LogLevel};
use crate::soft::SoftBackend;
use crate::system::System;

/// The system type of the kernel object.
pub type KSystem = System<CHost, SoftBackend<CHost>>;

struct SystemCell(UnsafeCell<MaybeUninit<KSystem>>);

// SAFETY: written only by okvm_attach, which the glue never runs concurrently with anything
// else; afterwards only shared references are handed out.
unsafe impl Sync for SystemCell {}

static SYSTEM: SystemCell = SystemCell(UnsafeCell::new(MaybeUninit::uninit()));
static ATTACHED: AtomicBool = AtomicBool::new(false);

fn system() -> Option<&'static KSystem> {
    if !ATTACHED.load(Ordering::Acquire) {
        return None;
    }
    // SAFETY: ATTACHED is set only after SYSTEM was initialized by okvm_attach.
    Some(unsafe { (*SYSTEM.0.get()).assume_init_ref() })
}

/// The host CPU's CPUID.
pub fn hw_cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    CpuidResult {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

/// okvm.h `okvm_attach`.
#[cfg_attr(target_os = "none", no_mangle)]
pub extern "C" fn okvm_attach() -> i32 {
    if ATTACHED.load(Ordering::Acquire) {
        return -EINVAL.0;
    }
    let l1 = hw_cpuid(1, 0);
    let e1 = hw_cpuid(0x8000_0001, 0);
    let vmx = l1.ecx & (1 << 5) != 0;
    let svm = e1.ecx & (1 << 2) != 0;
    if !vmx && !svm {
        CHOST.log(LogLevel::Error, "okvm: no VMX or SVM on this CPU");
        return -ENODEV.0;
    }
    CHOST.log(
        LogLevel::Info,
        "okvm: core attached (soft backend: KVM_RUN reports KVM_EXIT_FAIL_ENTRY)",
    );
    // SAFETY: not attached, and the glue runs nothing concurrently with attach.
    unsafe {
        System::init_in_place(
            (*SYSTEM.0.get()).as_mut_ptr(),
            &CHOST,
            SoftBackend::new(&CHOST, hw_cpuid),
        )
    };
    ATTACHED.store(true, Ordering::Release);
    0
}

/// okvm.h `okvm_detach`.
#[cfg_attr(target_os = "none", no_mangle)]
pub extern "C" fn okvm_detach() -> i32 {
    let Some(sys) = system() else { return 0 };
    if let Err(e) = sys.can_detach() {
        return -e.0;
    }
    ATTACHED.store(false, Ordering::Release);
    0
}

/// okvm.h `okvm_open`.
///
/// # Safety
/// `out` is a valid pointer to a handle.
#[cfg_attr(target_os = "none", no_mangle)]
pub unsafe extern "C" fn okvm_open(out: *mut OkvmHandle) -> i32 {
    let Some(sys) = system() else {
        return -ENODEV.0;
    };
    if out.is_null() {
        return -EINVAL.0;
    }
    // SAFETY: the caller passes a valid out-pointer.
    unsafe { out.write(sys.handle()) };
    0
}

/// okvm.h `okvm_ioctl`.
///
/// # Safety
/// `h` is a live handle (okvm.h contract).
#[cfg_attr(target_os = "none", no_mangle)]
pub unsafe extern "C" fn okvm_ioctl(h: OkvmHandle, cmd: u32, arg: u64) -> i64 {
    let Some(sys) = system() else {
        return -i64::from(ENODEV.0);
    };
    // SAFETY: forwarded contract.
    unsafe { sys.ioctl(h, cmd, arg) }
}

/// okvm.h `okvm_mmap`.
///
/// # Safety
/// `h` is a live handle and `pa` a valid out-pointer.
#[cfg_attr(target_os = "none", no_mangle)]
pub unsafe extern "C" fn okvm_mmap(h: OkvmHandle, pgoff: u64, pa: *mut u64) -> i32 {
    let Some(sys) = system() else {
        return -ENODEV.0;
    };
    if pa.is_null() {
        return -EINVAL.0;
    }
    // SAFETY: forwarded contract.
    match unsafe { sys.mmap(h, pgoff) } {
        Ok(p) => {
            // SAFETY: valid out-pointer.
            unsafe { pa.write(p) };
            0
        }
        Err(e) => -e.0,
    }
}

/// okvm.h `okvm_release`.
///
/// # Safety
/// `h` is a live handle, not used again.
#[cfg_attr(target_os = "none", no_mangle)]
pub unsafe extern "C" fn okvm_release(h: OkvmHandle) {
    if let Some(sys) = system() {
        // SAFETY: forwarded contract.
        unsafe { sys.release(h) }
    }
}
