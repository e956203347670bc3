//! Machine checks (`KVM_CAP_MCE`): the ioctls' errno, the MSR rules for userspace and guest,
//! and Linux's injection rules (#MC, overflow, disabled reporting, shutdown).

use kvm_abi::*;
use zerocopy::IntoBytes;

use crate::backend::Exit;
use crate::errno::*;
use crate::fake::host::FakeHost;
use crate::fake::vmm::{zeroed, Vmm};
use crate::msrs::*;
use crate::soft::SoftBackend;
use crate::vcpu::Vcpu;

fn e(x: Errno) -> i64 {
    -i64::from(x.0)
}

struct Fix {
    v: Vmm,
    vm: i64,
    cpu: i64,
}

impl Fix {
    fn new() -> Self {
        let v = Vmm::new();
        let vm = v.create_vm();
        let cpu = v.create_vcpu(vm, 0);
        Fix { v, vm, cpu }
    }
    fn setup(&self, cap: u64) -> i64 {
        let a = self.v.put(&cap);
        self.v.ioctl_fd(self.cpu, KVM_X86_SETUP_MCE, a)
    }
    /// `KVM_GET_MSRS` of one MSR: `Some(value)` when it was read.
    fn get(&self, index: u32) -> Option<u64> {
        let a = self.v.put(&[1u32, 0, index, 0, 0, 0]);
        match self.v.ioctl_fd(self.cpu, KVM_GET_MSRS, a) {
            1 => Some(u64::from_le_bytes(
                self.v.host.user_read(a + 16, 8).try_into().unwrap(),
            )),
            0 => None,
            r => panic!("KVM_GET_MSRS {r}"),
        }
    }
    /// `KVM_SET_MSRS` of one MSR: whether it was taken.
    fn set(&self, index: u32, data: u64) -> bool {
        let mut b = [1u32, 0, index, 0].as_bytes().to_vec();
        b.extend(data.to_le_bytes());
        let a = self.v.buf(b.len());
        self.v.host.user_write(a, &b);
        match self.v.ioctl_fd(self.cpu, KVM_SET_MSRS, a) {
            r @ (0 | 1) => r == 1,
            r => panic!("KVM_SET_MSRS {r}"),
        }
    }
    fn set_mce(&self, bank: u8, status: u64, addr: u64, misc: u64, mcg_status: u64) -> i64 {
        let mut m: kvm_x86_mce = zeroed();
        (m.bank, m.status, m.addr, m.misc, m.mcg_status) = (bank, status, addr, misc, mcg_status);
        let a = self.v.put(&m);
        self.v.ioctl_fd(self.cpu, KVM_X86_SET_MCE, a)
    }
    fn cr4_mce(&self, on: bool) {
        let a = self.v.buf(size_of::<kvm_sregs>());
        assert_eq!(self.v.ioctl_fd(self.cpu, KVM_GET_SREGS, a), 0);
        let mut s: kvm_sregs = self.v.get(a);
        s.cr4 = if on {
            s.cr4 | (1 << 6)
        } else {
            s.cr4 & !(1 << 6)
        };
        let a = self.v.put(&s);
        assert_eq!(self.v.ioctl_fd(self.cpu, KVM_SET_SREGS, a), 0);
    }
    fn events(&self) -> kvm_vcpu_events {
        let a = self.v.buf(size_of::<kvm_vcpu_events>());
        assert_eq!(self.v.ioctl_fd(self.cpu, KVM_GET_VCPU_EVENTS, a), 0);
        self.v.get(a)
    }
    fn run(&self) -> (i64, u32) {
        let r = self.v.ioctl_fd(self.cpu, KVM_RUN, 0);
        // SAFETY: the run page lives as long as the vCPU; no concurrent run.
        (r, unsafe { (*self.v.run_page(self.cpu)).exit_reason })
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

const QEMU_CAP: u64 = MCG_CTL_P | MCG_SER_P | 10;
const BANK_STATUS: fn(u32) -> u32 = |b| MSR_IA32_MC0_CTL + 4 * b + 1;

#[test]
fn capability_and_supported_bits() {
    let f = Fix::new();
    for h in [f.v.kvm, f.v.h(f.vm)] {
        assert_eq!(
            f.v.ioctl(h, KVM_CHECK_EXTENSION, u64::from(KVM_CAP_MCE)),
            32,
            "KVM_MAX_MCE_BANKS"
        );
    }
    let a = f.v.put(&0u64);
    assert_eq!(f.v.ioctl(f.v.kvm, KVM_X86_GET_MCE_CAP_SUPPORTED, a), 0);
    assert_eq!(f.v.get::<u64>(a), MCG_CTL_P | MCG_SER_P);
    assert_eq!(
        f.v.ioctl(f.v.kvm, KVM_X86_GET_MCE_CAP_SUPPORTED, 0x10),
        e(EFAULT)
    );
    let ro = f.v.host.user_alloc(8, false);
    assert_eq!(
        f.v.ioctl(f.v.kvm, KVM_X86_GET_MCE_CAP_SUPPORTED, ro),
        e(EFAULT)
    );
    // A VM or vCPU descriptor does not answer the system ioctl.
    assert!(f.v.ioctl_fd(f.vm, KVM_X86_GET_MCE_CAP_SUPPORTED, a) < 0);
    assert_eq!(
        f.v.ioctl_fd(f.cpu, KVM_X86_GET_MCE_CAP_SUPPORTED, a),
        e(EINVAL)
    );
    // KVM_GET_MSR_INDEX_LIST carries MCG_STATUS and MCG_CTL (not MCG_CAP or the banks).
    let full = f.v.buf(4 + 4 * 64);
    f.v.host.user_write(full, &64u32.to_le_bytes());
    assert_eq!(f.v.ioctl(f.v.kvm, KVM_GET_MSR_INDEX_LIST, full), 0);
    let n = f.v.get::<u32>(full) as usize;
    let list: Vec<u32> =
        f.v.host
            .user_read(full + 4, 4 * n)
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
    assert!(list.contains(&MSR_IA32_MCG_STATUS) && list.contains(&MSR_IA32_MCG_CTL));
    assert!(!list.contains(&MSR_IA32_MCG_CAP) && !list.contains(&MSR_IA32_MC0_CTL));
    f.done();
}

#[test]
fn setup_mce_errno_table() {
    let f = Fix::new();
    let cases: [(&str, u64, i64); 9] = [
        ("no banks", MCG_CTL_P, e(EINVAL)),
        ("33 banks", 33, e(EINVAL)),
        ("255 banks", 0xff, e(EINVAL)),
        ("CMCI not offered", MCG_CMCI_P | 2, e(EINVAL)),
        ("LMCE not offered", MCG_LMCE_P | 2, e(EINVAL)),
        ("unknown bit", (1 << 40) | 2, e(EINVAL)),
        ("ext count bits pass (Linux)", 0x00ff_0000 | 2, 0),
        ("32 banks", 32, 0),
        ("QEMU's default", QEMU_CAP, 0),
    ];
    for (what, cap, want) in cases {
        assert_eq!(f.setup(cap), want, "{what}");
    }
    assert_eq!(
        f.get(MSR_IA32_MCG_CAP),
        Some(QEMU_CAP),
        "last good one kept"
    );
    assert_eq!(
        f.v.ioctl_fd(f.cpu, KVM_X86_SETUP_MCE, 0x10),
        e(EFAULT),
        "bad pointer"
    );
    // A wrong size in the command word is another (unknown) command.
    let wrong = (KVM_X86_SETUP_MCE & !(0x3fff << 16)) | (4 << 16);
    assert_eq!(f.v.ioctl_fd(f.cpu, wrong, f.v.put(&2u64)), e(EINVAL));
    let wrong = (KVM_X86_SET_MCE & !(0x3fff << 16)) | (32 << 16);
    assert_eq!(f.v.ioctl_fd(f.cpu, wrong, f.v.buf(64)), e(EINVAL));
    f.done();
}

#[test]
fn msrs_before_and_after_setup() {
    let f = Fix::new();
    // Linux's state at vCPU creation: 32 banks, no MCG_CTL_P, all zero.
    assert_eq!(f.get(MSR_IA32_MCG_CAP), Some(32));
    assert_eq!(f.get(MSR_IA32_MCG_CTL), Some(0), "userspace may read it");
    assert!(!f.set(MSR_IA32_MCG_CTL, !0), "not without MCG_CTL_P");
    assert!(f.set(MSR_IA32_MCG_CTL, 0), "userspace may restore 0");
    assert_eq!(f.get(MSR_IA32_MC0_CTL + 4 * 31 + 3), Some(0));
    assert_eq!(f.get(MSR_IA32_P5_MC_ADDR), Some(0));
    assert!(!f.set(MSR_IA32_P5_MC_TYPE, 0), "read-only");
    assert_eq!(f.setup(MCG_CTL_P | 2), 0);
    assert_eq!(f.get(MSR_IA32_MCG_CTL), Some(!0), "all ones after setup");
    assert_eq!(f.get(MSR_IA32_MC0_CTL), Some(!0));
    assert_eq!(f.get(MSR_IA32_MC0_CTL + 4), Some(!0));
    assert_eq!(f.get(MSR_IA32_MC0_CTL + 8), None, "bank 2 of 2");
    assert_eq!(f.get(MSR_IA32_MC0_CTL + 4 * 32), None, "past every bank");
    assert!(!f.set(MSR_IA32_MCG_CAP, 2), "MCG_CAP is read-only");
    for (what, index, data, ok) in [
        ("MCG_STATUS any", MSR_IA32_MCG_STATUS, 0x5, true),
        ("MCG_CTL all ones", MSR_IA32_MCG_CTL, !0, true),
        ("MCG_CTL other", MSR_IA32_MCG_CTL, 1, false),
        ("MC0_CTL 0", MSR_IA32_MC0_CTL, 0, true),
        ("MC0_CTL bit 10 clear", MSR_IA32_MC0_CTL, !(1 << 10), true),
        (
            "MC0_CTL bits 10+0 clear",
            MSR_IA32_MC0_CTL,
            !(1 << 10) & !1,
            true,
        ),
        ("MC0_CTL other", MSR_IA32_MC0_CTL, 0x1234, false),
        (
            "MC1_STATUS from userspace",
            BANK_STATUS(1),
            MCI_STATUS_VAL | 7,
            true,
        ),
        ("MC1_ADDR", MSR_IA32_MC0_CTL + 6, 0xdead_0000, true),
        ("MC1_MISC", MSR_IA32_MC0_CTL + 7, 0x86, true),
        ("MC0_CTL2 0", MSR_IA32_MC0_CTL2, 0, true),
        ("MC0_CTL2 without CMCI", MSR_IA32_MC0_CTL2, 1 << 30, false),
        ("MC2_CTL2 past the banks", MSR_IA32_MC0_CTL2 + 2, 0, false),
        ("MC2_CTL past the banks", MSR_IA32_MC0_CTL + 8, 0, false),
    ] {
        assert_eq!(f.set(index, data), ok, "{what}");
        if ok {
            assert_eq!(f.get(index), Some(data), "{what} round trip");
        }
    }
    assert_eq!(f.get(MSR_IA32_MC0_CTL2), Some(0));
    assert_eq!(f.get(MSR_IA32_MC0_CTL2 + 2), None);
    f.done();
}

#[test]
fn guest_rdmsr_wrmsr_rules() {
    let f = Fix::new();
    assert_eq!(f.setup(2), 0, "no MCG_CTL_P");
    let gp = |f: &Fix| f.soft(|s| (s.exceptions, s.last_exception.nr));
    // RDMSR MCG_CTL without MCG_CTL_P: #GP (userspace could read it).
    f.v.script(
        0,
        &[
            (
                Exit::Rdmsr {
                    index: MSR_IA32_MCG_CTL,
                },
                2,
            ),
            (
                Exit::Rdmsr {
                    index: MSR_IA32_MCG_CAP,
                },
                2,
            ),
            (
                Exit::Wrmsr {
                    index: BANK_STATUS(0),
                    data: 1,
                },
                2,
            ),
            (
                Exit::Wrmsr {
                    index: BANK_STATUS(0),
                    data: 0,
                },
                2,
            ),
            (
                Exit::Rdmsr {
                    index: MSR_IA32_MC0_CTL2,
                },
                2,
            ),
        ],
    );
    let rip0 = f.v.regs(f.cpu).rip;
    assert_eq!(f.run().1, KVM_EXIT_FAIL_ENTRY, "script played out");
    // #GP for MCG_CTL, MCG_CAP read (rax = 2), #GP for the non-zero STATUS write, the zero
    // write taken, #GP for CTL2 without CMCI.
    assert_eq!(gp(&f), (3, 13));
    assert_eq!(f.v.regs(f.cpu).rip, rip0 + 4, "two of five retired");
    assert_eq!(f.v.regs(f.cpu).rax, 2, "MCG_CAP");
    f.done();
}

#[test]
fn uncorrected_error_raises_mc_and_a_second_one_shuts_down() {
    let f = Fix::new();
    assert_eq!(f.setup(QEMU_CAP), 0);
    f.cr4_mce(true);
    let uc = MCI_STATUS_VAL | MCI_STATUS_UC | MCI_STATUS_PCC | 0x134;
    let mcg = MCG_STATUS_MCIP | 1; // MCIP | RIPV
    assert_eq!(f.set_mce(9, uc, 0x1000, 0x86, mcg), 0);
    let ev = f.events();
    assert_eq!(
        (ev.exception.injected, ev.exception.nr),
        (1, 18),
        "#MC queued"
    );
    assert_eq!(ev.exception.has_error_code, 0);
    assert_eq!(f.get(BANK_STATUS(9)), Some(uc));
    assert_eq!(f.get(BANK_STATUS(9) + 1), Some(0x1000));
    assert_eq!(f.get(BANK_STATUS(9) + 2), Some(0x86));
    assert_eq!(f.get(MSR_IA32_MCG_STATUS), Some(mcg));
    // Delivered at the next entry.
    assert_eq!(f.run().1, KVM_EXIT_FAIL_ENTRY);
    assert_eq!(f.soft(|s| (s.exceptions, s.last_exception.nr)), (1, 18));
    // MCIP still set (the handler has not cleared it): the next one is a shutdown.
    assert_eq!(f.set_mce(3, uc, 0, 0, mcg), 0);
    assert_eq!(f.get(BANK_STATUS(3)), Some(0), "not logged");
    assert_eq!(f.events().exception.injected, 0);
    // immediate_exit wins over the pending shutdown, which stays for the next run.
    // SAFETY: live run page.
    unsafe { (*f.v.run_page(f.cpu)).immediate_exit = 1 };
    assert_eq!(f.run().0, e(EINTR));
    // SAFETY: as above.
    unsafe { (*f.v.run_page(f.cpu)).immediate_exit = 0 };
    assert_eq!(f.run(), (0, KVM_EXIT_SHUTDOWN));
    assert_eq!(f.run().1, KVM_EXIT_FAIL_ENTRY, "reported once");
    f.done();
}

#[test]
fn injection_rules() {
    let f = Fix::new();
    assert_eq!(f.setup(QEMU_CAP), 0);
    let uc = MCI_STATUS_VAL | MCI_STATUS_UC | MCI_STATUS_PCC;
    let ce = MCI_STATUS_VAL | 0x11;
    let mcg = MCG_STATUS_MCIP;
    // errno: bank past the count, status without VAL, bad pointer.
    assert_eq!(f.set_mce(10, uc, 0, 0, mcg), e(EINVAL));
    assert_eq!(f.set_mce(255, uc, 0, 0, mcg), e(EINVAL));
    assert_eq!(f.set_mce(0, MCI_STATUS_UC, 0, 0, mcg), e(EINVAL));
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_X86_SET_MCE, 0x10), e(EFAULT));
    // Corrected errors: logged, a second one overflows; no exception.
    assert_eq!(f.set_mce(1, ce, 0xa, 0xb, 0), 0);
    assert_eq!(f.get(BANK_STATUS(1)), Some(ce));
    assert_eq!(f.set_mce(1, ce | 1, 0xc, 0xd, 0), 0);
    assert_eq!(f.get(BANK_STATUS(1)), Some(ce | 1 | MCI_STATUS_OVER));
    assert_eq!(f.get(BANK_STATUS(1) + 1), Some(0xc));
    assert_eq!(f.events().exception.injected, 0);
    // UCNA (uncorrected, no action, MCG_STATUS 0): logged, no #MC (no CMCI offered).
    let ucna = MCI_STATUS_VAL | MCI_STATUS_UC | 0x5;
    assert_eq!(f.set_mce(2, ucna, 0x77, 0, 0), 0);
    assert_eq!(f.get(BANK_STATUS(2)), Some(ucna));
    assert_eq!(f.events().exception.injected, 0);
    // A corrected error does not replace an uncorrected one: only OVER is added.
    assert_eq!(f.set_mce(2, ce, 0x99, 0, 0), 0);
    assert_eq!(f.get(BANK_STATUS(2)), Some(ucna | MCI_STATUS_OVER));
    assert_eq!(f.get(BANK_STATUS(2) + 1), Some(0x77));
    // Uncorrected reporting disabled by MCG_CTL or the bank's CTL: dropped silently.
    assert!(f.set(MSR_IA32_MCG_CTL, 0));
    assert_eq!(f.set_mce(4, uc, 0, 0, mcg), 0);
    assert!(f.set(MSR_IA32_MCG_CTL, !0));
    assert!(f.set(MSR_IA32_MC0_CTL + 16, 0));
    assert_eq!(f.set_mce(4, uc, 0, 0, mcg), 0);
    assert_eq!(f.get(BANK_STATUS(4)), Some(0));
    assert_eq!(f.get(MSR_IA32_MCG_STATUS), Some(0));
    assert_eq!(f.events().exception.injected, 0);
    // CR4.MCE clear: an uncorrected error shuts the vCPU down.
    f.cr4_mce(false);
    assert_eq!(f.set_mce(5, uc, 0, 0, mcg), 0);
    assert_eq!(f.run(), (0, KVM_EXIT_SHUTDOWN));
    // With CR4.MCE and a bank already holding an error: #MC, status overflows.
    f.cr4_mce(true);
    assert_eq!(f.set_mce(1, uc, 0x2000, 0, mcg), 0);
    assert_eq!(f.get(BANK_STATUS(1)), Some(uc | MCI_STATUS_OVER));
    assert_eq!(f.events().exception.nr, 18);
    f.done();
}

