//! Malformed calls get Linux's errno, and a bounded fuzz run of arbitrary (command, bytes)
//! on every descriptor kind neither panics nor leaks a page, pin, lock or heap byte.

use std::ffi::c_void;

use kvm_abi::*;
use zerocopy::IntoBytes;

use crate::errno::*;
use crate::fake::vmm::{zeroed, Vmm};

fn e(x: Errno) -> i64 {
    -i64::from(x.0)
}

#[test]
fn bad_input_table() {
    let v = Vmm::new();
    let vm = v.create_vm();
    let cpu = v.create_vcpu(vm, 3);
    let (s, m, c) = (v.kvm, v.h(vm), v.h(cpu));
    let bad = 0x10u64; // unmapped user address
    let ro = v.host.user_alloc(4096, false); // read-only user page
    let nent = |n: u32| v.put(&[n, 0]);
    let msrs = |n: u32| v.put(&[n, 0]);
    let mut xcrs: kvm_xcrs = zeroed();
    xcrs.nr_xcrs = 17;
    let xcrs_many = v.put(&xcrs);
    xcrs.nr_xcrs = 1;
    xcrs.flags = 1;
    let xcrs_flags = v.put(&xcrs);
    let mut dr: kvm_debugregs = zeroed();
    dr.flags = 1;
    let dr_flags = v.put(&dr);
    dr.flags = 0;
    dr.dr7 = 1 << 32;
    let dr7_high = v.put(&dr);
    let mut ev: kvm_vcpu_events = zeroed();
    ev.flags = 0x40;
    let ev_flag = v.put(&ev);
    ev.flags = 0;
    ev.exception.injected = 1;
    ev.exception.nr = 2;
    let ev_nmi_vec = v.put(&ev);
    let mp_halted = v.put(&kvm_mp_state {
        mp_state: KVM_MP_STATE_HALTED,
    });
    let zone_pio2 = v.put(&kvm_coalesced_mmio_zone {
        addr: 0,
        size: 8,
        pad: 2,
    });
    let small_cpuid = nent(1);
    // A header at the very end of a mapped page: the entries after it are unmapped.
    let tail = v.buf(4096) + 4088;
    v.host.user_write(tail, [1u32 << 31, 0].as_bytes());
    let tail2 = v.buf(4096) + 4088;
    v.host.user_write(tail2, [2u32, 0].as_bytes());
    let tail_msrs = v.buf(4096) + 4088;
    v.host.user_write(tail_msrs, [255u32, 0].as_bytes());
    let cases: Vec<(&str, *mut c_void, u32, u64, i64)> = vec![
        ("api version arg", s, KVM_GET_API_VERSION, 1, e(EINVAL)),
        ("mmap size arg", s, KVM_GET_VCPU_MMAP_SIZE, 1, e(EINVAL)),
        ("vm type", s, KVM_CREATE_VM, 1, e(EINVAL)),
        ("system unknown", s, 0xae_ff, 0, e(EINVAL)),
        ("msr list fault", s, KVM_GET_MSR_INDEX_LIST, bad, e(EFAULT)),
        (
            "msr list read-only",
            s,
            KVM_GET_MSR_INDEX_LIST,
            ro,
            e(EFAULT),
        ),
        ("cpuid fault", s, KVM_GET_SUPPORTED_CPUID, bad, e(EFAULT)),
        (
            "cpuid nent 0",
            s,
            KVM_GET_SUPPORTED_CPUID,
            nent(0),
            e(E2BIG),
        ),
        (
            "cpuid nent small",
            s,
            KVM_GET_SUPPORTED_CPUID,
            small_cpuid,
            e(E2BIG),
        ),
        (
            "cpuid entries unmapped",
            s,
            KVM_GET_SUPPORTED_CPUID,
            tail,
            e(EFAULT),
        ),
        (
            "feature msrs too many",
            s,
            KVM_GET_MSRS,
            msrs(256),
            e(E2BIG),
        ),
        (
            "feature msrs huge",
            s,
            KVM_GET_MSRS,
            msrs(u32::MAX),
            e(E2BIG),
        ),
        ("create vcpu on system", s, KVM_CREATE_VCPU, 0, e(EINVAL)),
        ("vm unknown", m, 0xae_ff, 0, e(ENOTTY)),
        ("vm: run", m, KVM_RUN, 0, e(ENOTTY)),
        ("vm: mmap size", m, KVM_GET_VCPU_MMAP_SIZE, 0, e(ENOTTY)),
        ("vcpu id too large", m, KVM_CREATE_VCPU, 256, e(EINVAL)),
        ("vcpu id duplicate", m, KVM_CREATE_VCPU, 3, e(EEXIST)),
        (
            "memory region fault",
            m,
            KVM_SET_USER_MEMORY_REGION,
            bad,
            e(EFAULT),
        ),
        (
            "region2 not offered",
            m,
            KVM_SET_USER_MEMORY_REGION2,
            bad,
            e(ENOTTY),
        ),
        ("tss addr", m, KVM_SET_TSS_ADDR, 0xffff_f000, e(EINVAL)),
        (
            "identity map after vcpu",
            m,
            KVM_SET_IDENTITY_MAP_ADDR,
            v.put(&0u64),
            e(EINVAL),
        ),
        (
            "zone pio=2",
            m,
            KVM_REGISTER_COALESCED_MMIO,
            zone_pio2,
            e(EINVAL),
        ),
        ("zone fault", m, KVM_REGISTER_COALESCED_MMIO, bad, e(EFAULT)),
        (
            "enable cap",
            m,
            KVM_ENABLE_CAP,
            v.put(&[0u8; 104]),
            e(EINVAL),
        ),
        ("dirty log fault", m, KVM_GET_DIRTY_LOG, bad, e(EFAULT)),
        ("irqchip after vCPUs", m, KVM_CREATE_IRQCHIP, 0, e(EINVAL)),
        ("vcpu unknown", c, 0xae_ff, 0, e(EINVAL)),
        ("vcpu foreign type", c, 0x5401, 0, e(EINVAL)),
        ("vcpu: create vm", c, KVM_CREATE_VM, 0, e(EINVAL)),
        ("run arg", c, KVM_RUN, 1, e(EINVAL)),
        ("regs fault", c, KVM_GET_REGS, bad, e(EFAULT)),
        ("regs read-only", c, KVM_GET_REGS, ro, e(EFAULT)),
        ("set regs fault", c, KVM_SET_REGS, bad, e(EFAULT)),
        ("sregs fault", c, KVM_SET_SREGS, bad, e(EFAULT)),
        ("xsave fault", c, KVM_GET_XSAVE, bad, e(EFAULT)),
        ("set xsave fault", c, KVM_SET_XSAVE, bad, e(EFAULT)),
        ("msrs too many", c, KVM_SET_MSRS, msrs(256), e(E2BIG)),
        (
            "msrs entries unmapped",
            c,
            KVM_GET_MSRS,
            tail_msrs,
            e(EFAULT),
        ),
        ("cpuid2 too many", c, KVM_SET_CPUID2, nent(257), e(E2BIG)),
        (
            "cpuid2 entries unmapped",
            c,
            KVM_SET_CPUID2,
            tail2,
            e(EFAULT),
        ),
        ("xcrs too many", c, KVM_SET_XCRS, xcrs_many, e(EINVAL)),
        ("xcrs flags", c, KVM_SET_XCRS, xcrs_flags, e(EINVAL)),
        ("debugregs flags", c, KVM_SET_DEBUGREGS, dr_flags, e(EINVAL)),
        ("dr7 high bits", c, KVM_SET_DEBUGREGS, dr7_high, e(EINVAL)),
        ("events flag", c, KVM_SET_VCPU_EVENTS, ev_flag, e(EINVAL)),
        (
            "events nmi vector",
            c,
            KVM_SET_VCPU_EVENTS,
            ev_nmi_vec,
            e(EINVAL),
        ),
        ("mp state halted", c, KVM_SET_MP_STATE, mp_halted, e(EINVAL)),
        ("interrupt fault", c, KVM_INTERRUPT, bad, e(EFAULT)),
        ("signal mask", c, KVM_SET_SIGNAL_MASK, 0, e(EINVAL)),
    ];
    for (name, h, cmd, arg, want) in cases {
        assert_eq!(v.ioctl(h, cmd, arg), want, "{name}");
    }
    // GET_CPUID2 with a too-small nent after SET_CPUID2 of two entries.
    let two = v.buf(8 + 80);
    v.host.user_write(two, &2u32.to_le_bytes());
    assert_eq!(v.ioctl(c, KVM_SET_CPUID2, two), 0);
    assert_eq!(v.ioctl(c, KVM_GET_CPUID2, nent(1)), e(E2BIG));
    // kvm_run: sync-regs classes and a bad cr8.
    let run = v.run_page(cpu);
    // SAFETY: live run page.
    unsafe { (*run).kvm_valid_regs = 1 };
    assert_eq!(v.ioctl(c, KVM_RUN, 0), e(EINVAL));
    // SAFETY: as above.
    unsafe {
        (*run).kvm_valid_regs = 0;
        (*run).cr8 = 16;
    }
    assert_eq!(v.ioctl(c, KVM_RUN, 0), e(EINVAL));
    // mmap: only pages 0..3 of a vCPU.
    // SAFETY: live handles.
    unsafe {
        assert_eq!(v.sys.mmap(c, 3), Err(EINVAL));
        assert_eq!(v.sys.mmap(m, 0), Err(EINVAL));
        assert_eq!(v.sys.mmap(s, 0), Err(EINVAL));
    }
    // Another process using the descriptors: -EIO (Linux: kvm->mm != current->mm).
    v.host
        .same_mm
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(v.ioctl(m, KVM_CHECK_EXTENSION, 0), e(EIO));
    assert_eq!(v.ioctl(c, KVM_GET_REGS, v.buf(144)), e(EIO));
    v.host
        .same_mm
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // A handle that is not an object: EBADF, never a crash.
    let junk = Box::into_raw(Box::new(0u64)).cast::<c_void>();
    assert_eq!(v.ioctl(junk, KVM_GET_API_VERSION, 0), e(EBADF));
    // SAFETY: from Box::into_raw above.
    drop(unsafe { Box::from_raw(junk.cast::<u64>()) });
    v.close(cpu);
    v.close(vm);
    v.assert_clean();
}

