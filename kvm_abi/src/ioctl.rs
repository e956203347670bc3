//! Linux ioctl command words (`<asm-generic/ioctl.h>`, used by x86) and every KVM ioctl number,
//! grouped by the descriptor that accepts it.
//!
//! A command word is `dir << 30 | size << 16 | type << 8 | nr`, where `dir` is `_IOC_WRITE` (1,
//! userspace writes: the kernel copies in) and/or `_IOC_READ` (2, the kernel copies out), and
//! `size` (14 bits) is the size of the argument structure.

use crate::kvm::*;
use crate::manifest::{abi_consts, FD_DEVICE, FD_SYSTEM, FD_VCPU, FD_VM};
use crate::x86::*;

abi_consts! {
    /// Ioctl encoding parameters.
    list IOC_CONSTS, "Ioctl encoding (asm-generic/ioctl.h)";
    _IOC_NRBITS: u32 = 8;
    _IOC_TYPEBITS: u32 = 8;
    _IOC_SIZEBITS: u32 = 14;
    _IOC_DIRBITS: u32 = 2;
    _IOC_NRSHIFT: u32 = 0;
    _IOC_TYPESHIFT: u32 = _IOC_NRSHIFT + _IOC_NRBITS;
    _IOC_SIZESHIFT: u32 = _IOC_TYPESHIFT + _IOC_TYPEBITS;
    _IOC_DIRSHIFT: u32 = _IOC_SIZESHIFT + _IOC_SIZEBITS;
    _IOC_NONE: u32 = 0;
    _IOC_WRITE: u32 = 1;
    _IOC_READ: u32 = 2;
    KVMIO: u32 = 0xAE;
}

/// `_IOC(dir, type, nr, size)`: builds a command word. Each field is masked to its width, so
/// this never panics; every number declared here is checked at compile time to round-trip its
/// argument size through [`ioc_size`].
pub const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
    ((dir & ((1 << _IOC_DIRBITS) - 1)) << _IOC_DIRSHIFT)
        | (((size as u32) & ((1 << _IOC_SIZEBITS) - 1)) << _IOC_SIZESHIFT)
        | ((ty & ((1 << _IOC_TYPEBITS) - 1)) << _IOC_TYPESHIFT)
        | ((nr & ((1 << _IOC_NRBITS) - 1)) << _IOC_NRSHIFT)
}

/// `_IO(type, nr)`: no argument structure (the argument, if any, is passed by value).
pub const fn io(ty: u32, nr: u32) -> u32 {
    ioc(_IOC_NONE, ty, nr, 0)
}

/// `_IOR(type, nr, T)`: the kernel writes `size` bytes to the user argument.
pub const fn ior(ty: u32, nr: u32, size: usize) -> u32 {
    ioc(_IOC_READ, ty, nr, size)
}

/// `_IOW(type, nr, T)`: the kernel reads `size` bytes from the user argument.
pub const fn iow(ty: u32, nr: u32, size: usize) -> u32 {
    ioc(_IOC_WRITE, ty, nr, size)
}

/// `_IOWR(type, nr, T)`: both directions.
pub const fn iowr(ty: u32, nr: u32, size: usize) -> u32 {
    ioc(_IOC_READ | _IOC_WRITE, ty, nr, size)
}

/// `_IOC_DIR(cmd)`: `_IOC_READ`/`_IOC_WRITE` bits.
pub const fn ioc_dir(cmd: u32) -> u32 {
    (cmd >> _IOC_DIRSHIFT) & ((1 << _IOC_DIRBITS) - 1)
}

/// `_IOC_TYPE(cmd)`.
pub const fn ioc_type(cmd: u32) -> u32 {
    (cmd >> _IOC_TYPESHIFT) & ((1 << _IOC_TYPEBITS) - 1)
}

/// `_IOC_NR(cmd)`.
pub const fn ioc_nr(cmd: u32) -> u32 {
    (cmd >> _IOC_NRSHIFT) & ((1 << _IOC_NRBITS) - 1)
}