#[test]
fn mc_waits_for_a_queued_interrupt() {
    let f = Fix::new();
    assert_eq!(f.setup(QEMU_CAP), 0);
    f.cr4_mce(true);
    let irq = f.v.put(&kvm_interrupt { irq: 0x30 });
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_INTERRUPT, irq), 0);
    let uc = MCI_STATUS_VAL | MCI_STATUS_UC | MCI_STATUS_PCC;
    assert_eq!(f.set_mce(0, uc, 0, 0, MCG_STATUS_MCIP), 0);
    let ev = f.events();
    assert_eq!((ev.exception.injected, ev.interrupt.injected), (0, 1));
    f.v.script(0, &[(Exit::Hlt, 1)]);
    // First entry delivers the interrupt; the #MC goes at the following one.
    assert_eq!(f.run().1, KVM_EXIT_HLT);
    assert_eq!(f.soft(|s| (s.ndelivered, s.exceptions)), (1, 0));
    // Still held by the core (queued at the next entry, once the slot is free).
    assert_eq!(f.events().exception.injected, 0);
    assert_eq!(f.run().1, KVM_EXIT_FAIL_ENTRY);
    assert_eq!(f.soft(|s| (s.exceptions, s.last_exception.nr)), (1, 18));
    f.done();
}

#[test]
fn mc_wakes_a_vcpu_halted_in_the_kernel() {
    let v = Vmm::new();
    let vm = v.create_vm();
    let mut c: kvm_enable_cap = zeroed();
    c.cap = KVM_CAP_SPLIT_IRQCHIP;
    c.args[0] = 24;
    assert_eq!(v.ioctl_fd(vm, KVM_ENABLE_CAP, v.put(&c)), 0);
    let cpu = v.create_vcpu(vm, 0);
    let f = Fix { v, vm, cpu };
    assert_eq!(f.setup(QEMU_CAP), 0);
    f.cr4_mce(true);
    let halted = f.v.put(&kvm_mp_state {
        mp_state: KVM_MP_STATE_HALTED,
    });
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_SET_MP_STATE, halted), 0);
    let uc = MCI_STATUS_VAL | MCI_STATUS_UC | MCI_STATUS_PCC;
    assert_eq!(f.set_mce(0, uc, 0, 0, MCG_STATUS_MCIP), 0);
    let a = f.v.buf(4);
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_GET_MP_STATE, a), 0);
    assert_eq!(f.v.get::<u32>(a), KVM_MP_STATE_RUNNABLE);
    // IF is clear: without the wakeup this KVM_RUN would sleep for good.
    let (h, run, sys) = (f.v.h(f.cpu) as usize, f.v.run_page(f.cpu) as usize, f.v.sys);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: the handle stays live until the test closes it after the reply.
        let r = unsafe { sys.ioctl(h as *mut std::ffi::c_void, KVM_RUN, 0) };
        // SAFETY: as above.
        let _ = tx.send((r, unsafe { (*(run as *const kvm_run)).exit_reason }));
    });
    let r = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the halted vCPU slept through its #MC");
    assert_eq!(r, (0, KVM_EXIT_FAIL_ENTRY));
    assert_eq!(f.soft(|s| (s.exceptions, s.last_exception.nr)), (1, 18));
    f.done();
}
