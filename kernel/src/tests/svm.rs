//! The SVM backend through the core's ioctls, with the fake SVM hardware (`svm::hw::fake`)
//! playing the processor and the guest: each VMRUN runs the next scripted step, which checks
//! what the backend set up for the entry and writes the #VMEXIT fields.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use kvm_abi::*;
use svm::hw::fake::FakeSvm;
use svm::hw::SvmHw;
use svm::state::GuestGprs;
use svm::vmcb::Vmcb;
use zerocopy::FromZeros;

use crate::backend::CpuidResult;
use crate::fake::host::FakeHost;
use crate::fake::vmm::{epyc_cpuid, Vmm};
use crate::svmb::SvmBackend;
use crate::vm::Vm;

type B = SvmBackend<FakeHost, FakeSvm>;
type Step = Box<dyn FnMut(&mut Vmcb, &mut GuestGprs) + Send>;

/// QEMU TCG `-cpu EPYC`: SVM revision 1, 16 ASIDs, nested paging, nothing else. 52 physical
/// address bits, because the fake host's pinned pages have bit 50 set.
fn tcg_cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    match leaf {
        0x8000_0008 => CpuidResult {
            eax: 0x3034,
            ..epyc_cpuid(leaf, subleaf)
        },
        0x8000_000a => CpuidResult {
            eax: 1,
            ebx: 16,
            ecx: 0,
            edx: 1,
        },
        _ => epyc_cpuid(leaf, subleaf),
    }
}

/// `-cpu qemu64,+svm,-npt`: SVM without nested paging.
fn no_npt_cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    match leaf {
        0x8000_000a => CpuidResult {
            eax: 1,
            ebx: 16,
            ecx: 0,
            edx: 0,
        },
        _ => epyc_cpuid(leaf, subleaf),
    }
}

struct Fix {
    base: crate::fake::host::Counts,
    v: Vmm<B>,
    vm: i64,
    cpu: i64,
    steps: Arc<Mutex<VecDeque<Step>>>,
}

fn backend(host: &'static FakeHost, cpuid: fn(u32, u32) -> CpuidResult) -> B {
    let hw = FakeSvm::default();
    hw.msrs.lock().unwrap().insert(0xc000_0080, 0xd01); // EFER: SCE LME LMA NXE
    hw.msrs.lock().unwrap().insert(0x277, 0x0007_0406_0007_0406);
    *hw.irq_on.lock().unwrap() = true;
    hw.xcr0.lock().unwrap().0 = 7;
    SvmBackend::new(host, hw, cpuid).expect("svm backend")
}

impl Fix {
    fn new() -> Self {
        let host = FakeHost::leak();
        let b = backend(host, tcg_cpuid);
        let base = host.counts();
        let steps: Arc<Mutex<VecDeque<Step>>> = Arc::default();
        let s2 = steps.clone();
        *b.hw().guest.lock().unwrap() = Some(Box::new(move |pa, g, _db| {
            // SAFETY: the fake host's page addresses are their kernel addresses.
            let vmcb = unsafe { &mut *(pa as *mut Vmcb) };
            let mut step = s2
                .lock()
                .unwrap()
                .pop_front()
                .expect("VMRUN without a step");
            vmcb.control.exit_int_info = 0;
            step(vmcb, g);
        }));
        let v = Vmm::with_backend(host, b);
        let vm = v.create_vm();
        let cpu = v.create_vcpu(vm, 0);
        Fix {
            base,
            v,
            vm,
            cpu,
            steps,
        }
    }

    fn step(&self, f: impl FnMut(&mut Vmcb, &mut GuestGprs) + Send + 'static) {
        self.steps.lock().unwrap().push_back(Box::new(f));
    }

    fn run(&self) -> i64 {
        self.v.ioctl_fd(self.cpu, KVM_RUN, 0)
    }

    fn r(&self) -> &mut kvm_run {
        // SAFETY: the run page lives as long as the vCPU; single-threaded test.
        unsafe { &mut *self.v.run_page(self.cpu) }
    }

    fn hw(&self) -> &FakeSvm {
        self.v.sys.backend.hw()
    }

