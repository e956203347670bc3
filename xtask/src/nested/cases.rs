//! The named nested cases: which emulator boots the L1, which hypervisors L1 loads, what runs.

/// How the L1 guest is emulated.
#[derive(Clone, Copy, Debug)]
pub enum Platform {
    /// QEMU TCG with this `-cpu` (AMD SVM; NPT unless the model lacks it).
    Qemu { cpu: &'static str },
    /// Bochs with this `cpu: model=` (Intel VMX), booting a GRUB ISO.
    Bochs { model: &'static str },
}

impl Platform {
    /// Short description for listings.
    pub fn describe(&self) -> String {
        match self {
            Platform::Qemu { cpu } => format!("QEMU TCG -cpu {cpu}"),
            Platform::Bochs { model } => format!("Bochs {model}"),
        }
    }
}

/// One harness case: a single emulator boot.
#[derive(Debug)]
pub struct Case {
    /// Name given to `cargo xtask nested run`.
    pub name: &'static str,
    /// One line for `list`.
    pub about: &'static str,
    /// The emulator and CPU model of L1.
    pub platform: Platform,
    /// Hypervisors loaded in turn in L1 (`linux` = kvm + kvm-amd/kvm-intel, `okvm` = our module).
    pub hvs: &'static [&'static str],
    /// Workloads per hypervisor: `suite` (kvmsuite), `l2_qemu72`, `l2_qemu72_smp2` (2 vCPUs),
    /// `l2_qemu72_split_smp2`, `l2_qemu10`, `l2_qemu10_split` (kernel-irqchip=split),
    /// `l2_qemu10_split_virtio` (the same with virtio-rng-pci: ioeventfd + irqfd end to end).
    pub work: &'static [&'static str],
    /// kvmsuite tests to run (empty: all).
    pub tests: &'static [&'static str],
    /// Substrings the Linux KVM load line must show (proves the platform is what we asked).
    pub linux_params: &'static [&'static str],
    /// Host wall-clock limit for the whole emulator run, seconds.
    pub timeout_s: u64,
}

const EPYC: Platform = Platform::Qemu { cpu: "EPYC" };
const NO_NPT: Platform = Platform::Qemu { cpu: "qemu64,+svm,-npt" };
const SKX: Platform = Platform::Bochs { model: "corei7_skylake_x" };
const PENRYN: Platform = Platform::Bochs { model: "core2_penryn_t9600" };
const L2_BOTH: &[&str] = &["suite", "l2_qemu72", "l2_qemu10"];
/// The event-notifier workloads: kvmsuite's ioeventfd/irqfd tests and QEMU 10.0 with the split
/// irqchip, which needs KVM_IOEVENTFD and KVM_IRQFD, plain and with a virtio device.
const EV_WORK: &[&str] = &["suite", "l2_qemu10_split", "l2_qemu10_split_virtio"];
const EV_TESTS: &[&str] = &["api", "ioeventfd", "irqfd"];

