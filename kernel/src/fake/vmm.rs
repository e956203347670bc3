//! A tiny "VMM" for tests: drives the core through handles like a glue + QEMU would.

use std::ffi::c_void;

use kvm_abi::*;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes};

use super::host::FakeHost;
use crate::backend::{Backend, CpuidResult, Exit};
use crate::soft::{SoftBackend, Step};
use crate::system::System;

/// The system type under test.
pub type TSystem = System<FakeHost, SoftBackend<FakeHost>>;

/// A canned AMD EPYC-like host CPUID (with SVM, AVX, XSAVE x87/SSE/AVX/PKRU).
pub fn epyc_cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    let r = |eax, ebx, ecx, edx| CpuidResult { eax, ebx, ecx, edx };
    match (leaf, subleaf) {
        (0, _) => r(0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65),
        (1, _) => r(0x0083_0f10, 0x0004_0800, 0x7ed8_320b, 0x178b_fbff),
        (7, 0) => r(0, 0x219c_91a9, 0x0040_0004, 0),
        (0xd, 0) => r(0x207, 0x380, 0x988, 0),
        (0xd, 1) => r(0xf, 0x340, 0, 0),
        (0xd, 2) => r(0x100, 0x240, 0, 0),
        (0x8000_0000, _) => r(0x8000_0020, 0x6874_7541, 0x444d_4163, 0x6974_6e65),
        (0x8000_0001, _) => r(0x0083_0f10, 0x4000_0000, 0x75c2_37ff, 0x2fd3_fbff),
        (0x8000_0002..=0x8000_0004, _) => r(0x2044_4d41, 0x4349_5045, 0x2020_2020, 0x2020_2020),
        (0x8000_0008, _) => r(
            0x3030,
            0x0001_0000_u32.wrapping_mul(0) | 0x791e_f257,
            0x7003,
            0,
        ),
        _ => CpuidResult::default(),
    }
}

/// The test VMM: a fake host, a system, and helpers (over the soft backend unless a test
/// builds it with another one, see [`Vmm::with_backend`]).
pub struct Vmm<B: Backend = SoftBackend<FakeHost>> {
    /// The fake OS.
    pub host: &'static FakeHost,
    /// The core.
    pub sys: &'static System<FakeHost, B>,
    /// `/dev/kvm` handle.
    pub kvm: *mut c_void,
}

impl Default for Vmm {
    fn default() -> Self {
        Self::new()
    }
}

impl Vmm {
    /// A fresh host and core.
    pub fn new() -> Self {
        let host = FakeHost::leak();
        let sys: &'static TSystem = Box::leak(Box::new(System::new(
            host,
            SoftBackend::new(host, epyc_cpuid),
        )));
        Vmm {
            host,
            sys,
            kvm: sys.handle(),
        }
    }

    /// Appends scripted exits for vCPU `id`.
    pub fn script(&self, id: u32, steps: &[(Exit, u64)]) {
        let mut s = self.sys.backend.script.lock().unwrap();
        for &(exit, insn_len) in steps {
            s.push_back(Step {
                vcpu: id,
                exit,
                insn_len,
            });
        }
    }
}

impl<B: Backend> Vmm<B> {
    /// A core over `backend` on `host`.
    pub fn with_backend(host: &'static FakeHost, backend: B) -> Self {
        let sys: &'static System<FakeHost, B> = Box::leak(Box::new(System::new(host, backend)));
        Vmm {
            host,
            sys,
            kvm: sys.handle(),
        }
    }

    /// The handle behind a descriptor the core installed.
    pub fn h(&self, fd: i64) -> *mut c_void {
        let fds = self.host.fds.lock().unwrap();
        fds.get(&(fd as i32))
            .map(|(_, h)| *h as *mut c_void)
            .unwrap_or(std::ptr::null_mut())
    }

    /// `ioctl(fd, cmd, arg)` on a handle.
    pub fn ioctl(&self, h: *mut c_void, cmd: u32, arg: u64) -> i64 {
        // SAFETY: tests only pass handles that are live.
        unsafe { self.sys.ioctl(h, cmd, arg) }
    }

