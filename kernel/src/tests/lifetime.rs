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
    v.script(0, &[(Exit::PageFault { gpa: 0x1000, write: true, fetch: false }, 0), (Exit::Hlt, 1)]);
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