    fn bvm(&self) -> &crate::svmb::SvmVm<FakeHost> {
        // SAFETY: the VM descriptor is open, so the VM is alive.
        unsafe { &(*(self.v.h(self.vm) as *const Vm<FakeHost, B>)).bvm }
    }

    fn set_rip(&self, rip: u64) {
        let mut r = self.v.regs(self.cpu);
        r.rip = rip;
        self.v.set_regs(self.cpu, &r);
    }

    fn events(&self) -> kvm_vcpu_events {
        let a = self.v.buf(size_of::<kvm_vcpu_events>());
        assert_eq!(self.v.ioctl_fd(self.cpu, KVM_GET_VCPU_EVENTS, a), 0);
        self.v.get(a)
    }

    fn done(self) {
        assert!(self.steps.lock().unwrap().is_empty(), "unplayed steps");
        self.v.close(self.cpu);
        self.v.close(self.vm);
        let c = self.v.host.counts();
        // Only the backend's own memory stays: permission maps (3 + 2 pages), and per CPU
        // (the fake has 4) a host save area and a host VMSAVE page.
        assert_eq!((c.pins, c.locks, c.mm_refs), (0, 0, 0), "{c:?}");
        assert_eq!(self.base.pages, 5 + 2 * 4);
        assert_eq!(
            (c.pages, c.heap_bytes),
            (self.base.pages, self.base.heap_bytes),
            "{c:?}"
        );
    }
}

const IOIO: u64 = 0x7b;
const IN: u64 = 1;
const SZ8: u64 = 1 << 4;
const SZ32: u64 = 1 << 6;

#[test]
fn pio_cpuid_hlt_msr_without_nrips() {
    let f = Fix::new();
    f.set_rip(0x1000);
    *f.hw().db.lock().unwrap() = [0x11, 0x22, 0x33, 0x44];
    // A host debugger's breakpoint armed in DR7.
    *f.hw().dr67.lock().unwrap() = (0xffff_0ff0, 0x401);
    let dr = kvm_debugregs {
        db: [1, 2, 3, 4],
        dr6: 0xffff_0ff0,
        dr7: 0x400,
        ..FromZeros::new_zeroed()
    };
    let da = f.v.put(&dr);
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_SET_DEBUGREGS, da), 0);
    f.step(|v, _| {
        // The first entry: SVME in the guest EFER, a fresh ASID flushed (TCG has no
        // flush-by-ASID: everything), intercepts for the core's exits, nested paging on.
        assert_ne!(v.save.efer & (1 << 12), 0);
        assert_eq!((v.control.guest_asid, v.control.tlb_control), (1, 1));
        assert_eq!(v.control.np_control & 1, 1);
        assert_eq!(v.save.rip, 0x1000);
        v.save.rax = 0x1234_5641;
        v.control.exit_code = IOIO;
        v.control.exit_info1 = 0x3f8 << 16 | SZ8;
        v.control.exit_info2 = 0x1001;
    });
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_IO);
    let io = *f.r().u.io();
    assert_eq!(
        (io.direction, io.size, io.port, io.count),
        (KVM_EXIT_IO_OUT, 1, 0x3f8, 1)
    );
    // SAFETY: PIO page of the vCPU.
    assert_eq!(unsafe { *(f.v.mmap(f.cpu, 1) as *const u8) }, 0x41);
    // RIP moves when the exit completes (next KVM_RUN), as in Linux.
    assert_eq!(f.v.regs(f.cpu).rip, 0x1000);
    // SVM went on lazily on this CPU, with the host save area; interrupts back on.
    assert_ne!(f.hw().rdmsr(0xc000_0080) & (1 << 12), 0);
    assert_ne!(f.hw().rdmsr(0xc001_0117), 0);
    assert!(*f.hw().irq_on.lock().unwrap());
    // The host's DR0-DR3 and DR7 are back after the run.
    assert_eq!(*f.hw().db.lock().unwrap(), [0x11, 0x22, 0x33, 0x44]);
    assert_eq!(*f.hw().dr67.lock().unwrap(), (0xffff_0ff0, 0x401));
    // Guest XCR0 (1) during the run, host's (7) afterwards; guest FPU state in and out.
    assert_eq!(*f.hw().xcr0.lock().unwrap(), (7, 1));
    assert_eq!(*f.hw().fpu_ops.lock().unwrap(), (1, 1));

    f.step(|v, g| {
        assert_eq!(v.save.rip, 0x1001);
        // Same CPU, same ASID: no flush.
        assert_eq!(v.control.tlb_control, 0);
        v.save.rax = 0;
        g.rcx = 0;
        v.control.exit_code = 0x72; // CPUID, handled in the kernel
        v.control.next_rip = 0xdead; // stale: no NRIPS
    });
    f.step(|v, g| {
        // CPUID is 2 bytes; the answer (no KVM_SET_CPUID2: zeros) is in the registers.
        assert_eq!(v.save.rip, 0x1003);
        assert_eq!((v.save.rax, g.rbx, g.rcx, g.rdx), (0, 0, 0, 0));
        v.control.exit_code = 0x78; // HLT
    });
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_HLT);
    assert_eq!(f.v.regs(f.cpu).rip, 0x1004);

    f.step(|v, g| {
        g.rcx = 0x1a0; // MISC_ENABLE (in-memory store)
        v.control.exit_code = 0x7c;
        v.control.exit_info1 = 0;
    });
    f.step(|v, g| {
        assert_eq!(v.save.rip, 0x1006);
        assert_eq!((v.save.rax, g.rdx), (1, 0));
        g.rcx = 0x1234; // unknown MSR: #GP
        v.control.exit_code = 0x7c;
        v.control.exit_info1 = 1;
    });
    f.step(|v, _| {
        // #GP(0) queued, RIP still at the WRMSR.
        assert_eq!(v.save.rip, 0x1006);
        assert_eq!(v.control.event_inj, 0x8000_0b0d);
        v.control.exit_code = 0x7f; // triple fault
    });
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_SHUTDOWN);
    f.done();
}