    /// `ioctl` on a descriptor number.
    pub fn ioctl_fd(&self, fd: i64, cmd: u32, arg: u64) -> i64 {
        self.ioctl(self.h(fd), cmd, arg)
    }

    /// Closes a descriptor (the glue calls `okvm_release`).
    pub fn close(&self, fd: i64) {
        let h = self
            .host
            .fds
            .lock()
            .unwrap()
            .remove(&(fd as i32))
            .expect("close of unknown fd")
            .1;
        // SAFETY: the handle was live and is not used again.
        unsafe { self.sys.release(h as *mut c_void) };
    }

    /// Copies `v` into fresh user memory; returns its address.
    pub fn put<T: IntoBytes + Immutable>(&self, v: &T) -> u64 {
        let a = self.host.user_alloc(std::mem::size_of_val(v), true);
        self.host.user_write(a, v.as_bytes());
        a
    }

    /// Reads a `T` from user memory.
    pub fn get<T: FromBytes>(&self, uaddr: u64) -> T {
        T::read_from_bytes(&self.host.user_read(uaddr, std::mem::size_of::<T>())).unwrap()
    }

    /// Fresh zeroed user memory of `len` bytes.
    pub fn buf(&self, len: usize) -> u64 {
        self.host.user_alloc(len, true)
    }

    /// `KVM_CREATE_VM` → fd.
    pub fn create_vm(&self) -> i64 {
        let fd = self.ioctl(self.kvm, KVM_CREATE_VM, 0);
        assert!(fd >= 0, "KVM_CREATE_VM: {fd}");
        fd
    }

    /// `KVM_CREATE_VCPU` → fd.
    pub fn create_vcpu(&self, vm: i64, id: u64) -> i64 {
        let fd = self.ioctl_fd(vm, KVM_CREATE_VCPU, id);
        assert!(fd >= 0, "KVM_CREATE_VCPU: {fd}");
        fd
    }

    /// The vCPU's `kvm_run` through the mmap lookup (page 0).
    pub fn run_page(&self, vcpu: i64) -> *mut kvm_run {
        self.mmap(vcpu, 0) as *mut kvm_run
    }

    /// Physical (= virtual in the fake) address of mmap page `pgoff`.
    pub fn mmap(&self, fd: i64, pgoff: u64) -> u64 {
        // SAFETY: live handle.
        unsafe { self.sys.mmap(self.h(fd), pgoff) }.expect("mmap")
    }

    /// Adds a memslot backed by fresh user memory; returns the user address.
    pub fn add_slot(&self, vm: i64, slot: u32, gpa: u64, size: u64, flags: u32) -> u64 {
        let ua = self.host.user_alloc(size as usize, true);
        let r = self.set_region(vm, slot, flags, gpa, size, ua);
        assert_eq!(r, 0, "SET_USER_MEMORY_REGION");
        ua
    }

    /// `KVM_SET_USER_MEMORY_REGION` with the given fields.
    pub fn set_region(&self, vm: i64, slot: u32, flags: u32, gpa: u64, size: u64, ua: u64) -> i64 {
        let r = kvm_userspace_memory_region {
            slot,
            flags,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: ua,
        };
        let a = self.put(&r);
        self.ioctl_fd(vm, KVM_SET_USER_MEMORY_REGION, a)
    }

    /// `KVM_GET_REGS`.
    pub fn regs(&self, vcpu: i64) -> kvm_regs {
        let a = self.buf(size_of::<kvm_regs>());
        assert_eq!(self.ioctl_fd(vcpu, KVM_GET_REGS, a), 0);
        self.get(a)
    }

    /// `KVM_SET_REGS`.
    pub fn set_regs(&self, vcpu: i64, r: &kvm_regs) {
        let a = self.put(r);
        assert_eq!(self.ioctl_fd(vcpu, KVM_SET_REGS, a), 0);
    }

    /// Asserts that every page, pin, lock, heap byte and address-space reference is released.
    pub fn assert_clean(&self) {
        let c = self.host.counts();
        assert_eq!(c, super::host::Counts::default(), "leak: {c:?}");
    }
}

/// A zeroed value (shorthand).
pub fn zeroed<T: FromZeros>() -> T {
    T::new_zeroed()
}
