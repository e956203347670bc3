//! `KVM_CHECK_EXTENSION`: exactly the capabilities this core implements.

use crate::memslot::KVM_USER_MEM_SLOTS;

/// Largest number of vCPUs per VM (`KVM_CAP_MAX_VCPUS`).
pub const KVM_MAX_VCPUS: u32 = 256;
/// vCPU ids are below this (`KVM_CAP_MAX_VCPU_ID`, Linux `KVM_MAX_VCPU_IDS`).
pub const KVM_MAX_VCPU_IDS: u32 = 256;
/// `KVM_COALESCED_MMIO_PAGE_OFFSET` (x86).
pub const KVM_COALESCED_MMIO_PAGE_OFFSET: i64 = 2;
/// `KVM_PIO_PAGE_OFFSET` (x86).
pub const KVM_PIO_PAGE_OFFSET: u64 = 1;

// The capabilities answered nonzero (numbers from kvm_abi, i.e. <linux/kvm.h>).
const KVM_CAP_USER_MEMORY: u64 = kvm_abi::KVM_CAP_USER_MEMORY as u64;
const KVM_CAP_SET_TSS_ADDR: u64 = kvm_abi::KVM_CAP_SET_TSS_ADDR as u64;
const KVM_CAP_EXT_CPUID: u64 = kvm_abi::KVM_CAP_EXT_CPUID as u64;
const KVM_CAP_NR_VCPUS: u64 = kvm_abi::KVM_CAP_NR_VCPUS as u64;
const KVM_CAP_NR_MEMSLOTS: u64 = kvm_abi::KVM_CAP_NR_MEMSLOTS as u64;
const KVM_CAP_MP_STATE: u64 = kvm_abi::KVM_CAP_MP_STATE as u64;
const KVM_CAP_COALESCED_MMIO: u64 = kvm_abi::KVM_CAP_COALESCED_MMIO as u64;
const KVM_CAP_DESTROY_MEMORY_REGION_WORKS: u64 =
    kvm_abi::KVM_CAP_DESTROY_MEMORY_REGION_WORKS as u64;
