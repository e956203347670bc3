//! Object lifetimes: a VM lives while any descriptor (VM or vCPU) references it; teardown
//! returns every page, pin, lock, heap byte and address-space reference.

use kvm_abi::*;

use crate::backend::Exit;
use crate::errno::EBUSY;
use crate::fake::vmm::Vmm;

#[test]
fn vm_outlives_its_fd_while_a_vcpu_fd_is_open() {
    let v = Vmm::new();
    let vm = v.create_vm();
    let cpu = v.create_vcpu(vm, 0);
    v.add_slot(vm, 0, 0, 1 << 20, 0);
    v.script(
        0,
        &[
            (
                Exit::PageFault {
                    gpa: 0x1000,
                    write: true,
                    fetch: false,
                },
                0,
            ),
            (Exit::Hlt, 1),
        ],
    );
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    let run_pa = v.mmap(cpu, 0);
    v.close(vm);
    assert_eq!(v.sys.can_detach(), Err(EBUSY));
    // The vCPU still works and its pages are still the same.
    assert_eq!(v.regs(cpu).rip, 0xfff0 + 1);
    assert_eq!(v.mmap(cpu, 0), run_pa);
    let c = v.host.counts();
    assert!(c.pages >= 3 && c.pins == 1 && c.mm_refs == 1, "{c:?}");
    v.close(cpu);
    assert_eq!(v.sys.can_detach(), Ok(()));
    v.assert_clean();
}

#[test]
fn many_vms_and_vcpus_tear_down_cleanly() {
    let v = Vmm::new();
    let mut fds = Vec::new();
    for _ in 0..8 {
        let vm = v.create_vm();
        for id in 0..4 {
            fds.push(v.create_vcpu(vm, id * 3));
        }
        v.add_slot(vm, 1, 0x10_0000, 1 << 20, KVM_MEM_LOG_DIRTY_PAGES);
        fds.push(vm);
    }
    // Close in an interleaved order.
    fds.sort_by_key(|fd| fd % 5);
    for fd in fds {
        v.close(fd);
    }
    v.assert_clean();
}

#[test]
fn concurrent_runs_and_memslot_churn() {
    use crate::fake::vmm::TSystem;
    let v = Vmm::new();
    let vm = v.create_vm();
    let cpus: Vec<i64> = (0..4).map(|id| v.create_vcpu(vm, id)).collect();
    let z = v.put(&kvm_coalesced_mmio_zone {
        addr: 0x1000_0000,
        size: 0x1000,
        pad: 0,
    });
    assert_eq!(v.ioctl_fd(vm, KVM_REGISTER_COALESCED_MMIO, z), 0);
    for id in 0..4u32 {
        let steps: Vec<(Exit, u64)> = (0..200)
            .map(|i| match i % 3 {
                0 => (
                    Exit::Io {
                        port: 0x80,
                        size: 1,
                        out: true,
                        data: i,
                    },
                    2,
                ),
                1 => (
                    Exit::PageFault {
                        gpa: u64::from(i % 16) << 12,
                        write: true,
                        fetch: false,
                    },
                    0,
                ),
                _ => (
                    Exit::Mmio {
                        gpa: 0x1000_0000 + u64::from(i),
                        len: 1,
                        write: true,
                        data: [1; 8],
                    },
                    3,
                ),
            })
            .collect();
        v.script(id, &steps);
    }
    let sys = v.sys as *const TSystem as usize;
    let handles: Vec<usize> = cpus.iter().map(|&c| v.h(c) as usize).collect();
    let threads: Vec<_> = handles
        .into_iter()
        .map(|h| {
            std::thread::spawn(move || {
                // SAFETY: leaked system; the vCPU handles stay live until the threads are joined.
                let sys = unsafe { &*(sys as *const TSystem) };
                let mut exits = 0;
                loop {
                    let r = unsafe { sys.ioctl(h as *mut std::ffi::c_void, KVM_RUN, 0) };
                    assert_eq!(r, 0);
                    exits += 1;
                    // The scripted exits are done when the soft backend fails entry.
                    let run = unsafe { sys.mmap(h as *mut std::ffi::c_void, 0) }.unwrap()
                        as *const kvm_run;
                    if unsafe { (*run).exit_reason } == KVM_EXIT_FAIL_ENTRY {
                        return exits;
                    }
                }
            })
        })
        .collect();
    let ua = v.host.user_alloc(1 << 16, true);
    for i in 0..200u64 {
        // Create, move and delete a slot while the vCPUs fault pages in.
        assert_eq!(v.set_region(vm, 0, 0, 0, 1 << 16, ua), 0);
        assert_eq!(v.set_region(vm, 0, 0, (i % 4 + 1) << 20, 1 << 16, ua), 0);
        assert_eq!(v.set_region(vm, 0, 0, 0, 0, 0), 0);
    }
    for t in threads {
        assert!(t.join().unwrap() >= 1);
    }
    for c in cpus {
        v.close(c);
    }
    v.close(vm);
    v.assert_clean();
}

/// Whether the vCPU being installed was already reachable through `Vm::vcpu` (by timer,
/// irqfd or other vCPU threads) while its descriptor could still fail.
static SEEN_EARLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn probe_vcpu_visible(kind: crate::host::FdKind, handle: usize) {
    if kind != crate::host::FdKind::Vcpu {
        return;
    }
    // SAFETY: the handle is the vCPU being created; the creating thread keeps it alive.
    let v = unsafe {
        &*(handle as *const crate::vcpu::Vcpu<crate::fake::host::FakeHost, crate::soft::SoftBackend<crate::fake::host::FakeHost>>)
    };
    if v.vm().vcpu(0).is_some() {
        SEEN_EARLY.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_vcpu_is_not_published_before_its_descriptor_cannot_fail() {
    // Linux increments online_vcpus only after create_vcpu_fd succeeded: a vCPU that
    // kvm_get_vcpu can return is never freed by a failing KVM_CREATE_VCPU (use-after-free from
    // the PIT timer callback, an irqfd or another vCPU's IPI otherwise).
    let v = Vmm::new();
    let vm = v.create_vm();
    *v.host.install_fd_probe.lock().unwrap() = Some(probe_vcpu_visible);
    let cpu = v.create_vcpu(vm, 0);
    *v.host.install_fd_probe.lock().unwrap() = None;
    assert!(!SEEN_EARLY.load(std::sync::atomic::Ordering::SeqCst));
    v.close(cpu);
    v.close(vm);
    v.assert_clean();
}
