//! Structures of `<asm/kvm.h>` for x86_64 (registers, interrupt controllers, timers, MSRs,
//! CPUID, events, XSAVE, nested state, MCE, Xen and Hyper-V helpers).

use crate::manifest::{abi_layouts, abi_struct, abi_union};

abi_struct! {
    /// `KVM_GET_IRQCHIP`/`KVM_SET_IRQCHIP` state of one 8259 PIC.
    pub struct kvm_pic_state: linux, size 16, align 1 {
        pub last_irr: u8 = 0,
        pub irr: u8 = 1,
        pub imr: u8 = 2,
        pub isr: u8 = 3,
        pub priority_add: u8 = 4,
        pub irq_base: u8 = 5,
        pub read_reg_select: u8 = 6,
        pub poll: u8 = 7,
        pub special_mask: u8 = 8,
        pub init_state: u8 = 9,
        pub auto_eoi: u8 = 10,
        pub rotate_on_auto_eoi: u8 = 11,
        pub special_fully_nested_mode: u8 = 12,
        pub init4: u8 = 13,
        pub elcr: u8 = 14,
        pub elcr_mask: u8 = 15,
    }
}

abi_struct! {
    /// Bit-field view of one IOAPIC redirection entry (`redirtbl[i].fields`); Linux's 1-bit and
    /// 3-bit fields live in `flags_lo` (bits: delivery_mode 0-2, dest_mode 3, delivery_status 4,
    /// polarity 5, remote_irr 6, trig_mode 7) and `flags_hi` (mask 0, reserve 1-7).
    pub struct kvm_ioapic_redirtbl_fields: member("kvm_ioapic_state", "redirtbl[0].fields"), size 8, align 1 {
        pub vector: u8 = 0,
        /// delivery_mode:3, dest_mode:1, delivery_status:1, polarity:1, remote_irr:1, trig_mode:1.
        pub flags_lo: u8 = 1 as "",
        /// mask:1, reserve:7.
        pub flags_hi: u8 = 2 as "",
        pub reserved: [u8; 4] = 3,
        pub dest_id: u8 = 7,
    }
}

abi_union! {
    /// One IOAPIC redirection table entry: `bits` or `fields`.
    pub union kvm_ioapic_redirtbl: member("kvm_ioapic_state", "redirtbl[0]"), storage u64, size 8, align 8 {
        bits, bits_mut: u64;
        fields, fields_mut: kvm_ioapic_redirtbl_fields;
    }
}

abi_struct! {
    /// `KVM_GET_IRQCHIP`/`KVM_SET_IRQCHIP` state of the IOAPIC.
    pub struct kvm_ioapic_state: linux, size 216, align 8 {
        pub base_address: u64 = 0,
        pub ioregsel: u32 = 8,
        pub id: u32 = 12,
        pub irr: u32 = 16,
        pub pad: u32 = 20,
        pub redirtbl: [kvm_ioapic_redirtbl; crate::KVM_IOAPIC_NUM_PINS as usize] = 24,
    }
}

abi_struct! {
    /// `KVM_GET_REGS`/`KVM_SET_REGS`: general-purpose registers, RIP and RFLAGS.
    pub struct kvm_regs: linux, size 144, align 8 {
        pub rax: u64 = 0,
        pub rbx: u64 = 8,
        pub rcx: u64 = 16,
        pub rdx: u64 = 24,
        pub rsi: u64 = 32,
        pub rdi: u64 = 40,
        pub rsp: u64 = 48,
        pub rbp: u64 = 56,
        pub r8: u64 = 64,
        pub r9: u64 = 72,
        pub r10: u64 = 80,
        pub r11: u64 = 88,
        pub r12: u64 = 96,
        pub r13: u64 = 104,
        pub r14: u64 = 112,
        pub r15: u64 = 120,
        pub rip: u64 = 128,
        pub rflags: u64 = 136,
    }
}

abi_struct! {
    /// `KVM_GET_LAPIC`/`KVM_SET_LAPIC`: the local APIC register page (first 1 KiB).
    pub struct kvm_lapic_state: linux, size 1024, align 1 {
        pub regs: [u8; crate::KVM_APIC_REG_SIZE as usize] = 0,
    }
}

