//! Structures of `<linux/kvm.h>` (architecture-independent part) as seen on x86_64.

use crate::manifest::{abi_layouts, abi_struct, abi_union};
use crate::x86::{
    kvm_debug_exit_arch, kvm_guest_debug_arch, kvm_ioapic_state, kvm_pic_state, kvm_sync_regs,
};

abi_struct! {
    /// `KVM_SET_USER_MEMORY_REGION`: map `memory_size` bytes of user memory at
    /// `userspace_addr` into guest-physical `guest_phys_addr` as memslot `slot`.
    pub struct kvm_userspace_memory_region: linux, size 32, align 8 {
        /// Address space id in bits 16-31, slot id in bits 0-15.
        pub slot: u32 = 0,
        /// `KVM_MEM_*`.
        pub flags: u32 = 4,
        pub guest_phys_addr: u64 = 8,
        /// Bytes; 0 deletes the slot.
        pub memory_size: u64 = 16,
        pub userspace_addr: u64 = 24,
    }
}

abi_struct! {
    /// `KVM_SET_USER_MEMORY_REGION2`: `kvm_userspace_memory_region` plus a guest_memfd.
    pub struct kvm_userspace_memory_region2: linux, size 160, align 8 {
        pub slot: u32 = 0,
        pub flags: u32 = 4,
        pub guest_phys_addr: u64 = 8,
        pub memory_size: u64 = 16,
        pub userspace_addr: u64 = 24,
        pub guest_memfd_offset: u64 = 32,
        pub guest_memfd: u32 = 40,
        pub pad1: u32 = 44,
        pub pad2: [u64; 14] = 48,
    }
}

abi_struct! {
    /// `KVM_IRQ_LINE`/`KVM_IRQ_LINE_STATUS`: set GSI `irq` to `level`; Linux's anonymous union
    /// `{ irq; status; }` is the field `irq`, and `status()` reads it as the returned status.
    pub struct kvm_irq_level: linux, size 8, align 4 {
        pub irq: u32 = 0 as "irq",
        pub level: u32 = 4,
    }
    aliases { "status" = 0, 4; }
}

impl kvm_irq_level {
    /// Linux member `status` (same bytes as `irq`): the result of `KVM_IRQ_LINE_STATUS`.
    pub fn status(&self) -> i32 {
        self.irq as i32
    }
    /// Sets Linux member `status` (same bytes as `irq`).
    pub fn set_status(&mut self, status: i32) {
        self.irq = status as u32;
    }
}

abi_union! {
    /// The chip state of `kvm_irqchip` (`chip`): PIC, IOAPIC, or 512 reserved bytes.
    pub union kvm_irqchip_chip: member("kvm_irqchip", "chip"), storage [u64; 64], size 512, align 8 {
        dummy, dummy_mut: [u8; 512];
        pic, pic_mut: kvm_pic_state;
        ioapic, ioapic_mut: kvm_ioapic_state;
    }
}

abi_struct! {
    /// `KVM_GET_IRQCHIP`/`KVM_SET_IRQCHIP`: state of the chip `chip_id` (`KVM_IRQCHIP_*`).
    pub struct kvm_irqchip: linux, size 520, align 8 {
        pub chip_id: u32 = 0,
        pub pad: u32 = 4,
        pub chip: kvm_irqchip_chip = 8,
    }
}

abi_struct! {
    /// `KVM_CREATE_PIT2`.
    pub struct kvm_pit_config: linux, size 64, align 4 {
        /// `KVM_PIT_SPEAKER_DUMMY`.
        pub flags: u32 = 0,
        pub pad: [u32; 15] = 4,
    }
}

abi_struct! {
    /// `kvm_hyperv_exit.u.synic`: a SynIC MSR write.
    pub struct kvm_hyperv_exit_synic: member("kvm_hyperv_exit", "u.synic"), size 32, align 8 {
        pub msr: u32 = 0,
        pub pad2: u32 = 4,
        pub control: u64 = 8,
        pub evt_page: u64 = 16,
        pub msg_page: u64 = 24,
    }
}

abi_struct! {
    /// `kvm_hyperv_exit.u.hcall`: a Hyper-V hypercall.
    pub struct kvm_hyperv_exit_hcall: member("kvm_hyperv_exit", "u.hcall"), size 32, align 8 {
        pub input: u64 = 0,
        pub result: u64 = 8,
        pub params: [u64; 2] = 16,
    }
}

