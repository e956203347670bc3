//! The VMX adapter (`vmxb`) over a fake processor: VMXON/VMPTRLD/VMCLEAR discipline, VMCS
//! initialization, exits into the core's `Exit`, completions, event injection and
//! IDT-vectoring reinjection, CR0 long-mode switch, entry failures, refusal without EPT or
//! unrestricted guest. Capability MSRs are the recorded Bochs models (`vmx::testdata`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use kvm_abi::{kvm_regs, kvm_sregs, kvm_vcpu_events};
use vmx::caps::VmxCapMsrs;
use vmx::hw::{InveptType, InvvpidType, VmxInstr};
use vmx::state::{GuestRegs, HostState};
use vmx::switch::EnterStatus;
use vmx::testdata::{as_msrs, BOCHS_LYNNFIELD, BOCHS_PENRYN, BOCHS_SKYLAKE_X};
use vmx::vmcs::{VmFail, VmInstructionError};
use x86::vmx::vmcs::{control, guest, host, ro};
use zerocopy::FromZeros;

use crate::backend::{Backend, CpuidResult, EntryGate, Exit, IoCompletion};
use crate::errno::ENODEV;
use crate::fake::host::FakeHost;
use crate::vmxb::{VmxBackend, VmxHw, VmxVcpu, VmxVm};

/// What one scripted VM exit does.
#[derive(Clone, Default)]
struct Script {
    /// Exit-information fields (reason, qualification, lengths, ...).
    fields: Vec<(u32, u64)>,
    /// Guest GPRs changed by the "guest" before it exits.
    gprs: Vec<(usize, u64)>,
    /// VMfailValid with this instruction error instead of an exit.
    fail_valid: Option<u32>,
}

#[derive(Default)]
struct FakeState {
    msrs: HashMap<u32, u64>,
    vmcs: HashMap<u64, HashMap<u32, u64>>,
    current: Option<u64>,
    vmxon: bool,
    trace: Vec<String>,
    script: VecDeque<Script>,
    /// The VMCS fields at each entry.
    entries: Vec<HashMap<u32, u64>>,
    /// The guest GPRs at each entry.
    entry_regs: Vec<GuestRegs>,
}

struct FakeVmx(Mutex<FakeState>);

impl FakeVmx {
    fn new(caps: &VmxCapMsrs) -> Self {
        let mut msrs = as_msrs(caps).0;
        msrs.insert(0x3a, 5); // IA32_FEATURE_CONTROL: locked, VMX outside SMX
        Self(Mutex::new(FakeState {
            msrs,
            ..Default::default()
        }))
    }
    fn push(&self, s: Script) {
        self.0.lock().unwrap().script.push_back(s);
    }
    fn trace(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().unwrap().trace)
    }
    fn field(&self, pa: u64, f: u32) -> u64 {
        let s = self.0.lock().unwrap();
        s.vmcs
            .get(&pa)
            .and_then(|v| v.get(&f))
            .copied()
            .unwrap_or(0)
    }
    fn last_entry(&self) -> HashMap<u32, u64> {
        self.0.lock().unwrap().entries.last().cloned().unwrap()
    }
}

// SAFETY: a fake; nothing is executed.
unsafe impl VmxInstr for FakeVmx {
    unsafe fn vmxon(&self, pa: u64) -> Result<(), VmFail> {
        let mut s = self.0.lock().unwrap();
        assert!(!s.vmxon, "VMXON twice");
        s.vmxon = true;
        s.trace.push(format!("vmxon {pa:#x}"));
        Ok(())
    }
    unsafe fn vmxoff(&self) -> Result<(), VmFail> {
        let mut s = self.0.lock().unwrap();
        assert!(s.current.is_none(), "VMXOFF with a current VMCS");
        s.vmxon = false;
        s.trace.push("vmxoff".into());
        Ok(())
    }
    unsafe fn vmclear(&self, pa: u64) -> Result<(), VmFail> {
        let mut s = self.0.lock().unwrap();
        assert!(s.vmxon);
        if s.current == Some(pa) {
            s.current = None;
        }
        s.vmcs.entry(pa).or_default();
        s.trace.push("vmclear".into());
        Ok(())
    }
    unsafe fn vmptrld(&self, pa: u64) -> Result<(), VmFail> {
        let mut s = self.0.lock().unwrap();
        assert!(s.vmxon);
        assert!(
            s.vmcs.contains_key(&pa),
            "VMPTRLD of a VMCS never VMCLEARed"
        );
        assert!(
            s.current.is_none(),
            "VMPTRLD while another VMCS is current (not cleared)"
        );
        s.current = Some(pa);
        s.trace.push("vmptrld".into());
        Ok(())
    }
    unsafe fn invept(&self, kind: InveptType, eptp: u64) -> Result<(), VmFail> {
        self.0
            .lock()
            .unwrap()
            .trace
            .push(format!("invept {kind:?} {eptp:#x}"));
        Ok(())
    }
    unsafe fn invvpid(&self, kind: InvvpidType, vpid: u16, _addr: u64) -> Result<(), VmFail> {
        self.0
            .lock()
            .unwrap()
            .trace
            .push(format!("invvpid {kind:?} {vpid}"));
        Ok(())
    }
}