abi_struct! {
    /// A segment register with its hidden part (in `kvm_sregs`).
    pub struct kvm_segment: linux, size 24, align 8 {
        pub base: u64 = 0,
        pub limit: u32 = 8,
        pub selector: u16 = 12,
        pub r#type: u8 = 14 as "type",
        pub present: u8 = 15,
        pub dpl: u8 = 16,
        pub db: u8 = 17,
        pub s: u8 = 18,
        pub l: u8 = 19,
        pub g: u8 = 20,
        pub avl: u8 = 21,
        pub unusable: u8 = 22,
        pub padding: u8 = 23,
    }
}

abi_struct! {
    /// A descriptor-table register (GDTR/IDTR) in `kvm_sregs`.
    pub struct kvm_dtable: linux, size 16, align 8 {
        pub base: u64 = 0,
        pub limit: u16 = 8,
        pub padding: [u16; 3] = 10,
    }
}

abi_struct! {
    /// `KVM_GET_SREGS`/`KVM_SET_SREGS`: segment, control and system registers.
    pub struct kvm_sregs: linux, size 312, align 8 {
        pub cs: kvm_segment = 0,
        pub ds: kvm_segment = 24,
        pub es: kvm_segment = 48,
        pub fs: kvm_segment = 72,
        pub gs: kvm_segment = 96,
        pub ss: kvm_segment = 120,
        pub tr: kvm_segment = 144,
        pub ldt: kvm_segment = 168,
        pub gdt: kvm_dtable = 192,
        pub idt: kvm_dtable = 208,
        pub cr0: u64 = 224,
        pub cr2: u64 = 232,
        pub cr3: u64 = 240,
        pub cr4: u64 = 248,
        pub cr8: u64 = 256,
        pub efer: u64 = 264,
        pub apic_base: u64 = 272,
        /// One bit per pending external interrupt vector (at most one set).
        pub interrupt_bitmap: [u64; (crate::KVM_NR_INTERRUPTS as usize).div_ceil(64)] = 280,
    }
}

abi_struct! {
    /// `KVM_GET_SREGS2`/`KVM_SET_SREGS2`: like `kvm_sregs` plus PAE PDPTRs, without the
    /// interrupt bitmap.
    pub struct kvm_sregs2: linux, size 320, align 8 {
        pub cs: kvm_segment = 0,
        pub ds: kvm_segment = 24,
        pub es: kvm_segment = 48,
        pub fs: kvm_segment = 72,
        pub gs: kvm_segment = 96,
        pub ss: kvm_segment = 120,
        pub tr: kvm_segment = 144,
        pub ldt: kvm_segment = 168,
        pub gdt: kvm_dtable = 192,
        pub idt: kvm_dtable = 208,
        pub cr0: u64 = 224,
        pub cr2: u64 = 232,
        pub cr3: u64 = 240,
        pub cr4: u64 = 248,
        pub cr8: u64 = 256,
        pub efer: u64 = 264,
        pub apic_base: u64 = 272,
        /// `KVM_SREGS2_FLAGS_*`.
        pub flags: u64 = 280,
        pub pdptrs: [u64; 4] = 288,
    }
}

abi_struct! {
    /// `KVM_GET_FPU`/`KVM_SET_FPU`: x87 and SSE state in FXSAVE terms.
    pub struct kvm_fpu: linux, size 416, align 8 {
        pub fpr: [[u8; 16]; 8] = 0,
        pub fcw: u16 = 128,
        pub fsw: u16 = 130,
        /// Abridged tag word, in FXSAVE format.
        pub ftwx: u8 = 132,
        pub pad1: u8 = 133,
        pub last_opcode: u16 = 134,
        pub last_ip: u64 = 136,
        pub last_dp: u64 = 144,
        pub xmm: [[u8; 16]; 16] = 152,
        pub mxcsr: u32 = 408,
        pub pad2: u32 = 412,
    }
}