abi_struct! {
    /// `kvm_hyperv_exit.u.syndbg`: a synthetic debugger MSR access.
    pub struct kvm_hyperv_exit_syndbg: member("kvm_hyperv_exit", "u.syndbg"), size 48, align 8 {
        pub msr: u32 = 0,
        pub pad2: u32 = 4,
        pub control: u64 = 8,
        pub status: u64 = 16,
        pub send_page: u64 = 24,
        pub recv_page: u64 = 32,
        pub pending_page: u64 = 40,
    }
}

abi_union! {
    /// `kvm_hyperv_exit.u`.
    pub union kvm_hyperv_exit_u: member("kvm_hyperv_exit", "u"), storage [u64; 6], size 48, align 8 {
        synic, synic_mut: kvm_hyperv_exit_synic;
        hcall, hcall_mut: kvm_hyperv_exit_hcall;
        syndbg, syndbg_mut: kvm_hyperv_exit_syndbg;
    }
}

abi_struct! {
    /// `KVM_EXIT_HYPERV` details (`kvm_run.hyperv`).
    pub struct kvm_hyperv_exit: linux, size 56, align 8 {
        /// `KVM_EXIT_HYPERV_*`.
        pub r#type: u32 = 0 as "type",
        pub pad1: u32 = 4,
        pub u: kvm_hyperv_exit_u = 8,
    }
}

abi_struct! {
    /// `kvm_xen_exit.u.hcall`: a Xen hypercall.
    pub struct kvm_xen_exit_hcall: member("kvm_xen_exit", "u.hcall"), size 72, align 8 {
        pub longmode: u32 = 0,
        pub cpl: u32 = 4,
        pub input: u64 = 8,
        pub result: u64 = 16,
        pub params: [u64; 6] = 24,
    }
}

abi_union! {
    /// `kvm_xen_exit.u`.
    pub union kvm_xen_exit_u: member("kvm_xen_exit", "u"), storage [u64; 9], size 72, align 8 {
        hcall, hcall_mut: kvm_xen_exit_hcall;
    }
}

abi_struct! {
    /// `KVM_EXIT_XEN` details (`kvm_run.xen`).
    pub struct kvm_xen_exit: linux, size 80, align 8 {
        /// `KVM_EXIT_XEN_*`.
        pub r#type: u32 = 0 as "type",
        /// Implicit C padding.
        pub _pad: u32 = 4 as "",
        pub u: kvm_xen_exit_u = 8,
    }
}

// ---- kvm_run and its exit members -------------------------------------------------------------

abi_struct! {
    /// `KVM_EXIT_UNKNOWN`: `kvm_run.hw`.
    pub struct kvm_run_hw: member("kvm_run", "hw"), size 8, align 8 {
        pub hardware_exit_reason: u64 = 0,
    }
}

abi_struct! {
    /// `KVM_EXIT_FAIL_ENTRY`: `kvm_run.fail_entry`.
    pub struct kvm_run_fail_entry: member("kvm_run", "fail_entry"), size 16, align 8 {
        pub hardware_entry_failure_reason: u64 = 0,
        pub cpu: u32 = 8,
        /// Implicit C padding.
        pub _pad: u32 = 12 as "",
    }
}

abi_struct! {
    /// `KVM_EXIT_EXCEPTION`: `kvm_run.ex`.
    pub struct kvm_run_ex: member("kvm_run", "ex"), size 8, align 4 {
        pub exception: u32 = 0,
        pub error_code: u32 = 4,
    }
}

abi_struct! {
    /// `KVM_EXIT_IO`: `kvm_run.io`; the data is at `data_offset` from the start of `kvm_run`.
    pub struct kvm_run_io: member("kvm_run", "io"), size 16, align 8 {
        /// `KVM_EXIT_IO_IN` / `KVM_EXIT_IO_OUT`.
        pub direction: u8 = 0,
        /// Access size in bytes (1, 2, 4).
        pub size: u8 = 1,
        pub port: u16 = 2,
        /// Number of accesses (string I/O).
        pub count: u32 = 4,
        /// Offset of the data from the start of `kvm_run`.
        pub data_offset: u64 = 8,
    }
}

abi_struct! {
    /// `KVM_EXIT_DEBUG`: `kvm_run.debug`.
    pub struct kvm_run_debug: member("kvm_run", "debug"), size 32, align 8 {
        pub arch: kvm_debug_exit_arch = 0,
    }
}

