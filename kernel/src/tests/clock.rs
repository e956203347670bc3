//! `KVM_CAP_ADJUST_CLOCK`: the VM clock starts at 0, `KVM_SET_CLOCK` moves it, it then counts
//! host monotonic time; flags and pointers are checked.

use std::sync::atomic::Ordering::SeqCst;

use kvm_abi::*;

use crate::errno::*;
use crate::fake::vmm::{zeroed, Vmm};

fn e(x: Errno) -> i64 {
    -i64::from(x.0)
}

fn get(v: &Vmm, vm: i64) -> kvm_clock_data {
    let a = v.buf(size_of::<kvm_clock_data>());
    assert_eq!(v.ioctl_fd(vm, KVM_GET_CLOCK, a), 0);
    v.get(a)
}

fn set(v: &Vmm, vm: i64, clock: u64, flags: u32) -> i64 {
    let mut d: kvm_clock_data = zeroed();
    d.clock = clock;
    d.flags = flags;
    let a = v.put(&d);
    v.ioctl_fd(vm, KVM_SET_CLOCK, a)
}

#[test]
fn clock_counts_from_creation_and_from_set() {
    let v = Vmm::new();
    v.host.clock.store(5_000_000_000, SeqCst);
    let vm = v.create_vm();
    for h in [v.kvm, v.h(vm)] {
        assert_eq!(
            v.ioctl(h, KVM_CHECK_EXTENSION, u64::from(KVM_CAP_ADJUST_CLOCK)),
            i64::from(KVM_CLOCK_TSC_STABLE),
            "the flags supported"
        );
    }
    let d = get(&v, vm);
    assert_eq!(
        (d.clock, d.flags),
        (0, KVM_CLOCK_TSC_STABLE),
        "0 at creation"
    );
    assert_eq!((d.realtime, d.host_tsc, d.pad0, d.pad), (0, 0, 0, [0; 4]));
    v.host.clock.store(5_000_000_700, SeqCst);
    assert_eq!(get(&v, vm).clock, 700);
    // SET: the value now, then counting on; GET's result may be passed back.
    assert_eq!(set(&v, vm, 1_000_000_000_000, KVM_CLOCK_TSC_STABLE), 0);
    assert_eq!(get(&v, vm).clock, 1_000_000_000_000);
    v.host.clock.store(5_000_001_700, SeqCst);
    assert_eq!(get(&v, vm).clock, 1_000_000_001_000);
    // Backwards is allowed (Linux sets whatever userspace says), and a second VM has its own.
    let vm2 = v.create_vm();
    assert_eq!(set(&v, vm, 10, 0), 0);
    v.host.clock.store(5_000_002_000, SeqCst);
    assert_eq!(get(&v, vm).clock, 310);
    assert_eq!(get(&v, vm2).clock, 300, "created at 5_000_001_700");
    // Near the top of the range the offset wraps, as Linux's u64 arithmetic does.
    assert_eq!(set(&v, vm, u64::MAX, 0), 0);
    v.host.clock.store(5_000_002_001, SeqCst);
    assert_eq!(get(&v, vm).clock, 0);
    v.close(vm2);
    v.close(vm);
    v.assert_clean();
}

#[test]
fn clock_real_time_is_monotonic() {
    let v = Vmm::new();
    let vm = v.create_vm();
    assert_eq!(set(&v, vm, 1 << 40, 0), 0);
    let mut last = get(&v, vm).clock;
    assert!(last >= 1 << 40);
    for _ in 0..100 {
        let now = get(&v, vm).clock;
        assert!(now >= last);
        last = now;
    }
    v.close(vm);
    v.assert_clean();
}

#[test]
fn clock_errno_table() {
    let v = Vmm::new();
    let vm = v.create_vm();
    let cpu = v.create_vcpu(vm, 0);
    let ro = v.host.user_alloc(4096, false);
    for (what, flags, want) in [
        ("REALTIME not offered", KVM_CLOCK_REALTIME, e(EINVAL)),
        ("HOST_TSC not offered", KVM_CLOCK_HOST_TSC, e(EINVAL)),
        ("unknown flag", 1, e(EINVAL)),
        ("unknown high flag", 1 << 31, e(EINVAL)),
        ("no flags", 0, 0),
        ("TSC_STABLE (GET's own)", KVM_CLOCK_TSC_STABLE, 0),
    ] {
        assert_eq!(set(&v, vm, 42, flags), want, "{what}");
    }
    assert_eq!(v.ioctl_fd(vm, KVM_SET_CLOCK, 0x10), e(EFAULT));
    assert_eq!(v.ioctl_fd(vm, KVM_GET_CLOCK, 0x10), e(EFAULT));
    assert_eq!(v.ioctl_fd(vm, KVM_GET_CLOCK, ro), e(EFAULT));
    // Wrong size in the command word: an unknown VM ioctl (Linux: ENOTTY).
    let wrong = (KVM_GET_CLOCK & !(0x3fff << 16)) | (32 << 16);
    assert_eq!(v.ioctl_fd(vm, wrong, v.buf(48)), e(ENOTTY));
    // Only the VM descriptor answers.
    assert_eq!(v.ioctl_fd(cpu, KVM_GET_CLOCK, v.buf(48)), e(EINVAL));
    assert!(v.ioctl(v.kvm, KVM_GET_CLOCK, v.buf(48)) < 0);
    v.close(cpu);
    v.close(vm);
    v.assert_clean();
}