abi_struct! {
    /// One MSR index/value pair (entries of `kvm_msrs`).
    pub struct kvm_msr_entry: linux, size 16, align 8 {
        pub index: u32 = 0,
        pub reserved: u32 = 4,
        pub data: u64 = 8,
    }
}

abi_struct! {
    /// `KVM_GET_MSRS`/`KVM_SET_MSRS` header; `nmsrs` `kvm_msr_entry` follow (see `flex`).
    pub struct kvm_msrs: linux, size 8, align 8 {
        pub nmsrs: u32 = 0,
        pub pad: u32 = 4,
        /// Flexible array: `nmsrs` entries.
        pub entries: [kvm_msr_entry; 0] = 8,
    }
}

abi_struct! {
    /// `KVM_GET_MSR_INDEX_LIST`/`KVM_GET_MSR_FEATURE_INDEX_LIST` header; `nmsrs` `u32` indices
    /// follow (see `flex`).
    pub struct kvm_msr_list: linux, size 4, align 4 {
        pub nmsrs: u32 = 0,
        /// Flexible array: `nmsrs` MSR indices.
        pub indices: [u32; 0] = 4,
    }
}

abi_struct! {
    /// One range of `KVM_X86_SET_MSR_FILTER`; `bitmap` is a user address.
    pub struct kvm_msr_filter_range: linux, size 24, align 8 {
        /// `KVM_MSR_FILTER_READ` / `KVM_MSR_FILTER_WRITE`.
        pub flags: u32 = 0,
        /// Number of MSRs the bitmap covers.
        pub nmsrs: u32 = 4,
        /// First MSR index covered.
        pub base: u32 = 8,
        /// Implicit C padding before the pointer.
        pub _pad: u32 = 12 as "",
        /// User address of the bitmap (`__u8 *`).
        pub bitmap: u64 = 16,
    }
}

abi_struct! {
    /// `KVM_X86_SET_MSR_FILTER`: default action and up to 16 ranges.
    pub struct kvm_msr_filter: linux, size 392, align 8 {
        /// `KVM_MSR_FILTER_DEFAULT_*`.
        pub flags: u32 = 0,
        /// Implicit C padding.
        pub _pad: u32 = 4 as "",
        pub ranges: [kvm_msr_filter_range; crate::KVM_MSR_FILTER_MAX_RANGES as usize] = 8,
    }
}

abi_struct! {
    /// One CPUID leaf for the legacy `KVM_SET_CPUID`.
    pub struct kvm_cpuid_entry: linux, size 24, align 4 {
        pub function: u32 = 0,
        pub eax: u32 = 4,
        pub ebx: u32 = 8,
        pub ecx: u32 = 12,
        pub edx: u32 = 16,
        pub padding: u32 = 20,
    }
}

abi_struct! {
    /// Legacy `KVM_SET_CPUID` header; `nent` `kvm_cpuid_entry` follow.
    pub struct kvm_cpuid: linux, size 8, align 4 {
        pub nent: u32 = 0,
        pub padding: u32 = 4,
        /// Flexible array: `nent` entries.
        pub entries: [kvm_cpuid_entry; 0] = 8,
    }
}

abi_struct! {
    /// One CPUID leaf/subleaf (entries of `kvm_cpuid2`).
    pub struct kvm_cpuid_entry2: linux, size 40, align 4 {
        pub function: u32 = 0,
        pub index: u32 = 4,
        /// `KVM_CPUID_FLAG_*`.
        pub flags: u32 = 8,
        pub eax: u32 = 12,
        pub ebx: u32 = 16,
        pub ecx: u32 = 20,
        pub edx: u32 = 24,
        pub padding: [u32; 3] = 28,
    }
}

abi_struct! {
    /// `KVM_SET_CPUID2`/`KVM_GET_CPUID2`/`KVM_GET_SUPPORTED_CPUID` header; `nent`
    /// `kvm_cpuid_entry2` follow (see `flex`).
    pub struct kvm_cpuid2: linux, size 8, align 4 {
        pub nent: u32 = 0,
        pub padding: u32 = 4,
        /// Flexible array: `nent` entries.
        pub entries: [kvm_cpuid_entry2; 0] = 8,
    }
}