abi_struct! {
    /// `KVM_EXIT_MMIO`: `kvm_run.mmio`.
    pub struct kvm_run_mmio: member("kvm_run", "mmio"), size 24, align 8 {
        pub phys_addr: u64 = 0,
        pub data: [u8; 8] = 8,
        pub len: u32 = 16,
        pub is_write: u8 = 20,
        /// Implicit C padding.
        pub _pad: [u8; 3] = 21 as "",
    }
}

abi_struct! {
    /// `KVM_EXIT_HYPERCALL`: `kvm_run.hypercall`. Linux's anonymous union `{ longmode; flags; }`
    /// is the field `flags`; `longmode()` reads its low 32 bits.
    pub struct kvm_run_hypercall: member("kvm_run", "hypercall"), size 72, align 8 {
        pub nr: u64 = 0,
        pub args: [u64; 6] = 8,
        pub ret: u64 = 56,
        /// `KVM_EXIT_HYPERCALL_LONG_MODE`, or (old ABI) `longmode` in the low 32 bits.
        pub flags: u64 = 64,
    }
    aliases { "longmode" = 64, 4; }
}

impl kvm_run_hypercall {
    /// Linux member `longmode` (low 32 bits of `flags`).
    pub fn longmode(&self) -> u32 {
        self.flags as u32
    }
}

abi_struct! {
    /// `KVM_EXIT_TPR_ACCESS`: `kvm_run.tpr_access`.
    pub struct kvm_run_tpr_access: member("kvm_run", "tpr_access"), size 16, align 8 {
        pub rip: u64 = 0,
        pub is_write: u32 = 8,
        pub pad: u32 = 12,
    }
}

abi_struct! {
    /// `KVM_EXIT_INTERNAL_ERROR`: `kvm_run.internal`.
    pub struct kvm_run_internal: member("kvm_run", "internal"), size 136, align 8 {
        /// `KVM_INTERNAL_ERROR_*`.
        pub suberror: u32 = 0,
        /// Valid entries of `data` (`KVM_CAP_INTERNAL_ERROR_DATA`).
        pub ndata: u32 = 4,
        pub data: [u64; 16] = 8,
    }
}

abi_struct! {
    /// `KVM_INTERNAL_ERROR_EMULATION` overlay of `internal`: `kvm_run.emulation_failure`. Linux
    /// wraps `insn_size`/`insn_bytes` in an anonymous union of an anonymous struct.
    pub struct kvm_run_emulation_failure: member("kvm_run", "emulation_failure"), size 32, align 8 {
        pub suberror: u32 = 0,
        pub ndata: u32 = 4,
        /// `KVM_INTERNAL_ERROR_EMULATION_FLAG_*`.
        pub flags: u64 = 8,
        pub insn_size: u8 = 16,
        pub insn_bytes: [u8; 15] = 17,
    }
}

abi_struct! {
    /// `KVM_EXIT_SYSTEM_EVENT`: `kvm_run.system_event`. Linux's anonymous union
    /// `{ flags; data[16]; }` is the field `data`; `flags()` reads `data[0]`.
    pub struct kvm_run_system_event: member("kvm_run", "system_event"), size 136, align 8 {
        /// `KVM_SYSTEM_EVENT_*`.
        pub r#type: u32 = 0 as "type",
        /// Valid entries of `data` (`KVM_CAP_SYSTEM_EVENT_DATA`).
        pub ndata: u32 = 4,
        pub data: [u64; 16] = 8,
    }
    aliases { "flags" = 8, 8; }
}

impl kvm_run_system_event {
    /// Linux member `flags` (same bytes as `data[0]`).
    pub fn flags(&self) -> u64 {
        self.data[0]
    }
}

abi_struct! {
    /// `KVM_EXIT_IOAPIC_EOI`: `kvm_run.eoi`.
    pub struct kvm_run_eoi: member("kvm_run", "eoi"), size 1, align 1 {
        pub vector: u8 = 0,
    }
}

abi_struct! {
    /// `KVM_EXIT_X86_RDMSR`/`KVM_EXIT_X86_WRMSR`: `kvm_run.msr`.
    pub struct kvm_run_msr: member("kvm_run", "msr"), size 24, align 8 {
        /// Set by userspace to inject #GP.
        pub error: u8 = 0,
        pub pad: [u8; 7] = 1,
        /// `KVM_MSR_EXIT_REASON_*`.
        pub reason: u32 = 8,
        pub index: u32 = 12,
        pub data: u64 = 16,
    }
}