#[test]
fn pio_in_completes_into_rax_unless_userspace_moved_rip() {
    let f = Fix::new();
    f.set_rip(0x2000);
    f.step(|v, _| {
        v.save.rax = 0xffff_ffff_aaaa_aaaa;
        v.control.exit_code = IOIO;
        v.control.exit_info1 = 0x71 << 16 | SZ32 | IN;
        v.control.exit_info2 = 0x2002;
    });
    assert_eq!(f.run(), 0);
    // SAFETY: PIO page of the vCPU.
    unsafe { (f.v.mmap(f.cpu, 1) as *mut u32).write(0x1122_3344) };
    f.step(|v, _| {
        // A 32-bit IN zero-extends into RAX.
        assert_eq!((v.save.rip, v.save.rax), (0x2002, 0x1122_3344));
        v.control.exit_code = IOIO;
        v.control.exit_info1 = 0x71 << 16 | SZ8 | IN;
        v.control.exit_info2 = 0x2004;
    });
    assert_eq!(f.run(), 0);
    // Userspace moves RIP (QEMU's vapic does): the IN is not completed.
    f.set_rip(0x3000);
    f.step(|v, _| {
        assert_eq!((v.save.rip, v.save.rax), (0x3000, 0x1122_3344));
        // OUT to 7Eh: RIP is past it before userspace sees the exit (KVM's quirk).
        v.control.exit_code = IOIO;
        v.control.exit_info1 = 0x7e << 16 | SZ8;
        v.control.exit_info2 = 0x3002;
    });
    assert_eq!(f.run(), 0);
    assert_eq!(f.v.regs(f.cpu).rip, 0x3002);
    f.step(|v, _| {
        assert_eq!(v.save.rip, 0x3002);
        // REP INSB (TCG reports no address size): left to the core's emulator at RIP.
        v.control.exit_code = IOIO;
        v.control.exit_info1 = 0x511 << 16 | 0x1d;
        v.control.exit_info2 = 0x3004;
        v.save.cs.base = 0;
    });
    // The emulator fetches from guest memory, which has no slot here: emulation failure.
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_INTERNAL_ERROR);
    assert_eq!(f.v.regs(f.cpu).rip, 0x3002);
    f.done();
}