abi_struct! {
    /// State of one 8254 PIT channel.
    pub struct kvm_pit_channel_state: linux, size 24, align 8 {
        /// Reload value; can be 65536.
        pub count: u32 = 0,
        pub latched_count: u16 = 4,
        pub count_latched: u8 = 6,
        pub status_latched: u8 = 7,
        pub status: u8 = 8,
        pub read_state: u8 = 9,
        pub write_state: u8 = 10,
        pub write_latch: u8 = 11,
        pub rw_mode: u8 = 12,
        pub mode: u8 = 13,
        pub bcd: u8 = 14,
        pub gate: u8 = 15,
        /// Host time (ns) at which `count` was loaded.
        pub count_load_time: i64 = 16,
    }
}

abi_struct! {
    /// `KVM_EXIT_DEBUG` details (`kvm_run.debug.arch`).
    pub struct kvm_debug_exit_arch: linux, size 32, align 8 {
        pub exception: u32 = 0,
        pub pad: u32 = 4,
        pub pc: u64 = 8,
        pub dr6: u64 = 16,
        pub dr7: u64 = 24,
    }
}

abi_struct! {
    /// Debug registers for `KVM_SET_GUEST_DEBUG` (`kvm_guest_debug.arch`).
    pub struct kvm_guest_debug_arch: linux, size 64, align 8 {
        pub debugreg: [u64; 8] = 0,
    }
}

abi_struct! {
    /// `KVM_GET_PIT`/`KVM_SET_PIT`: the three PIT channels.
    pub struct kvm_pit_state: linux, size 72, align 8 {
        pub channels: [kvm_pit_channel_state; 3] = 0,
    }
}

abi_struct! {
    /// `KVM_GET_PIT2`/`KVM_SET_PIT2`: PIT channels plus `KVM_PIT_FLAGS_*`.
    pub struct kvm_pit_state2: linux, size 112, align 8 {
        pub channels: [kvm_pit_channel_state; 3] = 0,
        pub flags: u32 = 72,
        pub reserved: [u32; 9] = 76,
    }
}

abi_struct! {
    /// `KVM_REINJECT_CONTROL`: whether missed PIT ticks are reinjected.
    pub struct kvm_reinject_control: linux, size 32, align 1 {
        pub pit_reinject: u8 = 0,
        pub reserved: [u8; 31] = 1,
    }
}

abi_struct! {
    /// Pending or injected exception (`kvm_vcpu_events.exception`).
    pub struct kvm_vcpu_events_exception: member("kvm_vcpu_events", "exception"), size 8, align 4 {
        pub injected: u8 = 0,
        pub nr: u8 = 1,
        pub has_error_code: u8 = 2,
        pub pending: u8 = 3,
        pub error_code: u32 = 4,
    }
}

abi_struct! {
    /// Injected interrupt and interrupt shadow (`kvm_vcpu_events.interrupt`).
    pub struct kvm_vcpu_events_interrupt: member("kvm_vcpu_events", "interrupt"), size 4, align 1 {
        pub injected: u8 = 0,
        pub nr: u8 = 1,
        pub soft: u8 = 2,
        /// `KVM_X86_SHADOW_INT_*`.
        pub shadow: u8 = 3,
    }
}

abi_struct! {
    /// NMI state (`kvm_vcpu_events.nmi`).
    pub struct kvm_vcpu_events_nmi: member("kvm_vcpu_events", "nmi"), size 4, align 1 {
        pub injected: u8 = 0,
        pub pending: u8 = 1,
        pub masked: u8 = 2,
        pub pad: u8 = 3,
    }
}

abi_struct! {
    /// SMM state (`kvm_vcpu_events.smi`).
    pub struct kvm_vcpu_events_smi: member("kvm_vcpu_events", "smi"), size 4, align 1 {
        pub smm: u8 = 0,
        pub pending: u8 = 1,
        pub smm_inside_nmi: u8 = 2,
        pub latched_init: u8 = 3,
    }
}