abi_struct! {
    /// `KVM_EXIT_NOTIFY`: `kvm_run.notify`.
    pub struct kvm_run_notify: member("kvm_run", "notify"), size 4, align 4 {
        /// `KVM_NOTIFY_CONTEXT_INVALID`.
        pub flags: u32 = 0,
    }
}

abi_struct! {
    /// `KVM_EXIT_MEMORY_FAULT`: `kvm_run.memory_fault`.
    pub struct kvm_run_memory_fault: member("kvm_run", "memory_fault"), size 24, align 8 {
        /// `KVM_MEMORY_EXIT_FLAG_*`.
        pub flags: u64 = 0,
        pub gpa: u64 = 8,
        pub size: u64 = 16,
    }
}

abi_union! {
    /// The exit-reason union of `kvm_run` (anonymous in Linux; the Rust field is `u`), 256 bytes.
    /// Members of other architectures (s390, PowerPC, Arm, RISC-V, LoongArch) are not declared;
    /// `padding` covers their bytes.
    pub union kvm_run_u: unnamed("kvm_run", "hw"), storage [u64; 32], size 256, align 8 {
        hw, hw_mut: kvm_run_hw;
        fail_entry, fail_entry_mut: kvm_run_fail_entry;
        ex, ex_mut: kvm_run_ex;
        io, io_mut: kvm_run_io;
        debug, debug_mut: kvm_run_debug;
        mmio, mmio_mut: kvm_run_mmio;
        hypercall, hypercall_mut: kvm_run_hypercall;
        tpr_access, tpr_access_mut: kvm_run_tpr_access;
        internal, internal_mut: kvm_run_internal;
        emulation_failure, emulation_failure_mut: kvm_run_emulation_failure;
        system_event, system_event_mut: kvm_run_system_event;
        eoi, eoi_mut: kvm_run_eoi;
        hyperv, hyperv_mut: kvm_hyperv_exit;
        msr, msr_mut: kvm_run_msr;
        xen, xen_mut: kvm_xen_exit;
        notify, notify_mut: kvm_run_notify;
        memory_fault, memory_fault_mut: kvm_run_memory_fault;
        padding, padding_mut: [u8; 256];
    }
}

abi_union! {
    /// `kvm_run.s`: the synchronized registers (`KVM_CAP_SYNC_REGS`), padded to 2048 bytes.
    pub union kvm_run_s: member("kvm_run", "s"), storage [u64; 256], size 2048, align 8 {
        regs, regs_mut: kvm_sync_regs;
        padding, padding_mut: [u8; crate::SYNC_REGS_SIZE_BYTES as usize];
    }
}

abi_struct! {
    /// The page shared by `mmap(vcpu_fd, 0)`: `KVM_RUN` inputs and exit information. Userspace may
    /// change it at any time: read each field once, copy, then validate.
    pub struct kvm_run: linux, size 2352, align 8 {
        /// In: ask for `KVM_EXIT_IRQ_WINDOW_OPEN` when interrupts can be injected.
        pub request_interrupt_window: u8 = 0,
        /// In: return `-EINTR` at once (`KVM_CAP_IMMEDIATE_EXIT`).
        pub immediate_exit: u8 = 1,
        pub padding1: [u8; 6] = 2,
        /// Out: `KVM_EXIT_*`.
        pub exit_reason: u32 = 8,
        pub ready_for_interrupt_injection: u8 = 12,
        pub if_flag: u8 = 13,
        /// Out: `KVM_RUN_X86_*`.
        pub flags: u16 = 14,
        pub cr8: u64 = 16,
        pub apic_base: u64 = 24,
        /// The exit-reason union (anonymous in Linux: `run->io` is `run.u.io()` here). Its C
        /// designator is its 256-byte member `padding`, which spans the whole union.
        pub u: kvm_run_u = 32 as "padding",
        /// `KVM_SYNC_X86_*` classes valid in `s`.
        pub kvm_valid_regs: u64 = 288,
        /// `KVM_SYNC_X86_*` classes userspace changed in `s`.
        pub kvm_dirty_regs: u64 = 296,
        pub s: kvm_run_s = 304,
    }
}