#[test]
fn npf_maps_slot_pages_and_slot_changes_unmap_before_unpin() {
    let f = Fix::new();
    let ua = f.v.add_slot(f.vm, 0, 0, 0x4000, 0);
    let fake_pa = |off: u64| (ua + off) | (1 << 50);
    const NPF: u64 = 0x400;
    f.step(|v, _| {
        v.control.exit_code = NPF;
        v.control.exit_info1 = 1 << 32 | 2 | 4; // final GPA, write, user
        v.control.exit_info2 = 0x2abc;
    });
    f.step(|v, _| {
        // Mapping into a not-present entry needs no flush.
        assert_eq!(v.control.tlb_control, 0);
        v.control.exit_code = NPF;
        v.control.exit_info1 = 1 << 32 | 4 | 0x10; // read (fetch)
        v.control.exit_info2 = 0x3000;
    });
    f.step(|v, _| {
        v.control.exit_code = NPF;
        v.control.exit_info1 = 1 << 32 | 1 | 2; // write to the read-only mapping
        v.control.exit_info2 = 0x3008;
    });
    f.step(|v, _| {
        v.control.exit_code = 0x78;
    });
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_HLT);
    assert_eq!(f.bvm().lookup(2), Some((fake_pa(0x2000), true)));
    assert_eq!(f.bvm().lookup(3), Some((fake_pa(0x3000), true)));
    assert_eq!(f.bvm().lookup(1), None);
    assert_eq!(f.v.host.counts().pins, 2);

    // Moving the slot (and turning on dirty logging) unmaps and unwires the old range; the
    // next entry flushes.
    assert_eq!(f.v.set_region(f.vm, 0, 1, 0x10_0000, 0x4000, ua), 0);
    assert_eq!((f.bvm().lookup(2), f.bvm().lookup(3)), (None, None));
    assert_eq!(f.v.host.counts().pins, 0);
    f.step(|v, _| {
        assert_eq!(v.control.tlb_control, 1);
        v.control.exit_code = NPF;
        v.control.exit_info1 = 1 << 32 | 4;
        v.control.exit_info2 = 0x10_1000;
    });
    f.step(|v, _| {
        v.control.exit_code = 0x78;
    });
    assert_eq!(f.run(), 0);
    // Dirty logging: read-only until written, so that writes fault and are logged.
    assert_eq!(f.bvm().lookup(0x101), Some((fake_pa(0x1000), false)));
    assert_eq!(f.v.host.counts().pins, 1);
    f.step(|v, _| {
        v.control.exit_code = NPF;
        v.control.exit_info1 = 1 << 32 | 1 | 2 | 4;
        v.control.exit_info2 = 0x10_1ff8;
    });
    f.step(|v, _| {
        v.control.exit_code = 0x78;
    });
    assert_eq!(f.run(), 0);
    assert_eq!(f.bvm().lookup(0x101), Some((fake_pa(0x1000), true)));
    let bm = f.v.buf(8);
    let log = kvm_dirty_log {
        slot: 0,
        padding1: 0,
        dirty_bitmap: bm,
    };
    let la = f.v.put(&log);
    assert_eq!(f.v.ioctl_fd(f.vm, KVM_GET_DIRTY_LOG, la), 0);
    assert_eq!(f.v.get::<u64>(bm), 0b10);
    // Reading the log write-protects again (here: unmaps).
    assert_eq!(f.bvm().lookup(0x101), None);
    // Deleting the slot unwires everything.
    assert_eq!(f.v.set_region(f.vm, 0, 0, 0x10_0000, 0, ua), 0);
    assert_eq!(f.bvm().lookup(0x101), None);
    assert_eq!(f.v.host.counts().pins, 0);
    f.done();
}