abi_struct! {
    /// Pending triple fault (`kvm_vcpu_events.triple_fault`).
    pub struct kvm_vcpu_events_triple_fault: member("kvm_vcpu_events", "triple_fault"), size 1, align 1 {
        pub pending: u8 = 0,
    }
}

abi_struct! {
    /// `KVM_GET_VCPU_EVENTS`/`KVM_SET_VCPU_EVENTS`: pending and injected events.
    pub struct kvm_vcpu_events: linux, size 64, align 8 {
        pub exception: kvm_vcpu_events_exception = 0,
        pub interrupt: kvm_vcpu_events_interrupt = 8,
        pub nmi: kvm_vcpu_events_nmi = 12,
        pub sipi_vector: u32 = 16,
        /// `KVM_VCPUEVENT_VALID_*`.
        pub flags: u32 = 20,
        pub smi: kvm_vcpu_events_smi = 24,
        pub triple_fault: kvm_vcpu_events_triple_fault = 28,
        pub reserved: [u8; 26] = 29,
        pub exception_has_payload: u8 = 55,
        pub exception_payload: u64 = 56,
    }
}

abi_struct! {
    /// `KVM_GET_DEBUGREGS`/`KVM_SET_DEBUGREGS`.
    pub struct kvm_debugregs: linux, size 128, align 8 {
        pub db: [u64; 4] = 0,
        pub dr6: u64 = 32,
        pub dr7: u64 = 40,
        pub flags: u64 = 48,
        pub reserved: [u64; 9] = 56,
    }
}

abi_struct! {
    /// `KVM_GET_XSAVE`/`KVM_SET_XSAVE`: the 4 KiB XSAVE area. `KVM_GET_XSAVE2` (and
    /// `KVM_SET_XSAVE` after `KVM_CAP_XSAVE2`) transfer `KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)`
    /// bytes, i.e. this region followed by `extra` (see `flex`).
    pub struct kvm_xsave: linux, size 4096, align 4 {
        pub region: [u32; 1024] = 0,
        /// Flexible array: XSAVE2 bytes beyond 4096.
        pub extra: [u32; 0] = 4096,
    }
}

abi_struct! {
    /// One extended control register (in `kvm_xcrs`).
    pub struct kvm_xcr: linux, size 16, align 8 {
        pub xcr: u32 = 0,
        pub reserved: u32 = 4,
        pub value: u64 = 8,
    }
}

abi_struct! {
    /// `KVM_GET_XCRS`/`KVM_SET_XCRS`.
    pub struct kvm_xcrs: linux, size 392, align 8 {
        pub nr_xcrs: u32 = 0,
        pub flags: u32 = 4,
        pub xcrs: [kvm_xcr; crate::KVM_MAX_XCRS as usize] = 8,
        pub padding: [u64; 16] = 264,
    }
}

abi_struct! {
    /// Registers shared through `kvm_run.s.regs` (`KVM_CAP_SYNC_REGS`, `KVM_SYNC_X86_*`).
    pub struct kvm_sync_regs: linux, size 520, align 8 {
        pub regs: kvm_regs = 0,
        pub sregs: kvm_sregs = 144,
        pub events: kvm_vcpu_events = 456,
    }
}

abi_struct! {
    /// Nested VMX data following a `kvm_nested_state` header.
    pub struct kvm_vmx_nested_state_data: linux, size 8192, align 1 {
        pub vmcs12: [u8; crate::KVM_STATE_NESTED_VMX_VMCS_SIZE as usize] = 0,
        pub shadow_vmcs12: [u8; crate::KVM_STATE_NESTED_VMX_VMCS_SIZE as usize] = 4096,
    }
}

abi_struct! {
    /// SMM part of `kvm_vmx_nested_state_hdr`.
    pub struct kvm_vmx_nested_state_hdr_smm: member("kvm_vmx_nested_state_hdr", "smm"), size 2, align 2 {
        /// `KVM_STATE_NESTED_SMM_*`.
        pub flags: u16 = 0,
    }
}