// ---- coalesced MMIO ---------------------------------------------------------------------------

abi_struct! {
    /// `KVM_REGISTER_COALESCED_MMIO`/`KVM_UNREGISTER_COALESCED_MMIO`. Linux's anonymous union
    /// `{ pad; pio; }` is the field `pad`; `pio()` reads it.
    pub struct kvm_coalesced_mmio_zone: linux, size 16, align 8 {
        pub addr: u64 = 0,
        pub size: u32 = 8,
        pub pad: u32 = 12 as "pad",
    }
    aliases { "pio" = 12, 4; }
}

impl kvm_coalesced_mmio_zone {
    /// Linux member `pio` (same bytes as `pad`): nonzero for a port-I/O zone.
    pub fn pio(&self) -> u32 {
        self.pad
    }
}

abi_struct! {
    /// One entry of the coalesced MMIO ring. Linux's anonymous union `{ pad; pio; }` is `pad`.
    pub struct kvm_coalesced_mmio: linux, size 24, align 8 {
        pub phys_addr: u64 = 0,
        pub len: u32 = 8,
        pub pad: u32 = 12 as "pad",
        pub data: [u8; 8] = 16,
    }
    aliases { "pio" = 12, 4; }
}

impl kvm_coalesced_mmio {
    /// Linux member `pio` (same bytes as `pad`).
    pub fn pio(&self) -> u32 {
        self.pad
    }
}

abi_struct! {
    /// Header of the coalesced MMIO ring page (vCPU mmap page `KVM_COALESCED_MMIO_PAGE_OFFSET`);
    /// `kvm_coalesced_mmio` entries follow (see `flex`).
    pub struct kvm_coalesced_mmio_ring: linux, size 8, align 8 {
        pub first: u32 = 0,
        pub last: u32 = 4,
        /// Flexible array: the ring entries.
        pub coalesced_mmio: [kvm_coalesced_mmio; 0] = 8,
    }
}

// ---- vCPU ioctl arguments ---------------------------------------------------------------------

abi_struct! {
    /// `KVM_TRANSLATE`: guest linear to guest physical.
    pub struct kvm_translation: linux, size 24, align 8 {
        pub linear_address: u64 = 0,
        pub physical_address: u64 = 8,
        pub valid: u8 = 16,
        pub writeable: u8 = 17,
        pub usermode: u8 = 18,
        pub pad: [u8; 5] = 19,
    }
}

abi_struct! {
    /// `KVM_INTERRUPT`: inject an external interrupt vector (userspace irqchip).
    pub struct kvm_interrupt: linux, size 4, align 4 {
        pub irq: u32 = 0,
    }
}

abi_struct! {
    /// `KVM_GET_DIRTY_LOG`. Linux's anonymous union `{ dirty_bitmap; padding2; }` is the field
    /// `dirty_bitmap`, a user address.
    pub struct kvm_dirty_log: linux, size 16, align 8 {
        pub slot: u32 = 0,
        pub padding1: u32 = 4,
        /// User address of the bitmap (`void *`).
        pub dirty_bitmap: u64 = 8 as "dirty_bitmap",
    }
    aliases { "padding2" = 8, 8; }
}

abi_struct! {
    /// `KVM_CLEAR_DIRTY_LOG`. Linux's anonymous union `{ dirty_bitmap; padding2; }` is the field
    /// `dirty_bitmap`, a user address.
    pub struct kvm_clear_dirty_log: linux, size 24, align 8 {
        pub slot: u32 = 0,
        pub num_pages: u32 = 4,
        pub first_page: u64 = 8,
        /// User address of the bitmap (`void *`).
        pub dirty_bitmap: u64 = 16 as "dirty_bitmap",
    }
    aliases { "padding2" = 16, 8; }
}

abi_struct! {
    /// `KVM_SET_SIGNAL_MASK` header; `len` bytes of sigset follow (see `flex`).
    pub struct kvm_signal_mask: linux, size 4, align 4 {
        pub len: u32 = 0,
        /// Flexible array: `len` bytes of signal set.
        pub sigset: [u8; 0] = 4,
    }
}

abi_struct! {
    /// `KVM_TPR_ACCESS_REPORTING`.
    pub struct kvm_tpr_access_ctl: linux, size 40, align 4 {
        pub enabled: u32 = 0,
        pub flags: u32 = 4,
        pub reserved: [u32; 8] = 8,
    }
}

