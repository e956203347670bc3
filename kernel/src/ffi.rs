//! The entry points of okvm.h (`okvm_*`), exported unmangled from the kernel object.
//!
//! The kernel object instantiates the generic core with [`CHost`] and the backend CPUID selects
//! at attach ([`AnyBackend`]): SVM on AMD CPUs (guests need nested paging; without it VM
//! creation is refused), otherwise the soft backend (state ioctls work; `KVM_RUN` reports
//! `KVM_EXIT_FAIL_ENTRY`) until the VMX backend lands.
//! Signatures are checked against include/okvm.h by a test (`tests::header`).
//!
//! Contract with the glue (okvm.h): `okvm_attach` runs once before anything else and
//! `okvm_detach` after every descriptor is closed; no entry point runs concurrently with them.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::anyb::AnyBackend;
use crate::backend::CpuidResult;
use crate::errno::{EINVAL, ENODEV};
use crate::ffi_host::{CHost, OkvmHandle, CHOST};
use crate::host::{Host, LogLevel};
use crate::soft::SoftBackend;
use crate::svmb::SvmBackend;
use crate::system::System;
use svm::hw::RealSvm;

/// The system type of the kernel object.
pub type KSystem = System<CHost, AnyBackend<CHost, RealSvm>>;

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
    let backend = match svm.then(|| SvmBackend::new(&CHOST, RealSvm, hw_cpuid)) {
        Some(Ok(b)) => {
            let mut line = LineBuf::new();
            crate::svmb::describe(&b, &mut line);
            CHOST.log(LogLevel::Info, line.as_str());
            AnyBackend::Svm(b)
        }
        Some(Err(_)) | None => {
            CHOST.log(
                LogLevel::Info,
                "okvm: core attached, backend soft (no usable SVM; VMX backend not yet \
                 implemented): KVM_RUN reports KVM_EXIT_FAIL_ENTRY",
            );
            AnyBackend::Soft(SoftBackend::new(&CHOST, hw_cpuid))
        }
    };
    // SAFETY: not attached, and the glue runs nothing concurrently with attach.
    unsafe { System::init_in_place((*SYSTEM.0.get()).as_mut_ptr(), &CHOST, backend) };
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
    if let AnyBackend::Svm(b) = &sys.backend {
        // SAFETY: the callback only reads `arg` as the backend, which outlives the call.
        CHOST.run_on_all_cpus(
            svm_off,
            (b as *const SvmBackend<CHost, RealSvm>).cast_mut().cast(),
        );
    }
    ATTACHED.store(false, Ordering::Release);
    // SAFETY: no VM and (okvm.h contract) no descriptor is left and nothing runs concurrently
    // with detach; SYSTEM is not used again before okvm_attach initializes it anew. Dropping
    // it frees the backend's pages (SVM permission maps, per-CPU areas).
    unsafe { (*SYSTEM.0.get()).assume_init_drop() };
    0
}

/// `run_on_all_cpus` callback of detach: SVM off on this CPU.
unsafe extern "C" fn svm_off(arg: *mut core::ffi::c_void) -> i32 {
    // SAFETY: okvm_detach passes the live SVM backend.
    let b = unsafe { &*arg.cast::<SvmBackend<CHost, RealSvm>>() };
    b.disable_this_cpu();
    0
}

/// A fixed buffer for one formatted log line (no heap in the attach path).
pub struct LineBuf {
    buf: [u8; 192],
    len: usize,
}

impl LineBuf {
    /// An empty line.
    pub fn new() -> Self {
        Self {
            buf: [0; 192],
            len: 0,
        }
    }

    /// The text so far.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(self.buf.get(..self.len).unwrap_or(&[])).unwrap_or("okvm")
    }
}

impl Default for LineBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Write for LineBuf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &c in s.as_bytes() {
            if let Some(d) = self.buf.get_mut(self.len) {
                *d = c;
                self.len += 1;
            }
        }
        Ok(())
    }
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