abi_struct! {
    /// VMX-specific header of `kvm_nested_state`.
    pub struct kvm_vmx_nested_state_hdr: linux, size 32, align 8 {
        pub vmxon_pa: u64 = 0,
        pub vmcs12_pa: u64 = 8,
        pub smm: kvm_vmx_nested_state_hdr_smm = 16,
        pub pad: u16 = 18,
        /// `KVM_STATE_VMX_PREEMPTION_TIMER_DEADLINE`.
        pub flags: u32 = 20,
        pub preemption_timer_deadline: u64 = 24,
    }
}

abi_struct! {
    /// Nested SVM data following a `kvm_nested_state` header.
    pub struct kvm_svm_nested_state_data: linux, size 4096, align 1 {
        /// Save area, used only with `KVM_STATE_NESTED_RUN_PENDING`.
        pub vmcb12: [u8; crate::KVM_STATE_NESTED_SVM_VMCB_SIZE as usize] = 0,
    }
}

abi_struct! {
    /// SVM-specific header of `kvm_nested_state`.
    pub struct kvm_svm_nested_state_hdr: linux, size 8, align 8 {
        pub vmcb_pa: u64 = 0,
    }
}

abi_union! {
    /// Vendor header of `kvm_nested_state` (`hdr`), padded to 120 bytes.
    pub union kvm_nested_state_hdr: member("kvm_nested_state", "hdr"), storage [u64; 15], size 120, align 8 {
        vmx, vmx_mut: kvm_vmx_nested_state_hdr;
        svm, svm_mut: kvm_svm_nested_state_hdr;
        pad, pad_mut: [u8; 120];
    }
}

abi_struct! {
    /// `KVM_GET_NESTED_STATE`/`KVM_SET_NESTED_STATE` header (128 bytes); `size` bytes in all,
    /// with `data` (VMX or SVM) after the header (see `flex`).
    pub struct kvm_nested_state: linux, size 128, align 8 {
        /// `KVM_STATE_NESTED_*`.
        pub flags: u16 = 0,
        /// `KVM_STATE_NESTED_FORMAT_*`.
        pub format: u16 = 2,
        /// Total size including the data that follows.
        pub size: u32 = 4,
        pub hdr: kvm_nested_state_hdr = 8,
    }
    aliases { "data" = 128, 0; "data.vmx" = 128, 0; "data.svm" = 128, 0; }
}

abi_struct! {
    /// `KVM_SET_PMU_EVENT_FILTER` header; `nevents` `u64` events follow.
    pub struct kvm_pmu_event_filter: linux, size 32, align 8 {
        /// `KVM_PMU_EVENT_ALLOW` / `KVM_PMU_EVENT_DENY`.
        pub action: u32 = 0,
        pub nevents: u32 = 4,
        pub fixed_counter_bitmap: u32 = 8,
        pub flags: u32 = 12,
        pub pad: [u32; 4] = 16,
        /// Flexible array: `nevents` events.
        pub events: [u64; 0] = 32,
    }
}

abi_struct! {
    /// `KVM_X86_SET_MCE`: a machine-check event to inject.
    pub struct kvm_x86_mce: linux, size 64, align 8 {
        pub status: u64 = 0,
        pub addr: u64 = 8,
        pub misc: u64 = 16,
        pub mcg_status: u64 = 24,
        pub bank: u8 = 32,
        pub pad1: [u8; 7] = 33,
        pub pad2: [u64; 3] = 40,
    }
}

abi_struct! {
    /// `KVM_XEN_HVM_CONFIG`: Xen hypercall page MSR and blobs.
    pub struct kvm_xen_hvm_config: linux, size 56, align 8 {
        /// `KVM_XEN_HVM_CONFIG_*`.
        pub flags: u32 = 0,
        pub msr: u32 = 4,
        pub blob_addr_32: u64 = 8,
        pub blob_addr_64: u64 = 16,
        pub blob_size_32: u8 = 24,
        pub blob_size_64: u8 = 25,
        pub pad2: [u8; 30] = 26,
    }
}

abi_union! {
    /// `kvm_xen_hvm_attr.u.shared_info`: guest frame or host virtual address of the shared info.
    pub union kvm_xen_hvm_attr_u_shared_info: member("kvm_xen_hvm_attr", "u.shared_info"), storage u64, size 8, align 8 {
        gfn, gfn_mut: u64;
        hva, hva_mut: u64;
    }
}