abi_struct! {
    /// `KVM_SET_VAPIC_ADDR`.
    pub struct kvm_vapic_addr: linux, size 8, align 8 {
        pub vapic_addr: u64 = 0,
    }
}

abi_struct! {
    /// `KVM_GET_MP_STATE`/`KVM_SET_MP_STATE`.
    pub struct kvm_mp_state: linux, size 4, align 4 {
        /// `KVM_MP_STATE_*`.
        pub mp_state: u32 = 0,
    }
}

abi_struct! {
    /// `KVM_SET_GUEST_DEBUG`.
    pub struct kvm_guest_debug: linux, size 72, align 8 {
        /// `KVM_GUESTDBG_*`.
        pub control: u32 = 0,
        pub pad: u32 = 4,
        pub arch: kvm_guest_debug_arch = 8,
    }
}

abi_struct! {
    /// `KVM_IOEVENTFD`: signal `fd` on a guest write to `addr`.
    pub struct kvm_ioeventfd: linux, size 64, align 8 {
        pub datamatch: u64 = 0,
        pub addr: u64 = 8,
        /// 1, 2, 4 or 8 bytes; 0 matches any length.
        pub len: u32 = 16,
        pub fd: i32 = 20,
        /// `KVM_IOEVENTFD_FLAG_*`.
        pub flags: u32 = 24,
        pub pad: [u8; 36] = 28,
    }
}

abi_struct! {
    /// `KVM_ENABLE_CAP` (VM or vCPU).
    pub struct kvm_enable_cap: linux, size 104, align 8 {
        /// `KVM_CAP_*`.
        pub cap: u32 = 0,
        pub flags: u32 = 4,
        pub args: [u64; 4] = 8,
        pub pad: [u8; 64] = 40,
    }
}

// ---- interrupt routing ------------------------------------------------------------------------

abi_struct! {
    /// Routing to a pin of an in-kernel irqchip.
    pub struct kvm_irq_routing_irqchip: linux, size 8, align 4 {
        pub irqchip: u32 = 0,
        pub pin: u32 = 4,
    }
}

abi_struct! {
    /// Routing to an MSI. Linux's anonymous union `{ pad; devid; }` is the field `pad`.
    pub struct kvm_irq_routing_msi: linux, size 16, align 4 {
        pub address_lo: u32 = 0,
        pub address_hi: u32 = 4,
        pub data: u32 = 8,
        pub pad: u32 = 12 as "pad",
    }
    aliases { "devid" = 12, 4; }
}

impl kvm_irq_routing_msi {
    /// Linux member `devid` (same bytes as `pad`), valid with `KVM_MSI_VALID_DEVID`.
    pub fn devid(&self) -> u32 {
        self.pad
    }
}

abi_struct! {
    /// Routing to an s390 adapter (declared because it sizes the routing entry union).
    pub struct kvm_irq_routing_s390_adapter: linux, size 32, align 8 {
        pub ind_addr: u64 = 0,
        pub summary_addr: u64 = 8,
        pub ind_offset: u64 = 16,
        pub summary_offset: u32 = 24,
        pub adapter_id: u32 = 28,
    }
}

abi_struct! {
    /// Routing to a Hyper-V SynIC SINT.
    pub struct kvm_irq_routing_hv_sint: linux, size 8, align 4 {
        pub vcpu: u32 = 0,
        pub sint: u32 = 4,
    }
}

abi_struct! {
    /// Routing to a Xen event channel; also the argument of `KVM_XEN_HVM_EVTCHN_SEND`.
    pub struct kvm_irq_routing_xen_evtchn: linux, size 12, align 4 {
        pub port: u32 = 0,
        pub vcpu: u32 = 4,
        pub priority: u32 = 8,
    }
}

abi_union! {
    /// The target of one routing entry (`kvm_irq_routing_entry.u`).
    pub union kvm_irq_routing_entry_u: member("kvm_irq_routing_entry", "u"), storage [u64; 4], size 32, align 8 {
        irqchip, irqchip_mut: kvm_irq_routing_irqchip;
        msi, msi_mut: kvm_irq_routing_msi;
        adapter, adapter_mut: kvm_irq_routing_s390_adapter;
        hv_sint, hv_sint_mut: kvm_irq_routing_hv_sint;
        xen_evtchn, xen_evtchn_mut: kvm_irq_routing_xen_evtchn;
        pad, pad_mut: [u32; 8];
    }
}