/// Every case, in `list` order.
pub const CASES: &[Case] = &[
    Case {
        name: "svm",
        about: "SVM+NPT: kvmsuite + L2 boots with QEMU 7.2 and 10.0 on Linux KVM (the reference)",
        platform: EPYC,
        hvs: &["linux"],
        work: L2_BOTH,
        tests: &[],
        linux_params: &["npt=Y"],
        timeout_s: 420,
    },
    Case {
        name: "svm-shadow",
        about: "SVM without NPT (shadow paging): kvmsuite + L2 boot with QEMU 7.2 on Linux KVM",
        platform: NO_NPT,
        hvs: &["linux"],
        work: &["suite", "l2_qemu72"],
        tests: &[],
        linux_params: &["npt=N"],
        timeout_s: 420,
    },
    Case {
        name: "svm-okvm",
        about: "SVM+NPT: kvmsuite on Linux KVM, then on okvm (host glue), in one boot",
        platform: EPYC,
        hvs: &["linux", "okvm"],
        work: &["suite"],
        tests: &[],
        linux_params: &["npt=Y"],
        timeout_s: 420,
    },
    Case {
        name: "svm-okvm-l2",
        about: "SVM+NPT: L2 boots on okvm only: QEMU 7.2 (kernel-irqchip=off), QEMU 10.0 (default full irqchip), QEMU 10.0 + virtio",
        platform: EPYC,
        hvs: &["okvm"],
        work: &["l2_qemu72", "l2_qemu10", "l2_qemu10_virtio"],
        tests: &[],
        linux_params: &[],
        timeout_s: 300,
    },
    Case {
        name: "svm-okvm-smp",
        about: "SVM+NPT: L2 boot with QEMU 7.2 (kernel-irqchip=off) and 2 vCPUs on okvm (hangs today)",
        platform: EPYC,
        hvs: &["okvm"],
        work: &["l2_qemu72_smp2"],
        tests: &[],
        linux_params: &[],
        timeout_s: 120,
    },
    Case {
        name: "svm-okvm-split",
        about: "SVM+NPT: 2-vCPU L2 boots on okvm: QEMU 7.2 kernel-irqchip=split, QEMU 10.0 default full irqchip",
        platform: EPYC,
        hvs: &["okvm"],
        work: &["l2_qemu72_split_smp2", "l2_qemu10_smp2"],
        tests: &[],
        linux_params: &[],
        timeout_s: 240,
    },
    Case {
        name: "svm-ev",
        about: "SVM+NPT: ioeventfd/irqfd tests + QEMU 10.0 kernel-irqchip=split L2 boots (plain, virtio-rng) on Linux KVM, then okvm",
        platform: EPYC,
        hvs: &["linux", "okvm"],
        work: EV_WORK,
        tests: EV_TESTS,
        linux_params: &["npt=Y"],
        timeout_s: 600,
    },
    Case {
        name: "vmx",
        about: "VMX+EPT (Bochs): kvmsuite + L2 boots (QEMU 7.2, 10.0) on Linux KVM, then on okvm",
        platform: SKX,
        hvs: &["linux", "okvm"],
        work: L2_BOTH,
        tests: &[],
        linux_params: &["ept=Y", "unrestricted_guest=Y"],
        timeout_s: 1800,
    },
    Case {
        name: "vmx-okvm",
        about: "VMX+EPT (Bochs): kvmsuite on Linux KVM, then on okvm (host glue), in one boot",
        platform: SKX,
        hvs: &["linux", "okvm"],
        work: &["suite"],
        tests: &[],
        linux_params: &["ept=Y", "unrestricted_guest=Y"],
        timeout_s: 1200,
    },
    Case {
        name: "vmx-okvm-l2",
        about: "VMX+EPT (Bochs): L2 boot with QEMU 7.2 (kernel-irqchip=off) on okvm only",
        platform: SKX,
        hvs: &["okvm"],
        work: &["l2_qemu72"],
        tests: &[],
        linux_params: &["ept=Y", "unrestricted_guest=Y"],
        timeout_s: 1200,
    },
    Case {
        name: "vmx-linux",
        about: "VMX+EPT (Bochs): kvmsuite + L2 boots with QEMU 7.2 and 10.0 on Linux KVM only",
        platform: SKX,
        hvs: &["linux"],
        work: L2_BOTH,
        tests: &[],
        linux_params: &["ept=Y", "unrestricted_guest=Y"],
        timeout_s: 1800,
    },
    Case {
        name: "vmx-suite",
        about: "VMX+EPT (Bochs): kvmsuite on Linux KVM only (the quickest VMX check)",
        platform: SKX,
        hvs: &["linux"],
        work: &["suite"],
        tests: &[],
        linux_params: &["ept=Y", "unrestricted_guest=Y"],
        timeout_s: 900,
    },
    Case {
        name: "vmx-shadow",
        // okvm refuses KVM_CREATE_VM on this CPU (ENODEV, the missing EPT logged) until shadow
        // paging and real-mode emulation are wired to the VMX backend; Linux KVM only meanwhile.
        about: "VMX without EPT or unrestricted guest (Bochs Penryn): kvmsuite on Linux KVM",
        platform: PENRYN,
        hvs: &["linux"],
        work: &["suite"],
        tests: &[],
        linux_params: &["ept=N", "unrestricted_guest=N"],
        timeout_s: 900,
    },
    Case {
        name: "vmx-ev",
        about: "VMX+EPT (Bochs): ioeventfd/irqfd tests + QEMU 10.0 kernel-irqchip=split L2 boots on Linux KVM, then okvm",
        platform: SKX,
        hvs: &["linux", "okvm"],
        work: EV_WORK,
        tests: EV_TESTS,
        linux_params: &["ept=Y", "unrestricted_guest=Y"],
        timeout_s: 2400,
    },
    Case {
        name: "bench",
        about: "SVM+NPT: exit costs and L2 boot time, Linux KVM vs okvm (used by `nested bench`)",
        platform: EPYC,
        hvs: &["linux", "okvm"],
        work: &["suite", "l2_qemu72", "l2_qemu10", "l2_qemu10_split_virtio"],
        tests: &["api", "pio_long", "mmio", "cpuid"],
        linux_params: &["npt=Y"],
        timeout_s: 600,
    },
];

/// The case called `name`.
pub fn find(name: &str) -> Option<&'static Case> {
    CASES.iter().find(|c| c.name == name)
}