abi_struct! {
    /// `kvm_xen_hvm_attr.u.evtchn.deliver.port`: loop back to a guest port.
    pub struct kvm_xen_hvm_attr_u_evtchn_deliver_port: member("kvm_xen_hvm_attr", "u.evtchn.deliver.port"), size 12, align 4 {
        pub port: u32 = 0,
        pub vcpu: u32 = 4,
        pub priority: u32 = 8,
    }
}

abi_struct! {
    /// `kvm_xen_hvm_attr.u.evtchn.deliver.eventfd`: signal an eventfd.
    pub struct kvm_xen_hvm_attr_u_evtchn_deliver_eventfd: member("kvm_xen_hvm_attr", "u.evtchn.deliver.eventfd"), size 8, align 4 {
        pub port: u32 = 0,
        pub fd: i32 = 4,
    }
}

abi_union! {
    /// `kvm_xen_hvm_attr.u.evtchn.deliver`.
    pub union kvm_xen_hvm_attr_u_evtchn_deliver: member("kvm_xen_hvm_attr", "u.evtchn.deliver"), storage [u32; 4], size 16, align 4 {
        port, port_mut: kvm_xen_hvm_attr_u_evtchn_deliver_port;
        eventfd, eventfd_mut: kvm_xen_hvm_attr_u_evtchn_deliver_eventfd;
        padding, padding_mut: [u32; 4];
    }
}

abi_struct! {
    /// `kvm_xen_hvm_attr.u.evtchn`: an event channel to intercept.
    pub struct kvm_xen_hvm_attr_u_evtchn: member("kvm_xen_hvm_attr", "u.evtchn"), size 28, align 4 {
        pub send_port: u32 = 0,
        pub r#type: u32 = 4 as "type",
        /// `KVM_XEN_EVTCHN_*`.
        pub flags: u32 = 8,
        pub deliver: kvm_xen_hvm_attr_u_evtchn_deliver = 12,
    }
}

abi_union! {
    /// `kvm_xen_hvm_attr.u`.
    pub union kvm_xen_hvm_attr_u: member("kvm_xen_hvm_attr", "u"), storage [u64; 8], size 64, align 8 {
        long_mode, long_mode_mut: u8;
        vector, vector_mut: u8;
        runstate_update_flag, runstate_update_flag_mut: u8;
        shared_info, shared_info_mut: kvm_xen_hvm_attr_u_shared_info;
        evtchn, evtchn_mut: kvm_xen_hvm_attr_u_evtchn;
        xen_version, xen_version_mut: u32;
        pad, pad_mut: [u64; 8];
    }
}

abi_struct! {
    /// `KVM_XEN_HVM_GET_ATTR`/`KVM_XEN_HVM_SET_ATTR`.
    pub struct kvm_xen_hvm_attr: linux, size 72, align 8 {
        /// `KVM_XEN_ATTR_TYPE_*`.
        pub r#type: u16 = 0 as "type",
        pub pad: [u16; 3] = 2,
        pub u: kvm_xen_hvm_attr_u = 8,
    }
}

abi_struct! {
    /// `kvm_xen_vcpu_attr.u.runstate`.
    pub struct kvm_xen_vcpu_attr_u_runstate: member("kvm_xen_vcpu_attr", "u.runstate"), size 48, align 8 {
        pub state: u64 = 0,
        pub state_entry_time: u64 = 8,
        pub time_running: u64 = 16,
        pub time_runnable: u64 = 24,
        pub time_blocked: u64 = 32,
        pub time_offline: u64 = 40,
    }
}

abi_struct! {
    /// `kvm_xen_vcpu_attr.u.timer`.
    pub struct kvm_xen_vcpu_attr_u_timer: member("kvm_xen_vcpu_attr", "u.timer"), size 16, align 8 {
        pub port: u32 = 0,
        pub priority: u32 = 4,
        pub expires_ns: u64 = 8,
    }
}

