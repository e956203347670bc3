//! `KVM_CAP_X86_ROBUST_SINGLESTEP`: with RFLAGS.TF, every instruction the core or a backend
//! retires instead of the CPU (PIO, MMIO, CPUID, RDMSR/WRMSR, HLT) leaves a single-step #DB
//! (DR6.BS) for the next entry; a faulting one leaves its fault instead. (The SVM and VMX
//! backends' own skips are tested in `svm.rs` / `vmx.rs`.)

use kvm_abi::*;

use crate::backend::Exit;
use crate::errno::*;
use crate::fake::host::FakeHost;
use crate::fake::vmm::{zeroed, Vmm};
use crate::singlestep::{DR6_BS, RFLAGS_TF};
use crate::soft::SoftBackend;
use crate::vcpu::Vcpu;

struct Fix {
    v: Vmm,
    vm: i64,
    cpu: i64,
}

impl Fix {
    fn new(tf: bool) -> Self {
        let v = Vmm::new();
        let vm = v.create_vm();
        let cpu = v.create_vcpu(vm, 0);
        let mut r = v.regs(cpu);
        r.rip = 0x1000;
        if tf {
            r.rflags |= RFLAGS_TF;
        }
        v.set_regs(cpu, &r);
        Fix { v, vm, cpu }
    }
    fn run(&self) -> (i64, u32) {
        let r = self.v.ioctl_fd(self.cpu, KVM_RUN, 0);
        // SAFETY: the run page lives as long as the vCPU; no concurrent run.
        (r, unsafe { (*self.v.run_page(self.cpu)).exit_reason })
    }
    /// Completes the pending exit without entering the guest again.
    fn complete(&self) {
        // SAFETY: as in run.
        unsafe { (*self.v.run_page(self.cpu)).immediate_exit = 1 };
        assert_eq!(self.run().0, -i64::from(EINTR.0));
        // SAFETY: as in run.
        unsafe { (*self.v.run_page(self.cpu)).immediate_exit = 0 };
    }
    fn events(&self) -> kvm_vcpu_events {
        let a = self.v.buf(size_of::<kvm_vcpu_events>());
        assert_eq!(self.v.ioctl_fd(self.cpu, KVM_GET_VCPU_EVENTS, a), 0);
        self.v.get(a)
    }
    fn dr6(&self) -> u64 {
        let a = self.v.buf(size_of::<kvm_debugregs>());
        assert_eq!(self.v.ioctl_fd(self.cpu, KVM_GET_DEBUGREGS, a), 0);
        self.v.get::<kvm_debugregs>(a).dr6
    }
    fn set_dr6(&self, dr6: u64) {
        let mut d: kvm_debugregs = zeroed();
        d.dr6 = dr6;
        d.dr7 = 0x400;
        let a = self.v.put(&d);
        assert_eq!(self.v.ioctl_fd(self.cpu, KVM_SET_DEBUGREGS, a), 0);
    }
    /// The exception queued for the next entry, if any.
    fn queued(&self) -> Option<u8> {
        let e = self.events().exception;
        (e.injected != 0).then_some(e.nr)
    }
    fn soft<R>(&self, f: impl FnOnce(&crate::soft::SoftVcpu) -> R) -> R {
        let v = self.v.h(self.cpu) as *const Vcpu<FakeHost, SoftBackend<FakeHost>>;
        // SAFETY: live vCPU handle; no concurrent ioctl.
        let g = unsafe { &*v }.st.lock();
        f(&g.b)
    }
    fn done(self) {
        self.v.close(self.cpu);
        self.v.close(self.vm);
        self.v.assert_clean();
    }
}

fn out() -> Exit {
    Exit::Io {
        port: 0x3f8,
        size: 1,
        out: true,
        data: 0x41,
    }
}

#[test]
fn tf_over_an_emulated_out_leaves_a_single_step_db() {
    let f = Fix::new(true);
    f.set_dr6(0xffff_0ff0 | 0x3); // stale B0/B1 from an earlier breakpoint
    f.v.script(0, &[(out(), 1)]);
    assert_eq!(f.run().1, KVM_EXIT_IO);
    assert_eq!(f.queued(), None, "not before the OUT completes");
    f.complete();
    assert_eq!(f.v.regs(f.cpu).rip, 0x1001);
    assert_eq!(f.queued(), Some(1), "#DB pending after the OUT");
    let e = f.events().exception;
    assert_eq!(e.has_error_code, 0);
    assert_eq!(f.dr6(), 0xffff_0ff0 | DR6_BS, "BS set, B0-B3 cleared");
    // Delivered at the next entry.
    assert_eq!(f.run().1, KVM_EXIT_FAIL_ENTRY);
    assert_eq!(f.soft(|s| (s.exceptions, s.last_exception.nr)), (1, 1));
    f.done();
}

#[test]
fn no_db_without_tf() {
    let f = Fix::new(false);
    f.v.script(0, &[(out(), 1), (Exit::Hlt, 1)]);
    assert_eq!(f.run().1, KVM_EXIT_IO);
    f.complete();
    assert_eq!(f.queued(), None);
    assert_eq!(f.run().1, KVM_EXIT_HLT);
    assert_eq!(f.queued(), None);
    assert_eq!(f.dr6() & DR6_BS, 0);
    f.done();
}