// SAFETY: a fake; nothing is executed.
unsafe impl VmxHw for FakeVmx {
    fn rdmsr(&self, msr: u32) -> u64 {
        self.0.lock().unwrap().msrs.get(&msr).copied().unwrap_or(0)
    }
    unsafe fn wrmsr(&self, msr: u32, value: u64) {
        self.0.lock().unwrap().msrs.insert(msr, value);
    }
    fn read_cr0(&self) -> u64 {
        0x8005_0033
    }
    fn read_cr4(&self) -> u64 {
        0x3606f0
    }
    fn vmread(&self, field: u32) -> Result<u64, VmFail> {
        let s = self.0.lock().unwrap();
        let pa = s.current.ok_or(VmFail::Invalid)?;
        Ok(s.vmcs[&pa].get(&field).copied().unwrap_or(0) & vmx::vmcs::field_mask(field))
    }
    fn vmwrite(&self, field: u32, value: u64) -> Result<(), VmFail> {
        let mut s = self.0.lock().unwrap();
        let pa = s.current.ok_or(VmFail::Invalid)?;
        if vmx::vmcs::field_read_only(field) {
            return Err(VmFail::Valid(VmInstructionError::WRITE_READ_ONLY));
        }
        assert_eq!(
            value & !vmx::vmcs::field_mask(field),
            0,
            "field {field:#x} value {value:#x}"
        );
        s.vmcs.get_mut(&pa).unwrap().insert(field, value);
        Ok(())
    }
    fn host_state(&self) -> HostState {
        HostState {
            cr0: 0x8005_0033,
            cr3: 0x1000,
            cr4: 0x3606f0,
            cs: 0x10,
            ss: 0x18,
            tr: 0x40,
            gs_base: 0xffff_8880_0000_0000,
            tr_base: 0xffff_8880_0000_1000,
            gdtr_base: 0xffff_8880_0000_2000,
            idtr_base: 0xffff_8880_0000_3000,
            efer: 0xd01,
            pat: 0x0007_0406_0007_0406,
            ..Default::default()
        }
    }
    unsafe fn enter(&self, regs: &mut GuestRegs, launched: bool) -> EnterStatus {
        let mut s = self.0.lock().unwrap();
        assert!(
            !launched,
            "the adapter always VMCLEARs, so it must VMLAUNCH"
        );
        let pa = s.current.expect("entry without a current VMCS");
        let mut snapshot = s.vmcs[&pa].clone();
        // The MSR RDTSCP reads in the guest, recorded under its MSR number (no VMCS field
        // encoding is that large).
        let aux = s.msrs.get(&TSC_AUX).copied().unwrap_or(0);
        snapshot.insert(TSC_AUX, aux);
        s.entries.push(snapshot);
        s.entry_regs.push(*regs);
        s.trace.push("vmlaunch".into());
        let Some(sc) = s.script.pop_front() else {
            return EnterStatus::FailInvalid;
        };
        if let Some(e) = sc.fail_valid {
            s.vmcs
                .get_mut(&pa)
                .unwrap()
                .insert(ro::VM_INSTRUCTION_ERROR, u64::from(e));
            return EnterStatus::FailValid;
        }
        let v = s.vmcs.get_mut(&pa).unwrap();
        for f in [
            ro::EXIT_QUALIFICATION,
            ro::VMEXIT_INTERRUPTION_INFO,
            ro::IDT_VECTORING_INFO,
        ] {
            v.insert(f, 0);
        }
        for (f, x) in sc.fields {
            v.insert(f, x);
        }
        for (i, x) in sc.gprs {
            regs.gpr[i] = x;
        }
        EnterStatus::Exited
    }
    unsafe fn host_nmi(&self) {
        self.0.lock().unwrap().trace.push("int2".into());
    }
    fn irq_disable(&self) -> bool {
        true
    }
    unsafe fn irq_enable(&self) {}
    fn xgetbv0(&self) -> u64 {
        7
    }
    unsafe fn xsetbv0(&self, _value: u64) {}
    unsafe fn xsave(&self, _area: *mut u8, _mask: u64) {}
    unsafe fn xrstor(&self, _area: *const u8, _mask: u64) {}
    unsafe fn fxsave(&self, _area: *mut u8) {}
    unsafe fn fxrstor(&self, _area: *const u8) {}
    fn rdtsc(&self) -> u64 {
        1000
    }
}

fn cpuid(leaf: u32, _sub: u32) -> CpuidResult {
    match leaf {
        0 => CpuidResult {
            eax: 0xd,
            ebx: 0x756e_6547,
            ecx: 0x6c65_746e,
            edx: 0x4965_6e69,
        },
        1 => CpuidResult {
            eax: 0x50654,
            ecx: (1 << 5) | (1 << 26) | (1 << 27),
            ..Default::default()
        },
        0xd => CpuidResult {
            eax: 0xe7,
            ..Default::default()
        },
        0x8000_0000 => CpuidResult {
            eax: 0x8000_0008,
            ..Default::default()
        },
        // RDTSCP (so TSC_AUX exists and is switched).
        0x8000_0001 => CpuidResult {
            edx: 1 << 27,
            ..Default::default()
        },
        0x8000_0008 => CpuidResult {
            eax: 0x3027,
            ..Default::default()
        },
        _ => CpuidResult::default(),
    }
}