#[test]
fn interrupt_nmi_window_and_reinjection() {
    let f = Fix::new();
    // KVM_INTERRUPT goes into EVENTINJ at the next entry.
    let irq = f.v.put(&kvm_interrupt { irq: 0x30 });
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_INTERRUPT, irq), 0);
    assert_eq!(f.events().interrupt.injected, 1);
    f.step(|v, _| {
        assert_eq!(v.control.event_inj, 0x8000_0030);
        v.control.exit_code = 0x60; // host interrupt: re-entered without exiting to userspace
    });
    // The guest has IF=0: asking for a window arms V_IRQ and the VINTR intercept.
    f.r().request_interrupt_window = 1;
    f.step(|v, _| {
        assert_eq!(v.control.event_inj, 0);
        assert_ne!(v.control.int_ctl & (1 << 8), 0);
        assert_ne!(v.control.intercept_misc1 & (1 << 4), 0);
        v.save.rflags |= 1 << 9;
        v.control.exit_code = 0x64; // VINTR
    });
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_IRQ_WINDOW_OPEN);
    assert_eq!(f.r().ready_for_interrupt_injection, 1);
    f.r().request_interrupt_window = 0;

    // NMI: injected, then blocked until the handler's IRET retired.
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_NMI, 0), 0);
    f.step(|v, _| {
        assert_eq!(v.control.int_ctl & (1 << 8), 0, "window disarmed");
        assert_eq!(v.control.event_inj, 0x8000_0202);
        assert_ne!(v.control.intercept_misc1 & (1 << 20), 0, "IRET intercepted");
        v.control.exit_code = 0x78;
    });
    assert_eq!(f.run(), 0);
    assert_eq!((f.events().nmi.masked, f.events().nmi.pending), (1, 0));
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_NMI, 0), 0);
    f.step(|v, _| {
        assert_eq!(v.control.event_inj, 0, "NMI blocked in the handler");
        v.control.exit_code = 0x74; // IRET
    });
    f.step(|v, _| {
        // Still blocked until the IRET retired (one more exit).
        assert_eq!(v.control.event_inj, 0);
        assert_eq!(v.control.intercept_misc1 & (1 << 20), 0);
        v.control.exit_code = 0x60;
    });
    f.step(|v, _| {
        assert_eq!(v.control.event_inj, 0x8000_0202);
        // A #PF whose delivery hit a nested page fault outside memory: re-injected.
        v.control.exit_code = 0x78;
        v.control.exit_int_info = 0x8000_0b0e | 6 << 32;
    });
    assert_eq!(f.run(), 0);
    let e = f.events();
    assert_eq!(
        (
            e.exception.injected,
            e.exception.nr,
            e.exception.has_error_code,
            e.exception.error_code
        ),
        (1, 14, 1, 6)
    );
    f.step(|v, _| {
        assert_eq!(v.control.event_inj, 0x8000_0b0e | 6 << 32);
        v.control.exit_code = 0x78;
    });
    assert_eq!(f.run(), 0);
    f.done();
}