/// `_IOC_SIZE(cmd)`: size of the argument structure in bytes.
pub const fn ioc_size(cmd: u32) -> usize {
    ((cmd >> _IOC_SIZESHIFT) & ((1 << _IOC_SIZEBITS) - 1)) as usize
}

/// Builds one command word from the encoding kind and (for `ior`/`iow`/`iowr`) the argument type.
macro_rules! ioc_word {
    (io, $nr:literal) => {
        io(KVMIO, $nr)
    };
    ($kind:ident, $nr:literal, $t:ty) => {
        $kind(KVMIO, $nr, core::mem::size_of::<$t>())
    };
}

/// Declares ioctl numbers: `NAME = kind(nr[, ArgType]) for FDS;` emits `pub const NAME: u32` and
/// the manifest slice `$list`.
macro_rules! abi_ioctls {
    (
        $(#[doc = $ldoc:literal])*
        list $list:ident;
        $( $(#[doc = $doc:literal])* $name:ident = $kind:ident ( $nr:literal $(, $t:ty)? ) for $fds:expr; )*
    ) => {
        $(
            $(#[doc = $doc])*
            #[doc = ""]
            #[doc = concat!("Linux `", stringify!($name), "` = `", stringify!($kind), "(KVMIO, ", stringify!($nr), $(", ", stringify!($t),)? ")`.")]
            pub const $name: u32 = ioc_word!($kind, $nr $(, $t)?);
            $( const _: () = assert!(ioc_size($name) == core::mem::size_of::<$t>()); )?
        )*
        $(#[doc = $ldoc])*
        pub const $list: &[$crate::manifest::IoctlInfo] = &[
            $( $crate::manifest::IoctlInfo { name: stringify!($name), value: $name, fds: $fds }, )*
        ];
    };
}

abi_ioctls! {
    /// Ioctls of `/dev/kvm`.
    list SYSTEM_IOCTLS;
    /// Returns `KVM_API_VERSION`.
    KVM_GET_API_VERSION = io(0x00) for FD_SYSTEM;
    /// Creates a VM; the argument is the machine type (`KVM_X86_*_VM`); returns a VM descriptor.
    KVM_CREATE_VM = io(0x01) for FD_SYSTEM;
    /// MSRs that `KVM_GET_MSRS`/`KVM_SET_MSRS` save and restore.
    KVM_GET_MSR_INDEX_LIST = iowr(0x02, kvm_msr_list) for FD_SYSTEM;
    /// Argument: `KVM_CAP_*`; returns 0 if unsupported, else a positive value.
    KVM_CHECK_EXTENSION = io(0x03) for FD_SYSTEM | FD_VM;
    /// Size of the vCPU mmap area (`kvm_run` plus the PIO and coalesced MMIO pages).
    KVM_GET_VCPU_MMAP_SIZE = io(0x04) for FD_SYSTEM;
    /// CPUID leaves the host can virtualize.
    KVM_GET_SUPPORTED_CPUID = iowr(0x05, kvm_cpuid2) for FD_SYSTEM;
    /// CPUID leaves KVM emulates.
    KVM_GET_EMULATED_CPUID = iowr(0x09, kvm_cpuid2) for FD_SYSTEM;
    /// MSRs describing host features (read with `KVM_GET_MSRS` on the system descriptor).
    KVM_GET_MSR_FEATURE_INDEX_LIST = iowr(0x0a, kvm_msr_list) for FD_SYSTEM;
    /// Hyper-V CPUID leaves (system: `KVM_CAP_SYS_HYPERV_CPUID`; vCPU: `KVM_CAP_HYPERV_CPUID`).
    KVM_GET_SUPPORTED_HV_CPUID = iowr(0xc1, kvm_cpuid2) for FD_SYSTEM | FD_VCPU;
}

abi_ioctls! {
    /// Ioctls of a VM descriptor.
    list VM_IOCTLS;
    /// Argument: vCPU id; returns a vCPU descriptor.
    KVM_CREATE_VCPU = io(0x41) for FD_VM;
    KVM_GET_DIRTY_LOG = iow(0x42, kvm_dirty_log) for FD_VM;
    KVM_SET_NR_MMU_PAGES = io(0x44) for FD_VM;
    KVM_GET_NR_MMU_PAGES = io(0x45) for FD_VM;
    KVM_SET_USER_MEMORY_REGION = iow(0x46, kvm_userspace_memory_region) for FD_VM;
    /// Argument: guest-physical address of the 3-page TSS area (VMX real mode).
    KVM_SET_TSS_ADDR = io(0x47) for FD_VM;
    KVM_SET_IDENTITY_MAP_ADDR = iow(0x48, u64) for FD_VM;
    KVM_SET_USER_MEMORY_REGION2 = iow(0x49, kvm_userspace_memory_region2) for FD_VM;
    KVM_CREATE_IRQCHIP = io(0x60) for FD_VM;
    KVM_IRQ_LINE = iow(0x61, kvm_irq_level) for FD_VM;
    KVM_GET_IRQCHIP = iowr(0x62, kvm_irqchip) for FD_VM;
    KVM_SET_IRQCHIP = ior(0x63, kvm_irqchip) for FD_VM;
    KVM_CREATE_PIT = io(0x64) for FD_VM;
    KVM_GET_PIT = iowr(0x65, kvm_pit_state) for FD_VM;
    KVM_SET_PIT = ior(0x66, kvm_pit_state) for FD_VM;
    KVM_IRQ_LINE_STATUS = iowr(0x67, kvm_irq_level) for FD_VM;
    KVM_REGISTER_COALESCED_MMIO = iow(0x67, kvm_coalesced_mmio_zone) for FD_VM;
    KVM_UNREGISTER_COALESCED_MMIO = iow(0x68, kvm_coalesced_mmio_zone) for FD_VM;
    KVM_SET_GSI_ROUTING = iow(0x6a, kvm_irq_routing) for FD_VM;
    /// Argument: pointer to `kvm_reinject_control` (encoded as `_IO`).
    KVM_REINJECT_CONTROL = io(0x71) for FD_VM;
    KVM_IRQFD = iow(0x76, kvm_irqfd) for FD_VM;
    KVM_CREATE_PIT2 = iow(0x77, kvm_pit_config) for FD_VM;
    /// Argument: vCPU id of the BSP.
    KVM_SET_BOOT_CPU_ID = io(0x78) for FD_VM;
    KVM_IOEVENTFD = iow(0x79, kvm_ioeventfd) for FD_VM;
    KVM_XEN_HVM_CONFIG = iow(0x7a, kvm_xen_hvm_config) for FD_VM;
    KVM_SET_CLOCK = iow(0x7b, kvm_clock_data) for FD_VM;
    KVM_GET_CLOCK = ior(0x7c, kvm_clock_data) for FD_VM;
    KVM_GET_PIT2 = ior(0x9f, kvm_pit_state2) for FD_VM;
    KVM_SET_PIT2 = iow(0xa0, kvm_pit_state2) for FD_VM;
    KVM_SIGNAL_MSI = iow(0xa5, kvm_msi) for FD_VM;
    KVM_SET_PMU_EVENT_FILTER = iow(0xb2, kvm_pmu_event_filter) for FD_VM;
    KVM_MEMORY_ENCRYPT_OP = iowr(0xba, u64) for FD_VM | FD_VCPU;
    KVM_MEMORY_ENCRYPT_REG_REGION = ior(0xbb, kvm_enc_region) for FD_VM;
    KVM_MEMORY_ENCRYPT_UNREG_REGION = ior(0xbc, kvm_enc_region) for FD_VM;
    KVM_HYPERV_EVENTFD = iow(0xbd, kvm_hyperv_eventfd) for FD_VM;
    KVM_CLEAR_DIRTY_LOG = iowr(0xc0, kvm_clear_dirty_log) for FD_VM;
    KVM_X86_SET_MSR_FILTER = iow(0xc6, kvm_msr_filter) for FD_VM;
    KVM_RESET_DIRTY_RINGS = io(0xc7) for FD_VM;
    KVM_XEN_HVM_GET_ATTR = iowr(0xc8, kvm_xen_hvm_attr) for FD_VM;
    KVM_XEN_HVM_SET_ATTR = iow(0xc9, kvm_xen_hvm_attr) for FD_VM;
    KVM_XEN_HVM_EVTCHN_SEND = iow(0xd0, kvm_irq_routing_xen_evtchn) for FD_VM;
    /// Returns a statistics descriptor (VM or vCPU).
    KVM_GET_STATS_FD = io(0xce) for FD_VM | FD_VCPU;
    KVM_SET_MEMORY_ATTRIBUTES = iow(0xd2, kvm_memory_attributes) for FD_VM;
    KVM_CREATE_GUEST_MEMFD = iowr(0xd4, kvm_create_guest_memfd) for FD_VM;
    KVM_CREATE_DEVICE = iowr(0xe0, kvm_create_device) for FD_VM;
}

abi_ioctls! {
    /// Ioctls of a vCPU descriptor.
    list VCPU_IOCTLS;
    KVM_RUN = io(0x80) for FD_VCPU;
    KVM_GET_REGS = ior(0x81, kvm_regs) for FD_VCPU;
    KVM_SET_REGS = iow(0x82, kvm_regs) for FD_VCPU;
    KVM_GET_SREGS = ior(0x83, kvm_sregs) for FD_VCPU;
    KVM_SET_SREGS = iow(0x84, kvm_sregs) for FD_VCPU;
    KVM_TRANSLATE = iowr(0x85, kvm_translation) for FD_VCPU;
    KVM_INTERRUPT = iow(0x86, kvm_interrupt) for FD_VCPU;
    /// vCPU MSRs; on the system descriptor, feature MSRs.
    KVM_GET_MSRS = iowr(0x88, kvm_msrs) for FD_VCPU | FD_SYSTEM;
    KVM_SET_MSRS = iow(0x89, kvm_msrs) for FD_VCPU;
    KVM_SET_CPUID = iow(0x8a, kvm_cpuid) for FD_VCPU;
    KVM_SET_SIGNAL_MASK = iow(0x8b, kvm_signal_mask) for FD_VCPU;
    KVM_GET_FPU = ior(0x8c, kvm_fpu) for FD_VCPU;
    KVM_SET_FPU = iow(0x8d, kvm_fpu) for FD_VCPU;
    KVM_GET_LAPIC = ior(0x8e, kvm_lapic_state) for FD_VCPU;
    KVM_SET_LAPIC = iow(0x8f, kvm_lapic_state) for FD_VCPU;
    KVM_SET_CPUID2 = iow(0x90, kvm_cpuid2) for FD_VCPU;
    KVM_GET_CPUID2 = iowr(0x91, kvm_cpuid2) for FD_VCPU;
    KVM_TPR_ACCESS_REPORTING = iowr(0x92, kvm_tpr_access_ctl) for FD_VCPU;
    KVM_SET_VAPIC_ADDR = iow(0x93, kvm_vapic_addr) for FD_VCPU;
    KVM_GET_MP_STATE = ior(0x98, kvm_mp_state) for FD_VCPU;
    KVM_SET_MP_STATE = iow(0x99, kvm_mp_state) for FD_VCPU;
    KVM_NMI = io(0x9a) for FD_VCPU;
    KVM_SET_GUEST_DEBUG = iow(0x9b, kvm_guest_debug) for FD_VCPU;
    KVM_X86_SETUP_MCE = iow(0x9c, u64) for FD_VCPU;
    /// On the system descriptor.
    KVM_X86_GET_MCE_CAP_SUPPORTED = ior(0x9d, u64) for FD_SYSTEM;
    KVM_X86_SET_MCE = iow(0x9e, kvm_x86_mce) for FD_VCPU;
    KVM_GET_VCPU_EVENTS = ior(0x9f, kvm_vcpu_events) for FD_VCPU;
    KVM_SET_VCPU_EVENTS = iow(0xa0, kvm_vcpu_events) for FD_VCPU;
    KVM_GET_DEBUGREGS = ior(0xa1, kvm_debugregs) for FD_VCPU;
    KVM_SET_DEBUGREGS = iow(0xa2, kvm_debugregs) for FD_VCPU;
    /// Argument: TSC frequency in kHz (vCPU; VM with `KVM_CAP_VM_TSC_CONTROL`).
    KVM_SET_TSC_KHZ = io(0xa2) for FD_VCPU | FD_VM;
    /// Returns the TSC frequency in kHz.
    KVM_GET_TSC_KHZ = io(0xa3) for FD_VCPU | FD_VM;
    KVM_ENABLE_CAP = iow(0xa3, kvm_enable_cap) for FD_VCPU | FD_VM;
    KVM_GET_XSAVE = ior(0xa4, kvm_xsave) for FD_VCPU;
    KVM_SET_XSAVE = iow(0xa5, kvm_xsave) for FD_VCPU;
    KVM_GET_XCRS = ior(0xa6, kvm_xcrs) for FD_VCPU;
    KVM_SET_XCRS = iow(0xa7, kvm_xcrs) for FD_VCPU;
    KVM_GET_ONE_REG = iow(0xab, kvm_one_reg) for FD_VCPU;
    KVM_SET_ONE_REG = iow(0xac, kvm_one_reg) for FD_VCPU;
    /// Tells the guest (kvmclock) it was paused by the host.
    KVM_KVMCLOCK_CTRL = io(0xad) for FD_VCPU;
    KVM_GET_REG_LIST = iowr(0xb0, kvm_reg_list) for FD_VCPU;
    KVM_SMI = io(0xb7) for FD_VCPU;
    KVM_GET_NESTED_STATE = iowr(0xbe, kvm_nested_state) for FD_VCPU;
    KVM_SET_NESTED_STATE = iow(0xbf, kvm_nested_state) for FD_VCPU;
    KVM_XEN_VCPU_GET_ATTR = iowr(0xca, kvm_xen_vcpu_attr) for FD_VCPU;
    KVM_XEN_VCPU_SET_ATTR = iow(0xcb, kvm_xen_vcpu_attr) for FD_VCPU;
    KVM_GET_SREGS2 = ior(0xcc, kvm_sregs2) for FD_VCPU;
    KVM_SET_SREGS2 = iow(0xcd, kvm_sregs2) for FD_VCPU;
    /// Transfers `KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)` bytes, not `size_of::<kvm_xsave>()`.
    KVM_GET_XSAVE2 = ior(0xcf, kvm_xsave) for FD_VCPU;
    KVM_PRE_FAULT_MEMORY = iowr(0xd5, kvm_pre_fault_memory) for FD_VCPU;
}

abi_ioctls! {
    /// Ioctls of a device descriptor (also accepted by VM, vCPU and system descriptors for their
    /// own attributes).
    list DEVICE_IOCTLS;
    KVM_SET_DEVICE_ATTR = iow(0xe1, kvm_device_attr) for FD_DEVICE | FD_VM | FD_VCPU | FD_SYSTEM;
    KVM_GET_DEVICE_ATTR = iow(0xe2, kvm_device_attr) for FD_DEVICE | FD_VM | FD_VCPU | FD_SYSTEM;
    KVM_HAS_DEVICE_ATTR = iow(0xe3, kvm_device_attr) for FD_DEVICE | FD_VM | FD_VCPU | FD_SYSTEM;
}