type B = VmxBackend<FakeHost, FakeVmx>;

fn backend(caps: &VmxCapMsrs) -> (&'static FakeHost, &'static B) {
    let host = FakeHost::leak();
    let b = Box::leak(Box::new(B::new(host, FakeVmx::new(caps), cpuid).unwrap()));
    (host, b)
}

fn setup() -> (
    &'static FakeHost,
    &'static B,
    VmxVm<FakeHost>,
    VmxVcpu<FakeHost>,
) {
    let (host, b) = backend(&BOCHS_SKYLAKE_X);
    let vm = b.vm_create().unwrap();
    let v = b.vcpu_create(&vm, 0).unwrap();
    b.hw().trace();
    (host, b, vm, v)
}

fn exit(reason: u64, qual: u64, len: u64) -> Script {
    Script {
        fields: vec![
            (ro::EXIT_REASON, reason),
            (ro::EXIT_QUALIFICATION, qual),
            (ro::VMEXIT_INSTRUCTION_LEN, len),
        ],
        ..Default::default()
    }
}

fn regs(b: &B, v: &mut VmxVcpu<FakeHost>) -> kvm_regs {
    let mut r = kvm_regs::new_zeroed();
    b.get_regs(v, &mut r);
    r
}

#[test]
fn vcpu_creation_initializes_the_vmcs_in_reset_state() {
    let (host, b) = backend(&BOCHS_SKYLAKE_X);
    let vm = b.vm_create().unwrap();
    let mut v = b.vcpu_create(&vm, 0).unwrap();
    let t = b.hw().trace();
    assert!(t[0].starts_with("vmxon "), "{t:?}");
    assert_eq!(&t[1..], ["vmclear", "vmptrld", "vmclear"]);
    assert_eq!(
        host.vmx_enables.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert!(
        b.hw().0.lock().unwrap().current.is_none(),
        "VMCS left current"
    );
    let pa = v.vmcs_pa();
    let f = |x| b.hw().field(pa, x);
    assert_eq!(f(guest::LINK_PTR_FULL), u64::MAX);
    assert_eq!(f(control::EPTP_FULL), vm.n_cr3);
    assert_eq!(vm.n_cr3 & 0x7f, 0x5e, "EPTP: WB, 4 levels, A/D");
    assert_eq!(f(control::PINBASED_EXEC_CONTROLS), 0x3f);
    assert_ne!(f(control::VPID), 0);
    assert_eq!(f(guest::CS_BASE), 0xffff_0000);
    assert_eq!(f(guest::CR0) & 0x20, 0x20, "CR0.NE forced");
    assert_eq!(f(control::CR0_READ_SHADOW), 0x6000_0010);
    let mut s = kvm_sregs::new_zeroed();
    b.get_sregs(&mut v, &mut s);
    assert_eq!(
        (s.cs.selector, s.cs.base, s.cr0),
        (0xf000, 0xffff_0000, 0x6000_0010)
    );
    assert_eq!(s.apic_base, 0xfee0_0900);
    let r = regs(b, &mut v);
    assert_eq!((r.rip, r.rflags, r.rdx), (0xfff0, 2, 0x50654));
    // A second vCPU: no second VMXON on the same CPU.
    let _v2 = b.vcpu_create(&vm, 1).unwrap();
    assert!(!b.hw().trace().iter().any(|x| x.starts_with("vmxon")));
}

#[test]
fn cpus_without_ept_or_unrestricted_guest_are_refused_at_vm_creation() {
    for m in [BOCHS_PENRYN, BOCHS_LYNNFIELD] {
        let (host, b) = backend(&m);
        assert_eq!(b.vm_create().err(), Some(ENODEV));
        let log = host.log.lock().unwrap().join("\n");
        assert!(log.contains("not implemented yet"), "{log}");
        let mut line = crate::ffi::LineBuf::new();
        crate::vmxb::describe(b, &mut line);
        assert!(
            line.as_str().contains("guests refused"),
            "{}",
            line.as_str()
        );
    }
    let (_, b) = backend(&BOCHS_SKYLAKE_X);
    let mut line = crate::ffi::LineBuf::new();
    crate::vmxb::describe(b, &mut line);
    assert!(
        line.as_str()
            .starts_with("okvm: core attached, backend vmx rev 0x2b +ept +ug +vpid"),
        "{}",
        line.as_str()
    );
}

#[test]
fn host_owned_vmx_is_never_turned_on_or_off_by_the_core() {
    let host = FakeHost::leak();
    host.vmx_host_owned
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let b = B::new(host, FakeVmx::new(&BOCHS_SKYLAKE_X), cpuid).unwrap();
    // The fake asserts VMX operation for VMCLEAR/VMPTRLD: the host's counts.
    b.hw().0.lock().unwrap().vmxon = true;
    let vm = b.vm_create().unwrap();
    let _v = b.vcpu_create(&vm, 0).unwrap();
    b.disable_this_cpu();
    let t = b.hw().trace();
    assert!(
        !t.iter().any(|x| x.starts_with("vmxon") || x == "vmxoff"),
        "{t:?}"
    );
    assert_eq!(
        host.vmx_disables.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[test]
fn detach_leaves_vmx_operation_it_entered() {
    let (host, b, _vm, _v) = setup();
    b.disable_this_cpu();
    assert_eq!(b.hw().trace(), ["vmxoff"]);
    assert_eq!(
        host.vmx_disables.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[test]
fn cpuid_hlt_and_pio_exits() {
    let (_h, b, vm, mut v) = setup();
    let mut r = regs(b, &mut v);
    r.rip = 0x1000;
    r.rax = 7;
    r.rcx = 1;
    r.rflags = 2;
    b.set_regs(&mut v, &r);
    // CPUID (reason 10), 2 bytes.
    b.hw().push(exit(10, 0, 2));
    assert_eq!(
        b.run(&vm, &mut v, &Open),
        Exit::Cpuid {
            leaf: 7,
            subleaf: 1
        }
    );
    let t = b.hw().trace();
    assert_eq!(t.first().map(String::as_str), Some("vmptrld"));
    assert_eq!(
        t.last().map(String::as_str),
        Some("vmclear"),
        "VMCS cleared after every run"
    );
    assert!(
        t.iter().any(|x| x.starts_with("invept SingleContext")),
        "first entry flushes: {t:?}"
    );
    let e = b.hw().last_entry();
    assert_eq!(e[&guest::RIP], 0x1000);
    assert_eq!(e[&host::RIP], vmx::switch::host_rip());
    assert_eq!(e[&host::TR_SELECTOR], 0x40);
    b.complete_cpuid(
        &mut v,
        CpuidResult {
            eax: 1,
            ebx: 2,
            ecx: 3,
            edx: 4,
        },
    );
    let r = regs(b, &mut v);
    assert_eq!((r.rip, r.rax, r.rbx, r.rcx, r.rdx), (0x1002, 1, 2, 3, 4));
    // The next entry runs with the completed registers and needs no flush; the host-state
    // area is not rewritten when nothing changed, and is when CR3 changed.
    b.hw().0.lock().unwrap().vmcs.get_mut(&v.vmcs_pa()).unwrap().remove(&host::CR3);
    b.hw().push(exit(12, 0, 1)); // HLT
    assert_eq!(b.run(&vm, &mut v, &Open), Exit::Hlt);
    assert!(!b.hw().trace().iter().any(|x| x.starts_with("invept")));
    assert_eq!(
        b.hw().0.lock().unwrap().entry_regs.last().unwrap().gpr[3],
        2
    );
    assert_eq!(regs(b, &mut v).rip, 0x1003);
    assert!(!b.hw().last_entry().contains_key(&host::CR3), "host state rewritten");
    // `out dx, al` to 0x3f8 with AL = 0x41, then `in al, 0x71` (immediate).
    let mut sc = exit(30, 0x03f8_0000, 1);
    sc.gprs = vec![(0, 0x1234_5641)];
    b.hw().push(sc);
    assert_eq!(
        b.run(&vm, &mut v, &Open),
        Exit::Io {
            port: 0x3f8,
            size: 1,
            out: true,
            data: 0x41
        }
    );
    b.complete_io(&mut v, IoCompletion::Write);
    assert_eq!(regs(b, &mut v).rip, 0x1004);
    b.hw().push(exit(30, 0x0071_0000 | 0x48, 2));
    assert_eq!(
        b.run(&vm, &mut v, &Open),
        Exit::Io {
            port: 0x71,
            size: 1,
            out: false,
            data: 0x41
        }
    );
    b.complete_io(
        &mut v,
        IoCompletion::PioIn {
            size: 1,
            value: 0x99,
        },
    );
    let r = regs(b, &mut v);
    assert_eq!((r.rip, r.rax), (0x1006, 0x1234_5699));
    // `OUT 0x7e` is past the instruction when userspace sees it (QEMU's vapic ROM).
    b.hw().push(exit(30, 0x007e_0000 | 0x40, 2));
    assert!(matches!(b.run(&vm, &mut v, &Open), Exit::Io { port: 0x7e, .. }));
    assert_eq!(regs(b, &mut v).rip, 0x1008);
    b.complete_io(&mut v, IoCompletion::Write);
    assert_eq!(regs(b, &mut v).rip, 0x1008);
    // Userspace moved RIP during an IN exit: the completion is dropped, RAX included.
    b.hw().push(exit(30, 0x0071_0000 | 0x48, 2));
    b.run(&vm, &mut v, &Open);
    let mut r = regs(b, &mut v);
    r.rip = 0x2000;
    b.set_regs(&mut v, &r);
    b.complete_io(&mut v, IoCompletion::PioIn { size: 1, value: 0x55 });
    let r2 = regs(b, &mut v);
    assert_eq!((r2.rip, r2.rax), (0x2000, r.rax));
    // Unchanged RIP written back by userspace: the completion still applies.
    b.hw().push(exit(30, 0x0071_0000 | 0x48, 2));
    b.run(&vm, &mut v, &Open);
    let r = regs(b, &mut v);
    b.set_regs(&mut v, &r);
    b.complete_io(&mut v, IoCompletion::PioIn { size: 1, value: 0x55 });
    let r2 = regs(b, &mut v);
    assert_eq!((r2.rip, r2.rax & 0xff), (0x2002, 0x55));
    let mut r = r2;
    r.rip = 0x1006;
    b.set_regs(&mut v, &r);
    // String I/O leaves RIP for the emulator.
    b.hw().push(exit(30, 0x03f8_0000 | 0x10 | 0x20, 2));
    assert_eq!(
        b.run(&vm, &mut v, &Open),
        Exit::IoString {
            port: 0x3f8,
            size: 1,
            out: true
        }
    );
    assert_eq!(regs(b, &mut v).rip, 0x1006);
}

#[test]
fn msr_exits_and_syscall_msrs_switched_around_the_entry() {
    let (_h, b, vm, mut v) = setup();
    b.set_msr(&mut v, 0xc000_0082, 0xffff_ffff_8100_0000, true)
        .unwrap(); // LSTAR
    assert_eq!(
        b.get_msr(&mut v, 0xc000_0082, true),
        Ok(0xffff_ffff_8100_0000)
    );
    b.set_msr(&mut v, 0x174, 0x10, true).unwrap(); // SYSENTER_CS into the VMCS
    assert_eq!(b.hw().field(v.vmcs_pa(), guest::IA32_SYSENTER_CS), 0x10);
    assert_eq!(b.get_msr(&mut v, 0x174, true), Ok(0x10));
    // Machine-check MSRs are the core's (msrs::Mce), never the backend's; MTRRcap comes from
    // the shared in-memory store.
    assert!(b.get_msr(&mut v, 0x17a, true).is_err());
    assert_eq!(b.get_msr(&mut v, 0xfe, false), Ok(0x508));
    assert!(b.set_msr(&mut v, 0xfe, 0, false).is_err(), "MTRRcap is read-only");
    b.hw().0.lock().unwrap().msrs.insert(0xc000_0082, 0xaaaa);
    let mut sc = exit(31, 0, 2); // RDMSR of ECX
    sc.gprs = vec![(1, 0xc000_0082)];
    b.hw().push(sc);
    assert_eq!(b.run(&vm, &mut v, &Open), Exit::Rdmsr { index: 0xc000_0082 });
    assert_eq!(
        b.hw().rdmsr(0xc000_0082),
        0xaaaa,
        "host LSTAR restored after the exit"
    );
    b.complete_rdmsr(&mut v, Some(0x1_0000_0002));
    let r = regs(b, &mut v);
    assert_eq!((r.rax, r.rdx, r.rip), (2, 1, 0xfff2));
    let mut sc = exit(32, 0, 2); // WRMSR refused: #GP injected, RIP unchanged
    sc.gprs = vec![(1, 0x1234), (0, 5), (2, 0)];
    b.hw().push(sc);
    assert_eq!(
        b.run(&vm, &mut v, &Open),
        Exit::Wrmsr {
            index: 0x1234,
            data: 5
        }
    );
    b.complete_wrmsr(&mut v, false);
    assert_eq!(regs(b, &mut v).rip, 0xfff2);
    b.hw().push(exit(12, 0, 1));
    b.run(&vm, &mut v, &Open);
    let e = b.hw().last_entry();
    assert_eq!(
        e[&control::VMENTRY_INTERRUPTION_INFO_FIELD],
        0x8000_0b0d,
        "#GP with error code"
    );
    assert_eq!(e[&control::VMENTRY_EXCEPTION_ERR_CODE], 0);
}

const TSC_AUX: u32 = 0xc000_0103;

#[test]
fn tsc_aux_is_the_guests_inside_and_the_hosts_outside() {
    let (_h, b, vm, mut v) = setup();
    b.hw().0.lock().unwrap().msrs.insert(TSC_AUX, 3); // the host's CPU number
    b.set_msr(&mut v, TSC_AUX, 7, true).unwrap();
    b.hw().push(exit(12, 0, 1));
    assert_eq!(b.run(&vm, &mut v, &Open), Exit::Hlt);
    assert_eq!(b.hw().last_entry()[&TSC_AUX], 7, "RDTSCP in the guest reads its own");
    assert_eq!(b.hw().rdmsr(TSC_AUX), 3, "the host's value is back after the exit");
    // Equal values: nothing is written (the snapshot still shows the right value).
    b.set_msr(&mut v, TSC_AUX, 3, true).unwrap();
    b.hw().push(exit(12, 0, 1));
    assert_eq!(b.run(&vm, &mut v, &Open), Exit::Hlt);
    assert_eq!(b.hw().last_entry()[&TSC_AUX], 3);
}

#[test]
fn ept_violation_reinjects_the_interrupted_event() {
    let (_h, b, vm, mut v) = setup();
    let mut sc = exit(48, 0x2 | 0x80 | 0x100, 0);
    sc.fields.push((ro::GUEST_PHYSICAL_ADDR_FULL, 0xfee0_0010));
    sc.fields.push((ro::IDT_VECTORING_INFO, 0x8000_0030));
    b.hw().push(sc);
    assert_eq!(
        b.run(&vm, &mut v, &Open),
        Exit::PageFault {
            gpa: 0xfee0_0010,
            write: true,
            fetch: false
        }
    );
    let mut ev = kvm_vcpu_events::new_zeroed();
    b.get_events(&mut v, &mut ev);
    assert_eq!((ev.interrupt.injected, ev.interrupt.nr), (1, 0x30));
    assert_eq!(
        regs(b, &mut v).rip,
        0xfff0,
        "RIP stays at the faulting instruction"
    );
    b.hw().push(exit(12, 0, 1));
    b.run(&vm, &mut v, &Open);
    assert_eq!(
        b.hw().last_entry()[&control::VMENTRY_INTERRUPTION_INFO_FIELD],
        0x8000_0030
    );
    // EPT misconfiguration: internal error.
    b.hw().push(exit(49, 0, 0));
    assert_eq!(
        b.run(&vm, &mut v, &Open),
        Exit::Internal {
            suberror: kvm_abi::KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON
        }
    );
}

#[test]
fn interrupts_wait_for_the_window() {
    let (_h, b, vm, mut v) = setup();
    b.queue_interrupt(&mut v, 0x20);
    assert!(b.interrupt_queued(&mut v));
    // IF = 0: not injected, interrupt-window exiting on.
    b.hw().push(exit(7, 0, 0));
    assert_eq!(b.run(&vm, &mut v, &Open), Exit::Continue);
    let e = b.hw().last_entry();
    assert_eq!(e[&control::VMENTRY_INTERRUPTION_INFO_FIELD], 0);
    assert_ne!(e[&control::PRIMARY_PROCBASED_EXEC_CONTROLS] & (1 << 2), 0);
    let mut r = regs(b, &mut v);
    r.rflags = 0x202;
    b.set_regs(&mut v, &r);
    b.hw().push(exit(12, 0, 1));
    b.run(&vm, &mut v, &Open);
    let e = b.hw().last_entry();
    assert_eq!(e[&control::VMENTRY_INTERRUPTION_INFO_FIELD], 0x8000_0020);
    assert_eq!(e[&control::PRIMARY_PROCBASED_EXEC_CONTROLS] & (1 << 2), 0);
    assert!(!b.interrupt_queued(&mut v));
    // Userspace's window request comes back as IrqWindow.
    b.set_irq_window(&mut v, true);
    b.hw().push(exit(7, 0, 0));
    assert_eq!(b.run(&vm, &mut v, &Open), Exit::IrqWindow);
    // A host NMI exit goes to the host's handler.
    let mut sc = exit(0, 0, 0);
    sc.fields.push((ro::VMEXIT_INTERRUPTION_INFO, 0x8000_0202));
    b.hw().push(sc);
    assert_eq!(b.run(&vm, &mut v, &Open), Exit::Continue);
    assert!(b.hw().trace().contains(&"int2".to_string()));
}

/// An entry gate that always lets the vCPU in.
struct Open;

impl EntryGate for Open {
    fn enter(&self, _cpu: u32) -> bool {
        false
    }
}

/// An entry gate that keeps the vCPU out and records the CPU it was given.
struct Closed(std::cell::Cell<Option<u32>>);

impl EntryGate for Closed {
    fn enter(&self, cpu: u32) -> bool {
        self.0.set(Some(cpu));
        true
    }
}

#[test]
fn a_closed_entry_gate_keeps_the_vcpu_out_and_the_event_queued() {
    let (_h, b, vm, mut v) = setup();
    let mut r = regs(b, &mut v);
    r.rflags = 0x202;
    b.set_regs(&mut v, &r);
    b.queue_interrupt(&mut v, 0x30);
    let gate = Closed(std::cell::Cell::new(None));
    let before = b.hw().trace().len();
    assert_eq!(b.run(&vm, &mut v, &gate), Exit::Continue);
    assert!(gate.0.get().is_some(), "the gate saw the CPU");
    assert_eq!(
        b.hw().trace().len(),
        before,
        "no VMPTRLD, no entry: {:?}",
        b.hw().trace()
    );
    // The next open entry injects the interrupt that waited.
    b.hw().push(exit(12, 0, 1));
    assert_eq!(b.run(&vm, &mut v, &Open), Exit::Hlt);
    let e = b.hw().last_entry();
    assert_eq!(e[&control::VMENTRY_INTERRUPTION_INFO_FIELD], 0x8000_0030);
}

#[test]
fn cr0_write_enters_long_mode() {
    let (_h, b, vm, mut v) = setup();
    let mut s = kvm_sregs::new_zeroed();
    b.get_sregs(&mut v, &mut s);
    s.cr0 = 0x11;
    s.cr4 = 0x20;
    s.efer = 0x100;
    b.set_sregs(&mut v, &s).unwrap();
    let mut sc = exit(28, 0, 3); // MOV CR0, RAX
    sc.gprs = vec![(0, 0x8000_0011)];
    b.hw().push(sc);
    assert_eq!(b.run(&vm, &mut v, &Open), Exit::Continue);
    b.get_sregs(&mut v, &mut s);
    assert_eq!((s.cr0, s.efer), (0x8000_0011, 0x500));
    assert_ne!(
        b.hw().field(v.vmcs_pa(), control::VMENTRY_CONTROLS) & (1 << 9),
        0
    );
    // The emulated MOV to CR0 flushes the guest's translations at the next entry.
    b.hw().trace();
    b.hw().push(exit(12, 0, 1));
    b.run(&vm, &mut v, &Open);
    let t = b.hw().trace();
    assert!(t.iter().any(|x| x.starts_with("invvpid SingleContext")), "{t:?}");
    // CR4.VMXE from the guest: #GP, no skip.
    let rip = regs(b, &mut v).rip;
    let mut sc = exit(28, 4, 3); // MOV CR4, RAX
    sc.gprs = vec![(0, 0x2020)];
    b.hw().push(sc);
    b.run(&vm, &mut v, &Open);
    assert_eq!(regs(b, &mut v).rip, rip);
    let mut ev = kvm_vcpu_events::new_zeroed();
    b.get_events(&mut v, &mut ev);
    assert_eq!((ev.exception.injected, ev.exception.nr), (1, 13));
    // PAE paging outside long mode is refused by KVM_SET_SREGS.
    s.efer = 0;
    s.cr0 = 0x8000_0011;
    assert!(b.set_sregs(&mut v, &s).is_err());
}

#[test]
fn entry_failures_report_the_hardware_reason() {
    let (_h, b, vm, mut v) = setup();
    b.hw().push(exit(0x8000_0021, 0, 0));
    assert_eq!(
        b.run(&vm, &mut v, &Open),
        Exit::FailEntry {
            reason: 0x8000_0021
        }
    );
    b.hw().push(Script {
        fail_valid: Some(7),
        ..Default::default()
    });
    assert_eq!(b.run(&vm, &mut v, &Open), Exit::FailEntry { reason: 7 });
    b.hw().push(exit(2, 0, 0));
    assert_eq!(b.run(&vm, &mut v, &Open), Exit::Shutdown);
}

#[test]
fn xsetbv_within_the_guest_cpuid() {
    let (_h, b, vm, mut v) = setup();
    let mut e: kvm_abi::kvm_cpuid_entry2 = FromZeros::new_zeroed();
    e.function = 0xd;
    e.eax = 7;
    b.cpuid_changed(&mut v, &[e]);
    let mut sc = exit(55, 0, 3);
    sc.gprs = vec![(0, 7), (1, 0), (2, 0)];
    b.hw().push(sc);
    assert_eq!(b.run(&vm, &mut v, &Open), Exit::Continue);
    let mut x: kvm_abi::kvm_xcrs = FromZeros::new_zeroed();
    b.get_xcrs(&mut v, &mut x);
    assert_eq!(x.xcrs[0].value, 7);
    assert_eq!(regs(b, &mut v).rip, 0xfff3);
    // XCR0 without x87, or beyond the guest CPUID: #GP.
    let mut sc = exit(55, 0, 3);
    sc.gprs = vec![(0, 6)];
    b.hw().push(sc);
    b.run(&vm, &mut v, &Open);
    let mut ev = kvm_vcpu_events::new_zeroed();
    b.get_events(&mut v, &mut ev);
    assert_eq!((ev.exception.injected, ev.exception.nr), (1, 13));
}

#[test]
fn guest_cpuid_offers_only_the_host_xcr0_components() {
    let (_h, b) = backend(&BOCHS_SKYLAKE_X);
    // The fake host runs with XCR0 = 7 (x87, SSE, AVX) on a CPU that supports 0xe7.
    assert_eq!(b.host_cpuid(0xd, 0).eax, 7);
    assert_ne!(b.host_cpuid(1, 0).ecx & (1 << 26), 0, "XSAVE stays");
}

#[test]
fn single_step_over_instructions_the_backend_skips() {
    let (_h, b, vm, mut v) = setup();
    let mut r = regs(b, &mut v);
    r.rflags |= 1 << 8; // TF
    b.set_regs(&mut v, &r);
    b.hw().push(exit(54, 0, 2)); // WBINVD, skipped by the backend
    assert_eq!(b.run(&vm, &mut v, &Open), Exit::Continue);
    assert_eq!(regs(b, &mut v).rip, 0xfff2);
    let mut ev = kvm_vcpu_events::new_zeroed();
    b.get_events(&mut v, &mut ev);
    assert_eq!(
        (
            ev.exception.injected,
            ev.exception.nr,
            ev.exception.has_error_code
        ),
        (1, 1, 0),
        "single-step #DB"
    );
    let mut d = kvm_abi::kvm_debugregs::new_zeroed();
    b.get_debugregs(&mut v, &mut d);
    assert_eq!(d.dr6, 0xffff_4ff0, "DR6.BS");
    // HLT: the #DB rides along with the HLT exit; it goes in at the next entry.
    b.hw().push(exit(12, 0, 1));
    assert_eq!(b.run(&vm, &mut v, &Open), Exit::Hlt);
    assert_eq!(
        b.hw().last_entry()[&control::VMENTRY_INTERRUPTION_INFO_FIELD],
        0x8000_0301,
        "the WBINVD's #DB injected as a hardware exception"
    );
    b.get_events(&mut v, &mut ev);
    assert_eq!(
        (ev.exception.injected, ev.exception.nr),
        (1, 1),
        "HLT's #DB"
    );
    // Without TF nothing is added.
    let mut r = regs(b, &mut v);
    r.rflags &= !(1 << 8);
    b.set_regs(&mut v, &r);
    b.hw().push(exit(54, 0, 2));
    assert_eq!(b.run(&vm, &mut v, &Open), Exit::Continue);
    let mut ev = kvm_vcpu_events::new_zeroed();
    b.get_events(&mut v, &mut ev);
    assert_eq!(ev.exception.injected, 0);
}

/// CPUID of the Bochs `corei7_skylake_x` L1 as okvm found it under Debian's 6.1 kernel: the CPU
/// has XSAVE (leaf 1 ECX bit 26, leaf 0xD EAX 0xe7) but the kernel runs with XSAVE disabled
/// (OSXSAVE, bit 27, clear), so there is no host XCR0 to switch from.
fn bochs_l1_cpuid(leaf: u32, sub: u32) -> CpuidResult {
    match leaf {
        1 => CpuidResult {
            eax: 0x50654,
            ecx: 0x77fa_f3bf,
            ..Default::default()
        },
        _ => cpuid(leaf, sub),
    }
}

/// What QEMU does with XCR0 from `kvm_arch_init` to the first `KVM_RUN` (target/i386/kvm/kvm.c:
/// `has_xcrs` from `KVM_CAP_XCRS`, `kvm_put_xcrs` with the reset XCR0 = x87 only when it is
/// set, and QEMU ≥ 9 stops on a failure: "Putting registers after init: Failed to set XCRs"),
/// plus Linux's answers to the XCR ioctls. Returns `has_xcrs`.
fn qemu_xcr_replay(cpuid_fn: fn(u32, u32) -> CpuidResult) -> bool {
    use crate::errno::EINVAL;
    use crate::fake::vmm::Vmm;
    use kvm_abi::{kvm_xcrs, KVM_CAP_XCRS, KVM_CAP_XSAVE, KVM_CHECK_EXTENSION};
    use kvm_abi::{KVM_GET_XCRS, KVM_SET_XCRS};
    let host = FakeHost::leak();
    let b = B::new(host, FakeVmx::new(&BOCHS_SKYLAKE_X), cpuid_fn).unwrap();
    let v = Vmm::with_backend(host, b);
    let has_xcrs = v.ioctl(v.kvm, KVM_CHECK_EXTENSION, u64::from(KVM_CAP_XCRS));
    assert_eq!(v.ioctl(v.kvm, KVM_CHECK_EXTENSION, u64::from(KVM_CAP_XSAVE)), 1);
    let vm = v.create_vm();
    assert_eq!(
        v.ioctl_fd(vm, KVM_CHECK_EXTENSION, u64::from(KVM_CAP_XCRS)),
        has_xcrs,
        "the VM descriptor answers as /dev/kvm"
    );
    let cpu = v.create_vcpu(vm, 0);
    let mut x: kvm_xcrs = FromZeros::new_zeroed();
    x.nr_xcrs = 1;
    x.xcrs[0].value = 1; // QEMU's reset XCR0
    let set = v.ioctl_fd(cpu, KVM_SET_XCRS, v.put(&x));
    let out = v.buf(std::mem::size_of::<kvm_xcrs>());
    assert_eq!(v.ioctl_fd(cpu, KVM_GET_XCRS, out), 0);
    let got: kvm_xcrs = v.get(out);
    if has_xcrs != 0 {
        assert_eq!(set, 0, "kvm_put_xcrs must succeed when KVM_CAP_XCRS is offered");
        assert_eq!((got.nr_xcrs, got.xcrs[0].value), (1, 1));
    } else {
        // Linux without host XSAVE: KVM_SET_XCRS is EINVAL, KVM_GET_XCRS reports none.
        assert_eq!(set, -i64::from(EINVAL.0));
        assert_eq!(got.nr_xcrs, 0);
    }
    has_xcrs != 0
}

#[test]
fn xcrs_are_not_offered_when_the_host_runs_without_xsave() {
    // The Bochs L1: QEMU 10 stopped at KVM_SET_XCRS (EINVAL) because KVM_CAP_XCRS said 1.
    assert!(!qemu_xcr_replay(bochs_l1_cpuid), "KVM_CAP_XCRS must be 0 (Linux)");
    // A host with XSAVE enabled (XCR0 = x87|SSE|AVX): offered, and QEMU's XCR0 accepted.
    assert!(qemu_xcr_replay(cpuid));
}