abi_struct! {
    /// One GSI route of `KVM_SET_GSI_ROUTING`.
    pub struct kvm_irq_routing_entry: linux, size 48, align 8 {
        pub gsi: u32 = 0,
        /// `KVM_IRQ_ROUTING_*`.
        pub r#type: u32 = 4 as "type",
        pub flags: u32 = 8,
        pub pad: u32 = 12,
        pub u: kvm_irq_routing_entry_u = 16,
    }
}

abi_struct! {
    /// `KVM_SET_GSI_ROUTING` header; `nr` `kvm_irq_routing_entry` follow (see `flex`).
    pub struct kvm_irq_routing: linux, size 8, align 8 {
        pub nr: u32 = 0,
        pub flags: u32 = 4,
        /// Flexible array: `nr` routes.
        pub entries: [kvm_irq_routing_entry; 0] = 8,
    }
}

abi_struct! {
    /// `KVM_IRQFD`: inject GSI `gsi` when `fd` is signalled.
    pub struct kvm_irqfd: linux, size 32, align 4 {
        pub fd: u32 = 0,
        pub gsi: u32 = 4,
        /// `KVM_IRQFD_FLAG_*`.
        pub flags: u32 = 8,
        pub resamplefd: u32 = 12,
        pub pad: [u8; 16] = 16,
    }
}

abi_struct! {
    /// `KVM_GET_CLOCK`/`KVM_SET_CLOCK`: kvmclock value in ns.
    pub struct kvm_clock_data: linux, size 48, align 8 {
        pub clock: u64 = 0,
        /// `KVM_CLOCK_*`.
        pub flags: u32 = 8,
        pub pad0: u32 = 12,
        pub realtime: u64 = 16,
        pub host_tsc: u64 = 24,
        pub pad: [u32; 4] = 32,
    }
}

abi_struct! {
    /// `KVM_GET_REG_LIST` header; `n` `u64` register ids follow.
    pub struct kvm_reg_list: linux, size 8, align 8 {
        pub n: u64 = 0,
        /// Flexible array: `n` register ids.
        pub reg: [u64; 0] = 8,
    }
}

abi_struct! {
    /// `KVM_GET_ONE_REG`/`KVM_SET_ONE_REG`: register `id` at user address `addr`.
    pub struct kvm_one_reg: linux, size 16, align 8 {
        pub id: u64 = 0,
        pub addr: u64 = 8,
    }
}

abi_struct! {
    /// `KVM_SIGNAL_MSI`: inject one MSI.
    pub struct kvm_msi: linux, size 32, align 4 {
        pub address_lo: u32 = 0,
        pub address_hi: u32 = 4,
        pub data: u32 = 8,
        /// `KVM_MSI_VALID_DEVID`.
        pub flags: u32 = 12,
        pub devid: u32 = 16,
        pub pad: [u8; 12] = 20,
    }
}

abi_struct! {
    /// `KVM_CREATE_DEVICE`.
    pub struct kvm_create_device: linux, size 12, align 4 {
        /// In: `KVM_DEV_TYPE_*`.
        pub r#type: u32 = 0 as "type",
        /// Out: the device descriptor.
        pub fd: u32 = 4,
        /// In: `KVM_CREATE_DEVICE_TEST`.
        pub flags: u32 = 8,
    }
}

abi_struct! {
    /// `KVM_SET_DEVICE_ATTR`/`KVM_GET_DEVICE_ATTR`/`KVM_HAS_DEVICE_ATTR` (device, VM, vCPU or
    /// system descriptor).
    pub struct kvm_device_attr: linux, size 24, align 8 {
        pub flags: u32 = 0,
        pub group: u32 = 4,
        pub attr: u64 = 8,
        /// User address of the attribute's data.
        pub addr: u64 = 16,
    }
}

abi_struct! {
    /// One entry of a vCPU's dirty ring (vCPU mmap page `KVM_DIRTY_LOG_PAGE_OFFSET`).
    pub struct kvm_dirty_gfn: linux, size 16, align 8 {
        /// `KVM_DIRTY_GFN_F_*`.
        pub flags: u32 = 0,
        pub slot: u32 = 4,
        pub offset: u64 = 8,
    }
}