#[test]
fn out_of_memory_is_enomem_and_leaks_nothing() {
    for budget in 0..40 {
        let v = Vmm::new();
        v.host
            .fail_heap_after
            .store(budget, std::sync::atomic::Ordering::SeqCst);
        let vm = v.ioctl(v.kvm, KVM_CREATE_VM, 0);
        if vm >= 0 {
            let r = v.ioctl_fd(vm, KVM_CREATE_VCPU, 0);
            assert!(r >= 0 || r == e(ENOMEM), "budget {budget}: {r}");
            if r >= 0 {
                v.close(r);
            }
            v.close(vm);
        } else {
            assert_eq!(vm, e(ENOMEM), "budget {budget}");
        }
        v.host
            .fail_heap_after
            .store(-1, std::sync::atomic::Ordering::SeqCst);
        v.assert_clean();
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn fuzz_dispatcher_bounded() {
    let v = Vmm::new();
    let vm = v.create_vm();
    let cpu = v.create_vcpu(vm, 0);
    let cmds: Vec<u32> = SYSTEM_IOCTLS
        .iter()
        .chain(VM_IOCTLS)
        .chain(VCPU_IOCTLS)
        .chain(DEVICE_IOCTLS)
        .map(|i| i.value)
        .collect();
    let buf = v.buf(3 * 4096);
    // Notifiers for KVM_IOEVENTFD / KVM_IRQFD (their descriptor fields are often set to one).
    let efds = [v.host.eventfd_create(), v.host.eventfd_create()];
    // A second VM with the split irqchip, so KVM_IRQFD can succeed.
    let vm2 = v.create_vm();
    let mut ec: kvm_enable_cap = zeroed();
    ec.cap = KVM_CAP_SPLIT_IRQCHIP;
    ec.args[0] = 24;
    let a = v.put(&ec);
    assert_eq!(v.ioctl_fd(vm2, KVM_ENABLE_CAP, a), 0);
    // A third VM with the full in-kernel irqchip, a PIT and a vCPU, so KVM_SET_IRQCHIP,
    // KVM_SET_PIT2, KVM_IRQ_LINE_STATUS, IRQCHIP routes and KVM_RUN with guest-visible PIC,
    // IOAPIC and PIT state all see hostile input.
    let vm3 = v.create_vm();
    assert_eq!(v.ioctl_fd(vm3, KVM_CREATE_IRQCHIP, 0), 0);
    let pc = v.put(&kvm_pit_config {
        flags: 0,
        ..zeroed()
    });
    assert_eq!(v.ioctl_fd(vm3, KVM_CREATE_PIT2, pc), 0);
    let cpu3 = v.create_vcpu(vm3, 0);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let start = std::time::Instant::now();
    let mut calls = 0u64;
    while calls < 200_000 && start.elapsed() < std::time::Duration::from_secs(3) {
        calls += 1;
        let cmd = if rng.next().is_multiple_of(8) {
            rng.next() as u32
        } else {
            cmds[(rng.next() % cmds.len() as u64) as usize]
        };
        // Random bytes in the argument buffer, but keep `nent`/`nmsrs`-like headers plausible
        // sometimes so that deep paths run.
        let mut bytes = [0u8; 64];
        for b in bytes.chunks_mut(8) {
            b.copy_from_slice(&rng.next().to_le_bytes());
        }
        if rng.next().is_multiple_of(2) {
            bytes[0..4].copy_from_slice(&((rng.next() % 40) as u32).to_le_bytes());
        }
        if !rng.next().is_multiple_of(3) {
            let efd = efds[(rng.next() % 2) as usize].to_le_bytes();
            match cmd {
                KVM_IOEVENTFD => {
                    bytes[20..24].copy_from_slice(&efd);
                    bytes[16..20].copy_from_slice(
                        &[0u32, 1, 2, 4, 8][(rng.next() % 5) as usize].to_le_bytes(),
                    );
                    bytes[24..28].copy_from_slice(&((rng.next() % 16) as u32).to_le_bytes());
                }
                KVM_IRQFD => {
                    bytes[0..4].copy_from_slice(&efd);
                    bytes[4..8].copy_from_slice(&((rng.next() % 32) as u32).to_le_bytes());
                    bytes[8..12].copy_from_slice(&((rng.next() % 4) as u32).to_le_bytes());
                }
                _ => {}
            }
        }
        if rng.next().is_multiple_of(64) {
            v.host.eventfd_write(efds[(rng.next() % 2) as usize]);
            v.host.eventfd_pump();
        }
        v.host.user_write(buf, &bytes);
        let arg = match rng.next() % 4 {
            0 => 0,
            1 => rng.next(),
            2 => rng.next() % 512,
            _ => buf,
        };
        // Keep the kvm_run page mostly sane so KVM_RUN goes past its checks.
        let run = v.run_page(cpu);
        // SAFETY: live run page.
        unsafe {
            if !rng.next().is_multiple_of(4) {
                (*run).kvm_valid_regs = 0;
                (*run).kvm_dirty_regs = 0;
                (*run).cr8 = 0;
            }
        }
        let h = match rng.next() % 6 {
            0 => v.kvm,
            1 => v.h(vm),
            2 if cmd == KVM_IOEVENTFD || cmd == KVM_IRQFD => v.h(vm2),
            3 => v.h(vm3),
            4 => v.h(cpu3),
            _ => v.h(cpu),
        };
        // A vCPU of the full-irqchip VM halts in the kernel until an interrupt or a signal
        // (as on Linux): a pending signal ends each of its KVM_RUNs.
        let halts_in_kernel = h == v.h(cpu3) && cmd == KVM_RUN;
        if halts_in_kernel {
            v.host.signal.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let r = v.ioctl(h, cmd, arg);
        if halts_in_kernel {
            v.host.signal.store(false, std::sync::atomic::Ordering::SeqCst);
        }
        assert!(r >= -4095, "bogus return {r}");
    }
    // The new ioctls reached their success paths, and what they hold goes at teardown.
    let c = v.host.counts();
    assert!(c.eventfd_refs > 0 && c.eventfd_watches > 0, "{c:?}");
    // Close every descriptor the fuzz created (VMs and vCPUs), then ours.
    let fds: Vec<i32> = v.host.fds.lock().unwrap().keys().copied().collect();
    for fd in fds {
        v.close(i64::from(fd));
    }
    assert_eq!(v.sys.nr_vms.load(std::sync::atomic::Ordering::SeqCst), 0);
    v.assert_clean();
    for fd in efds {
        v.host.eventfd_close(fd);
    }
    eprintln!("fuzz: {calls} calls in {:?}", start.elapsed());
    let _ = zeroed::<kvm_regs>().as_bytes().len();
}