#[test]
fn xsetbv_state_and_msrs() {
    let f = Fix::new();
    // Guest CPUID allows x87|SSE|AVX.
    let mut hdr = kvm_cpuid2::new_zeroed();
    hdr.nent = 1;
    let mut e = kvm_cpuid_entry2::new_zeroed();
    e.function = 0xd;
    e.flags = 1;
    e.eax = 7;
    let mut bytes = zerocopy::IntoBytes::as_bytes(&hdr).to_vec();
    bytes.extend_from_slice(zerocopy::IntoBytes::as_bytes(&e));
    let a = f.v.buf(bytes.len());
    f.v.host.user_write(a, &bytes);
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_SET_CPUID2, a), 0);
    f.set_rip(0x1000);
    f.step(|v, g| {
        v.save.rax = 3;
        g.rdx = 0;
        g.rcx = 0;
        v.control.exit_code = 0x8d; // XSETBV
    });
    f.step(|v, g| {
        assert_eq!(v.save.rip, 0x1003);
        v.save.rax = 4; // AVX without SSE: #GP
        g.rcx = 0;
        v.control.exit_code = 0x8d;
    });
    f.step(|v, _| {
        assert_eq!((v.save.rip, v.control.event_inj), (0x1003, 0x8000_0b0d));
        v.control.exit_code = 0x78;
    });
    assert_eq!(f.run(), 0);
    // XCR0 3 was live during the last run; the host's is back.
    assert_eq!(*f.hw().xcr0.lock().unwrap(), (7, 3));
    let x = f.v.buf(size_of::<kvm_xcrs>());
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_GET_XCRS, x), 0);
    let xcrs: kvm_xcrs = f.v.get(x);
    assert_eq!((xcrs.nr_xcrs, xcrs.xcrs[0].value), (1, 3));

    // Long-mode sregs round trip; EFER.SVME stays hidden.
    let sa = f.v.buf(size_of::<kvm_sregs>());
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_GET_SREGS, sa), 0);
    let mut s: kvm_sregs = f.v.get(sa);
    assert_eq!(s.efer, 0);
    s.cr0 = 0x8000_0011;
    s.cr4 = 0x20;
    s.efer = 0x500;
    s.cs.l = 1;
    let sa2 = f.v.put(&s);
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_SET_SREGS, sa2), 0);
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_GET_SREGS, sa), 0);
    let s2: kvm_sregs = f.v.get(sa);
    assert_eq!(
        (s2.cr0, s2.cr4, s2.efer, s2.cs.l),
        (0x8000_0011, 0x20, 0x500, 1)
    );
    // LMA without LME+PG is refused.
    s.cr0 = 0x11;
    let sa3 = f.v.put(&s);
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_SET_SREGS, sa3), -22);

    // MSRs the VMCB holds go to the VMCB; unknown ones stop the batch.
    let msrs = [
        (0xc000_0082u32, 0xffff_ffff_8100_0000u64),
        (0x10, 5_000_000),
        (0x12345, 1),
    ];
    let mut buf = vec![0u8; 8 + 16 * msrs.len()];
    buf[..4].copy_from_slice(&(msrs.len() as u32).to_le_bytes());
    for (i, (idx, val)) in msrs.iter().enumerate() {
        buf[8 + 16 * i..12 + 16 * i].copy_from_slice(&idx.to_le_bytes());
        buf[16 + 16 * i..24 + 16 * i].copy_from_slice(&val.to_le_bytes());
    }
    let m = f.v.buf(buf.len());
    f.v.host.user_write(m, &buf);
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_SET_MSRS, m), 2);
    // The guest TSC reads back as set plus the (fake) time since: the fake TSC advances by
    // 1000 per read.
    let get = [0x10u32, 0, 0, 0, 0xc000_0082, 0, 0, 0];
    let mut gb = vec![0u8; 8 + 32];
    gb[..4].copy_from_slice(&2u32.to_le_bytes());
    for (i, w) in get.iter().enumerate() {
        gb[8 + 4 * i..12 + 4 * i].copy_from_slice(&w.to_le_bytes());
    }
    let g = f.v.buf(gb.len());
    f.v.host.user_write(g, &gb);
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_GET_MSRS, g), 2);
    let out = f.v.host.user_read(g, gb.len());
    let tsc = u64::from_le_bytes(out[16..24].try_into().unwrap());
    assert!((5_000_000..5_010_000).contains(&tsc), "{tsc}");
    assert_eq!(
        u64::from_le_bytes(out[32..40].try_into().unwrap()),
        0xffff_ffff_8100_0000
    );
    f.step(|v, _| {
        assert_eq!(v.save.lstar, 0xffff_ffff_8100_0000);
        v.control.exit_code = 0x78;
    });
    assert_eq!(f.run(), 0);
    f.done();
}

#[test]
fn tsc_aux_is_the_guests_inside_and_the_hosts_outside() {
    const TSC_AUX: u32 = 0xc000_0103;
    let f = Fix::new();
    f.hw().msrs.lock().unwrap().insert(TSC_AUX, 3); // the host's CPU number
    let mut buf = vec![0u8; 8 + 16];
    buf[..4].copy_from_slice(&1u32.to_le_bytes());
    buf[8..12].copy_from_slice(&TSC_AUX.to_le_bytes());
    buf[16..24].copy_from_slice(&7u64.to_le_bytes());
    let m = f.v.buf(buf.len());
    f.v.host.user_write(m, &buf);
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_SET_MSRS, m), 1);
    f.hw().writes.lock().unwrap().clear();
    f.step(|v, _| v.control.exit_code = 0x78); // HLT
    assert_eq!(f.run(), 0);
    let aux: Vec<u64> = f
        .hw()
        .writes
        .lock()
        .unwrap()
        .iter()
        .filter(|w| w.0 == TSC_AUX)
        .map(|w| w.1)
        .collect();
    assert_eq!(aux, [7, 3], "guest value in for the run, host value back after");
    assert_eq!(f.hw().rdmsr(TSC_AUX), 3);
    f.done();
}