#[test]
fn tf_over_pio_in_mmio_read_and_in_kernel_exits() {
    let f = Fix::new(true);
    // PIO in and an MMIO read, completed by userspace's data.
    f.v.script(
        0,
        &[
            (
                Exit::Io {
                    port: 0x60,
                    size: 1,
                    out: false,
                    data: 0,
                },
                2,
            ),
            (
                Exit::Mmio {
                    gpa: 0xfed0_0000,
                    len: 4,
                    write: false,
                    data: [0; 8],
                },
                3,
            ),
        ],
    );
    assert_eq!(f.run().1, KVM_EXIT_IO);
    f.complete();
    assert_eq!((f.v.regs(f.cpu).rip, f.queued()), (0x1002, Some(1)));
    assert_eq!(f.run().1, KVM_EXIT_MMIO, "#DB delivered, then the read");
    f.complete();
    assert_eq!((f.v.regs(f.cpu).rip, f.queued()), (0x1005, Some(1)));
    // CPUID, RDMSR and WRMSR the core answers: each one retired, each with its #DB (the
    // soft backend delivers it at the next entry).
    f.v.script(
        0,
        &[
            (
                Exit::Cpuid {
                    leaf: 0,
                    subleaf: 0,
                },
                2,
            ),
            (Exit::Rdmsr { index: 0x1a0 }, 2),
            (
                Exit::Wrmsr {
                    index: 0x1a0,
                    data: 1,
                },
                2,
            ),
        ],
    );
    assert_eq!(f.run().1, KVM_EXIT_FAIL_ENTRY, "script played out");
    assert_eq!(f.v.regs(f.cpu).rip, 0x100b);
    // Five #DBs delivered: PIO-in, MMIO read, CPUID, RDMSR, and WRMSR's at the last entry.
    assert_eq!(f.soft(|s| (s.exceptions, s.last_exception.nr)), (5, 1));
    assert_eq!(f.queued(), None);
    f.done();
}

#[test]
fn a_faulting_rdmsr_gets_its_gp_not_a_db() {
    let f = Fix::new(true);
    f.v.script(0, &[(Exit::Rdmsr { index: 0xdead }, 2)]);
    assert_eq!(f.run().1, KVM_EXIT_FAIL_ENTRY);
    assert_eq!(f.v.regs(f.cpu).rip, 0x1000, "not retired");
    assert_eq!(f.soft(|s| (s.exceptions, s.last_exception.nr)), (1, 13));
    assert_eq!(f.dr6() & DR6_BS, 0);
    f.done();
}

#[test]
fn tf_over_hlt_and_coalesced_out() {
    let f = Fix::new(true);
    f.v.script(0, &[(Exit::Hlt, 1)]);
    assert_eq!(
        f.run().1,
        KVM_EXIT_HLT,
        "userspace irqchip: HLT still exits"
    );
    assert_eq!((f.v.regs(f.cpu).rip, f.queued()), (0x1001, Some(1)));
    assert_ne!(f.dr6() & DR6_BS, 0);
    assert_eq!(f.run().1, KVM_EXIT_FAIL_ENTRY);
    // An OUT to a coalesced port completes in the kernel, #DB included.
    let z = f.v.put(&kvm_coalesced_mmio_zone {
        addr: 0x80,
        size: 1,
        pad: 1,
    });
    assert_eq!(f.v.ioctl_fd(f.vm, KVM_REGISTER_COALESCED_MMIO, z), 0);
    f.v.script(
        0,
        &[(
            Exit::Io {
                port: 0x80,
                size: 1,
                out: true,
                data: 0x55,
            },
            2,
        )],
    );
    assert_eq!(f.run().1, KVM_EXIT_FAIL_ENTRY);
    assert_eq!(f.v.regs(f.cpu).rip, 0x1003);
    // HLT's #DB, then the OUT's, each delivered at the entry after it.
    assert_eq!(f.soft(|s| (s.exceptions, s.last_exception.nr)), (2, 1));
    f.done();
}

#[test]
fn tf_over_hlt_with_the_in_kernel_apic_does_not_sleep() {
    let v = Vmm::new();
    let vm = v.create_vm();
    let mut c: kvm_enable_cap = zeroed();
    c.cap = KVM_CAP_SPLIT_IRQCHIP;
    c.args[0] = 24;
    assert_eq!(v.ioctl_fd(vm, KVM_ENABLE_CAP, v.put(&c)), 0);
    let cpu = v.create_vcpu(vm, 0);
    let mut r = v.regs(cpu);
    r.rflags |= RFLAGS_TF; // IF clear: nothing but the #DB could wake a sleeping HLT
    v.set_regs(cpu, &r);
    v.script(0, &[(Exit::Hlt, 1)]);
    let (h, run, sys) = (v.h(cpu) as usize, v.run_page(cpu) as usize, v.sys);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: the handle stays live until the test closes it after the reply.
        let r = unsafe { sys.ioctl(h as *mut std::ffi::c_void, KVM_RUN, 0) };
        // SAFETY: as above.
        let _ = tx.send((r, unsafe { (*(run as *const kvm_run)).exit_reason }));
    });
    // Linux: a pending exception makes the vCPU runnable; the #DB goes in at once.
    let (r, reason) = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the vCPU slept through its single-step #DB");
    assert_eq!((r, reason), (0, KVM_EXIT_FAIL_ENTRY));
    let a = v.buf(4);
    assert_eq!(v.ioctl_fd(cpu, KVM_GET_MP_STATE, a), 0);
    assert_eq!(v.get::<u32>(a), KVM_MP_STATE_RUNNABLE);
    let vc = v.h(cpu) as *const Vcpu<FakeHost, SoftBackend<FakeHost>>;
    // SAFETY: live vCPU handle; the run finished.
    let (n, nr) = {
        let g = unsafe { &*vc }.st.lock();
        (g.b.exceptions, g.b.last_exception.nr)
    };
    assert_eq!((n, nr), (1, 1));
    v.close(cpu);
    v.close(vm);
    v.assert_clean();
}