const KVM_CAP_USER_NMI: u64 = kvm_abi::KVM_CAP_USER_NMI as u64;
const KVM_CAP_JOIN_MEMORY_REGIONS_WORKS: u64 = kvm_abi::KVM_CAP_JOIN_MEMORY_REGIONS_WORKS as u64;
const KVM_CAP_SET_IDENTITY_MAP_ADDR: u64 = kvm_abi::KVM_CAP_SET_IDENTITY_MAP_ADDR as u64;
const KVM_CAP_INTERNAL_ERROR_DATA: u64 = kvm_abi::KVM_CAP_INTERNAL_ERROR_DATA as u64;
const KVM_CAP_VCPU_EVENTS: u64 = kvm_abi::KVM_CAP_VCPU_EVENTS as u64;
const KVM_CAP_DEBUGREGS: u64 = kvm_abi::KVM_CAP_DEBUGREGS as u64;
const KVM_CAP_XSAVE: u64 = kvm_abi::KVM_CAP_XSAVE as u64;
const KVM_CAP_XCRS: u64 = kvm_abi::KVM_CAP_XCRS as u64;
const KVM_CAP_MAX_VCPUS: u64 = kvm_abi::KVM_CAP_MAX_VCPUS as u64;
const KVM_CAP_READONLY_MEM: u64 = kvm_abi::KVM_CAP_READONLY_MEM as u64;
const KVM_CAP_CHECK_EXTENSION_VM: u64 = kvm_abi::KVM_CAP_CHECK_EXTENSION_VM as u64;
const KVM_CAP_MAX_VCPU_ID: u64 = kvm_abi::KVM_CAP_MAX_VCPU_ID as u64;
const KVM_CAP_IMMEDIATE_EXIT: u64 = kvm_abi::KVM_CAP_IMMEDIATE_EXIT as u64;
const KVM_CAP_GET_MSR_FEATURES: u64 = kvm_abi::KVM_CAP_GET_MSR_FEATURES as u64;
const KVM_CAP_GET_TSC_KHZ: u64 = kvm_abi::KVM_CAP_GET_TSC_KHZ as u64;
const KVM_CAP_EXIT_ON_EMULATION_FAILURE: u64 = kvm_abi::KVM_CAP_EXIT_ON_EMULATION_FAILURE as u64;
/// Both in-kernel irqchips exist: the full one (`KVM_CREATE_IRQCHIP`: PIC, IOAPIC, local
/// APICs) and the split one (`KVM_CAP_SPLIT_IRQCHIP`: local APICs only).
const KVM_CAP_IRQCHIP: u64 = kvm_abi::KVM_CAP_IRQCHIP as u64;
/// `KVM_IRQ_LINE_STATUS` reports Linux's delivery status.
const KVM_CAP_IRQ_INJECT_STATUS: u64 = kvm_abi::KVM_CAP_IRQ_INJECT_STATUS as u64;
const KVM_CAP_SPLIT_IRQCHIP: u64 = kvm_abi::KVM_CAP_SPLIT_IRQCHIP as u64;
/// GSI routing of the split irqchip (MSI routes); also required by QEMU's x86 `kvm_arch_init`.
const KVM_CAP_IRQ_ROUTING: u64 = kvm_abi::KVM_CAP_IRQ_ROUTING as u64;
const KVM_CAP_SIGNAL_MSI: u64 = kvm_abi::KVM_CAP_SIGNAL_MSI as u64;
const KVM_CAP_TSC_DEADLINE_TIMER: u64 = kvm_abi::KVM_CAP_TSC_DEADLINE_TIMER as u64;
/// Machine-check banks (`KVM_X86_SETUP_MCE`, `KVM_X86_SET_MCE`); answers the bank limit.
const KVM_CAP_MCE: u64 = kvm_abi::KVM_CAP_MCE as u64;
/// `KVM_GET_CLOCK` / `KVM_SET_CLOCK`; answers the supported `kvm_clock_data` flags.
const KVM_CAP_ADJUST_CLOCK: u64 = kvm_abi::KVM_CAP_ADJUST_CLOCK as u64;
/// Single-stepping over instructions the core or a backend completes raises #DB (`singlestep`).
const KVM_CAP_X86_ROBUST_SINGLESTEP: u64 = kvm_abi::KVM_CAP_X86_ROBUST_SINGLESTEP as u64;
/// `KVM_IOEVENTFD` on the MMIO and PIO buses (`eventfd::ioeventfd`).
const KVM_CAP_IOEVENTFD: u64 = kvm_abi::KVM_CAP_IOEVENTFD as u64;
/// Length-0 ioeventfds. Linux x86 answers 1; QEMU does not ask, but a VMM may.
const KVM_CAP_IOEVENTFD_NO_LENGTH: u64 = kvm_abi::KVM_CAP_IOEVENTFD_NO_LENGTH as u64;
/// Length-0 ("any length") ioeventfds; QEMU >= 8.2 requires it.
const KVM_CAP_IOEVENTFD_ANY_LENGTH: u64 = kvm_abi::KVM_CAP_IOEVENTFD_ANY_LENGTH as u64;
/// `KVM_IRQFD` with an in-kernel irqchip (`eventfd::irqfd`). `KVM_CAP_IRQFD_RESAMPLE` is not
/// offered: resampling needs the full in-kernel irqchip.
const KVM_CAP_IRQFD: u64 = kvm_abi::KVM_CAP_IRQFD as u64;
/// The in-kernel 8254 PIT (`irqchip::pitdev`, needs the full irqchip): `KVM_CREATE_PIT`,
/// `KVM_CREATE_PIT2`, `KVM_GET/SET_PIT`, `KVM_GET/SET_PIT2` (flags: HPET legacy mode) and
/// `KVM_REINJECT_CONTROL`, as Linux x86 answers them.
const KVM_CAP_PIT: u64 = kvm_abi::KVM_CAP_PIT as u64;
const KVM_CAP_PIT2: u64 = kvm_abi::KVM_CAP_PIT2 as u64;
const KVM_CAP_PIT_STATE2: u64 = kvm_abi::KVM_CAP_PIT_STATE2 as u64;
const KVM_CAP_REINJECT_CONTROL: u64 = kvm_abi::KVM_CAP_REINJECT_CONTROL as u64;