abi_union! {
    /// `kvm_xen_vcpu_attr.u`.
    pub union kvm_xen_vcpu_attr_u: member("kvm_xen_vcpu_attr", "u"), storage [u64; 8], size 64, align 8 {
        gpa, gpa_mut: u64;
        hva, hva_mut: u64;
        pad, pad_mut: [u64; 8];
        runstate, runstate_mut: kvm_xen_vcpu_attr_u_runstate;
        vcpu_id, vcpu_id_mut: u32;
        timer, timer_mut: kvm_xen_vcpu_attr_u_timer;
        vector, vector_mut: u8;
    }
}

abi_struct! {
    /// `KVM_XEN_VCPU_GET_ATTR`/`KVM_XEN_VCPU_SET_ATTR`.
    pub struct kvm_xen_vcpu_attr: linux, size 72, align 8 {
        /// `KVM_XEN_VCPU_ATTR_TYPE_*`.
        pub r#type: u16 = 0 as "type",
        pub pad: [u16; 3] = 2,
        pub u: kvm_xen_vcpu_attr_u = 8,
    }
}

abi_struct! {
    /// `KVM_HYPERV_EVENTFD`: route a Hyper-V connection id to an eventfd.
    pub struct kvm_hyperv_eventfd: linux, size 24, align 4 {
        pub conn_id: u32 = 0,
        pub fd: i32 = 4,
        /// `KVM_HYPERV_EVENTFD_DEASSIGN`.
        pub flags: u32 = 8,
        pub padding: [u32; 3] = 12,
    }
}

abi_struct! {
    /// `KVM_MEMORY_ENCRYPT_OP` argument (SEV command).
    pub struct kvm_sev_cmd: linux, size 24, align 8 {
        pub id: u32 = 0,
        pub pad0: u32 = 4,
        pub data: u64 = 8,
        pub error: u32 = 16,
        pub sev_fd: u32 = 20,
    }
}

abi_layouts! {
    /// Layouts of this module's types.
    list X86_STRUCTS;
    kvm_pic_state, kvm_ioapic_redirtbl_fields, kvm_ioapic_redirtbl, kvm_ioapic_state, kvm_regs,
    kvm_lapic_state, kvm_segment, kvm_dtable, kvm_sregs, kvm_sregs2, kvm_fpu, kvm_msr_entry,
    kvm_msrs, kvm_msr_list, kvm_msr_filter_range, kvm_msr_filter, kvm_cpuid_entry, kvm_cpuid,
    kvm_cpuid_entry2, kvm_cpuid2, kvm_pit_channel_state, kvm_debug_exit_arch,
    kvm_guest_debug_arch, kvm_pit_state, kvm_pit_state2, kvm_reinject_control,
    kvm_vcpu_events_exception, kvm_vcpu_events_interrupt, kvm_vcpu_events_nmi,
    kvm_vcpu_events_smi, kvm_vcpu_events_triple_fault, kvm_vcpu_events, kvm_debugregs, kvm_xsave,
    kvm_xcr, kvm_xcrs, kvm_sync_regs, kvm_vmx_nested_state_data, kvm_vmx_nested_state_hdr_smm,
    kvm_vmx_nested_state_hdr, kvm_svm_nested_state_data, kvm_svm_nested_state_hdr,
    kvm_nested_state_hdr, kvm_nested_state, kvm_pmu_event_filter, kvm_x86_mce,
    kvm_xen_hvm_config, kvm_xen_hvm_attr_u_shared_info, kvm_xen_hvm_attr_u_evtchn_deliver_port,
    kvm_xen_hvm_attr_u_evtchn_deliver_eventfd, kvm_xen_hvm_attr_u_evtchn_deliver,
    kvm_xen_hvm_attr_u_evtchn, kvm_xen_hvm_attr_u, kvm_xen_hvm_attr, kvm_xen_vcpu_attr_u_runstate,
    kvm_xen_vcpu_attr_u_timer, kvm_xen_vcpu_attr_u, kvm_xen_vcpu_attr, kvm_hyperv_eventfd,
    kvm_sev_cmd,
}