#[test]
fn no_nested_paging_refuses_vm_creation() {
    let host = FakeHost::leak();
    let b = backend(host, no_npt_cpuid);
    let mut line = crate::ffi::LineBuf::new();
    crate::svmb::describe(&b, &mut line);
    assert!(
        line.as_str()
            .contains("backend svm rev 1 asids 16 -npt -nrips"),
        "{}",
        line.as_str()
    );
    assert!(line.as_str().contains("shadow paging is not supported"));
    let v = Vmm::with_backend(host, b);
    assert_eq!(v.ioctl(v.kvm, KVM_CREATE_VM, 0), -19);
    assert!(v
        .host
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("no nested paging")));

    let host = FakeHost::leak();
    let b = backend(host, tcg_cpuid);
    let mut line = crate::ffi::LineBuf::new();
    crate::svmb::describe(&b, &mut line);
    assert!(
        line.as_str().contains("+npt -nrips -decode"),
        "{}",
        line.as_str()
    );
    assert!(!line.as_str().contains("refused"));
}

#[test]
fn svm_enabled_lazily_and_off_at_detach_unless_another_hypervisor_owns_it() {
    let f = Fix::new();
    f.step(|v, _| v.control.exit_code = 0x78);
    assert_eq!(f.run(), 0);
    let hsave = f.hw().rdmsr(0xc001_0117);
    assert_ne!(hsave, 0);
    f.v.sys.backend.disable_this_cpu();
    assert_eq!(f.hw().rdmsr(0xc000_0080) & (1 << 12), 0);
    assert_eq!(f.hw().rdmsr(0xc001_0117), 0);
    // vmm(4) turned SVM on with its own host save area: shared, left alone at detach.
    // SAFETY: fake hardware.
    unsafe {
        f.hw().wrmsr(0xc000_0080, 0x1d01);
        f.hw().wrmsr(0xc001_0117, 0x7700_0000);
    }
    f.step(|v, _| v.control.exit_code = 0x78);
    assert_eq!(f.run(), 0);
    assert_eq!(f.hw().rdmsr(0xc001_0117), 0x7700_0000);
    f.v.sys.backend.disable_this_cpu();
    assert_eq!(f.hw().rdmsr(0xc000_0080), 0x1d01);
    assert_eq!(f.hw().rdmsr(0xc001_0117), 0x7700_0000);
    f.done();
}

#[test]
fn single_step_over_backend_skips_and_core_completions() {
    let f = Fix::new();
    let mut r = f.v.regs(f.cpu);
    r.rip = 0x1000;
    r.rflags |= 1 << 8; // TF
    f.v.set_regs(f.cpu, &r);
    f.step(|v, _| {
        v.control.exit_code = 0x89; // WBINVD, skipped by the backend
    });
    f.step(|v, _| {
        // The skip raised the single-step #DB: RIP past WBINVD, DR6.BS, #DB in EVENTINJ.
        assert_eq!(v.save.rip, 0x1002);
        assert_eq!(v.control.event_inj, 0x8000_0301);
        assert_eq!(v.save.dr6, 0xffff_4ff0);
        v.save.dr6 = 0xffff_0ff0;
        v.control.event_inj = 0;
        v.save.rax = 0x41;
        v.control.exit_code = IOIO; // OUT, completed by the core at the next KVM_RUN
        v.control.exit_info1 = 0x3f8 << 16 | SZ8;
        v.control.exit_info2 = 0x1003;
    });
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_IO);
    f.step(|v, _| {
        assert_eq!(v.save.rip, 0x1003);
        assert_eq!(v.control.event_inj, 0x8000_0301, "#DB after the OUT");
        assert_eq!(v.save.dr6, 0xffff_4ff0);
        v.control.exit_code = 0x7f; // shutdown
    });
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_SHUTDOWN);
    f.done();
}