/// Every capability answered nonzero, for tests and documentation (`KVM_CAP_XCRS` only on a
/// host with XSAVE enabled).
pub const SUPPORTED: [u64; 41] = [
    KVM_CAP_USER_MEMORY,
    KVM_CAP_SET_TSS_ADDR,
    KVM_CAP_EXT_CPUID,
    KVM_CAP_NR_VCPUS,
    KVM_CAP_NR_MEMSLOTS,
    KVM_CAP_MP_STATE,
    KVM_CAP_COALESCED_MMIO,
    KVM_CAP_DESTROY_MEMORY_REGION_WORKS,
    KVM_CAP_USER_NMI,
    KVM_CAP_JOIN_MEMORY_REGIONS_WORKS,
    KVM_CAP_SET_IDENTITY_MAP_ADDR,
    KVM_CAP_INTERNAL_ERROR_DATA,
    KVM_CAP_VCPU_EVENTS,
    KVM_CAP_DEBUGREGS,
    KVM_CAP_XSAVE,
    KVM_CAP_XCRS,
    KVM_CAP_MAX_VCPUS,
    KVM_CAP_READONLY_MEM,
    KVM_CAP_CHECK_EXTENSION_VM,
    KVM_CAP_MAX_VCPU_ID,
    KVM_CAP_IMMEDIATE_EXIT,
    KVM_CAP_GET_MSR_FEATURES,
    KVM_CAP_GET_TSC_KHZ,
    KVM_CAP_EXIT_ON_EMULATION_FAILURE,
    KVM_CAP_IRQCHIP,
    KVM_CAP_IRQ_INJECT_STATUS,
    KVM_CAP_SPLIT_IRQCHIP,
    KVM_CAP_IRQ_ROUTING,
    KVM_CAP_SIGNAL_MSI,
    KVM_CAP_TSC_DEADLINE_TIMER,
    KVM_CAP_MCE,
    KVM_CAP_ADJUST_CLOCK,
    KVM_CAP_X86_ROBUST_SINGLESTEP,
    KVM_CAP_IOEVENTFD,
    KVM_CAP_IOEVENTFD_NO_LENGTH,
    KVM_CAP_IOEVENTFD_ANY_LENGTH,
    KVM_CAP_IRQFD,
    KVM_CAP_PIT,
    KVM_CAP_PIT2,
    KVM_CAP_PIT_STATE2,
    KVM_CAP_REINJECT_CONTROL,
];

/// The answer to `KVM_CHECK_EXTENSION(cap)` (system or VM descriptor): 0 = unsupported.
/// `online_cpus` sizes `KVM_CAP_NR_VCPUS` (Linux: recommended = online CPUs, capped).
/// `host_xsave`: the host runs with XSAVE enabled; without it `KVM_CAP_XCRS` is 0, as Linux
/// answers (`boot_cpu_has(X86_FEATURE_XSAVE)`), and userspace then leaves `KVM_SET_XCRS` alone
/// (which fails with `EINVAL` there). `KVM_CAP_XSAVE` stays: the area is then in FXSAVE format.
pub fn check_extension(cap: u64, online_cpus: u32, host_xsave: bool) -> i64 {
    match cap {
        KVM_CAP_XCRS => i64::from(host_xsave),
        KVM_CAP_NR_VCPUS => i64::from(online_cpus.clamp(1, KVM_MAX_VCPUS)),
        KVM_CAP_MAX_VCPUS => i64::from(KVM_MAX_VCPUS),
        KVM_CAP_MAX_VCPU_ID => i64::from(KVM_MAX_VCPU_IDS),
        KVM_CAP_NR_MEMSLOTS => KVM_USER_MEM_SLOTS as i64,
        KVM_CAP_COALESCED_MMIO => KVM_COALESCED_MMIO_PAGE_OFFSET,
        // Linux: the number of GSI routes (QEMU sizes its GSI bitmap from it).
        KVM_CAP_IRQ_ROUTING => i64::from(crate::irqchip::MAX_IRQ_ROUTES),
        KVM_CAP_MCE => i64::from(crate::msrs::KVM_MAX_MCE_BANKS),
        KVM_CAP_ADJUST_CLOCK => i64::from(crate::clock::CLOCK_FLAGS),
        c if SUPPORTED.contains(&c) => 1,
        _ => 0,
    }
}