abi_struct! {
    /// Header read first from a `KVM_GET_STATS_FD` descriptor.
    pub struct kvm_stats_header: linux, size 24, align 4 {
        pub flags: u32 = 0,
        pub name_size: u32 = 4,
        pub num_desc: u32 = 8,
        pub id_offset: u32 = 12,
        pub desc_offset: u32 = 16,
        pub data_offset: u32 = 20,
    }
}

abi_struct! {
    /// One statistics descriptor of a stats descriptor; `name_size` bytes of name follow.
    pub struct kvm_stats_desc: linux, size 16, align 4 {
        /// `KVM_STATS_TYPE_*` | `KVM_STATS_UNIT_*` | `KVM_STATS_BASE_*`.
        pub flags: u32 = 0,
        pub exponent: i16 = 4,
        pub size: u16 = 6,
        pub offset: u32 = 8,
        pub bucket_size: u32 = 12,
        /// Flexible array: the name.
        pub name: [u8; 0] = 16,
    }
}

abi_struct! {
    /// `KVM_SET_MEMORY_ATTRIBUTES`.
    pub struct kvm_memory_attributes: linux, size 32, align 8 {
        pub address: u64 = 0,
        pub size: u64 = 8,
        /// `KVM_MEMORY_ATTRIBUTE_*`.
        pub attributes: u64 = 16,
        pub flags: u64 = 24,
    }
}

abi_struct! {
    /// `KVM_CREATE_GUEST_MEMFD`.
    pub struct kvm_create_guest_memfd: linux, size 64, align 8 {
        pub size: u64 = 0,
        pub flags: u64 = 8,
        pub reserved: [u64; 6] = 16,
    }
}

abi_struct! {
    /// `KVM_PRE_FAULT_MEMORY`.
    pub struct kvm_pre_fault_memory: linux, size 64, align 8 {
        pub gpa: u64 = 0,
        pub size: u64 = 8,
        pub flags: u64 = 16,
        pub padding: [u64; 5] = 24,
    }
}

abi_struct! {
    /// `KVM_MEMORY_ENCRYPT_REG_REGION`/`KVM_MEMORY_ENCRYPT_UNREG_REGION`.
    pub struct kvm_enc_region: linux, size 16, align 8 {
        pub addr: u64 = 0,
        pub size: u64 = 8,
    }
}

abi_layouts! {
    /// Layouts of this module's types.
    list KVM_STRUCTS;
    kvm_userspace_memory_region, kvm_userspace_memory_region2, kvm_irq_level, kvm_irqchip_chip,
    kvm_irqchip, kvm_pit_config, kvm_hyperv_exit_synic, kvm_hyperv_exit_hcall,
    kvm_hyperv_exit_syndbg, kvm_hyperv_exit_u, kvm_hyperv_exit, kvm_xen_exit_hcall,
    kvm_xen_exit_u, kvm_xen_exit, kvm_run_hw, kvm_run_fail_entry, kvm_run_ex, kvm_run_io,
    kvm_run_debug, kvm_run_mmio, kvm_run_hypercall, kvm_run_tpr_access, kvm_run_internal,
    kvm_run_emulation_failure, kvm_run_system_event, kvm_run_eoi, kvm_run_msr, kvm_run_notify,
    kvm_run_memory_fault, kvm_run_u, kvm_run_s, kvm_run, kvm_coalesced_mmio_zone,
    kvm_coalesced_mmio, kvm_coalesced_mmio_ring, kvm_translation, kvm_interrupt, kvm_dirty_log,
    kvm_clear_dirty_log, kvm_signal_mask, kvm_tpr_access_ctl, kvm_vapic_addr, kvm_mp_state,
    kvm_guest_debug, kvm_ioeventfd, kvm_enable_cap, kvm_irq_routing_irqchip, kvm_irq_routing_msi,
    kvm_irq_routing_s390_adapter, kvm_irq_routing_hv_sint, kvm_irq_routing_xen_evtchn,
    kvm_irq_routing_entry_u, kvm_irq_routing_entry, kvm_irq_routing, kvm_irqfd, kvm_clock_data,
    kvm_reg_list, kvm_one_reg, kvm_msi, kvm_create_device, kvm_device_attr, kvm_dirty_gfn,
    kvm_stats_header, kvm_stats_desc, kvm_memory_attributes, kvm_create_guest_memfd,
    kvm_pre_fault_memory, kvm_enc_region,
}
