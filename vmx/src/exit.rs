//! VM-exit decoding: basic exit reasons (SDM vol. 3D appendix C) and the exit qualification
//! and interruption-information formats (SDM vol. 3C §28.2 "Recording VM-Exit Information")
//! into one [`DecodedExit`].
//!
//! Decoding is a pure function of the raw exit fields ([`RawExit`]); [`RawExit::read`] gathers
//! them from the VMCS right after the exit.

use crate::vmcs::{VmFail, Vmcs};
use x86::vmx::vmcs::ro;

/// Basic exit reasons (appendix C) this crate names.
pub mod reason {
    /// Exception or NMI.
    pub const EXCEPTION_NMI: u16 = 0;
    /// External interrupt.
    pub const EXTERNAL_INTERRUPT: u16 = 1;
    /// Triple fault.
    pub const TRIPLE_FAULT: u16 = 2;
    /// INIT signal.
    pub const INIT: u16 = 3;
    /// Start-up IPI.
    pub const SIPI: u16 = 4;
    /// I/O SMI.
    pub const IO_SMI: u16 = 5;
    /// Other SMI.
    pub const OTHER_SMI: u16 = 6;
    /// Interrupt window.
    pub const INTERRUPT_WINDOW: u16 = 7;
    /// NMI window.
    pub const NMI_WINDOW: u16 = 8;
    /// Task switch.
    pub const TASK_SWITCH: u16 = 9;
    /// CPUID.
    pub const CPUID: u16 = 10;
    /// GETSEC.
    pub const GETSEC: u16 = 11;
    /// HLT.
    pub const HLT: u16 = 12;
    /// INVD.
    pub const INVD: u16 = 13;
    /// INVLPG.
    pub const INVLPG: u16 = 14;
    /// RDPMC.
    pub const RDPMC: u16 = 15;
    /// RDTSC.
    pub const RDTSC: u16 = 16;
    /// RSM.
    pub const RSM: u16 = 17;
    /// VMCALL.
    pub const VMCALL: u16 = 18;
    /// VMCLEAR (first of the VMX instructions 19..=27).
    pub const VMCLEAR: u16 = 19;
    /// VMXON (last of the VMX instructions 19..=27).
    pub const VMXON: u16 = 27;
    /// Control-register access.
    pub const CR_ACCESS: u16 = 28;
    /// MOV DR.
    pub const DR_ACCESS: u16 = 29;
    /// I/O instruction.
    pub const IO_INSTRUCTION: u16 = 30;
    /// RDMSR.
    pub const RDMSR: u16 = 31;
    /// WRMSR.
    pub const WRMSR: u16 = 32;
    /// VM-entry failure due to invalid guest state.
    pub const ENTRY_FAIL_GUEST_STATE: u16 = 33;
    /// VM-entry failure due to MSR loading.
    pub const ENTRY_FAIL_MSR_LOADING: u16 = 34;
    /// MWAIT.
    pub const MWAIT: u16 = 36;
    /// Monitor trap flag.
    pub const MONITOR_TRAP_FLAG: u16 = 37;
    /// MONITOR.
    pub const MONITOR: u16 = 39;
    /// PAUSE.
    pub const PAUSE: u16 = 40;
    /// VM-entry failure due to machine-check event.
    pub const ENTRY_FAIL_MACHINE_CHECK: u16 = 41;
    /// TPR below threshold.
    pub const TPR_BELOW_THRESHOLD: u16 = 43;
    /// APIC access.
    pub const APIC_ACCESS: u16 = 44;
    /// Access to GDTR or IDTR.
    pub const GDTR_IDTR: u16 = 46;
    /// Access to LDTR or TR.
    pub const LDTR_TR: u16 = 47;
    /// EPT violation.
    pub const EPT_VIOLATION: u16 = 48;
    /// EPT misconfiguration.
    pub const EPT_MISCONFIG: u16 = 49;
    /// INVEPT.
    pub const INVEPT: u16 = 50;
    /// RDTSCP.
    pub const RDTSCP: u16 = 51;
    /// VMX-preemption timer expired.
    pub const PREEMPTION_TIMER: u16 = 52;
    /// INVVPID.
    pub const INVVPID: u16 = 53;
    /// WBINVD or WBNOINVD.
    pub const WBINVD: u16 = 54;
    /// XSETBV.
    pub const XSETBV: u16 = 55;
    /// RDRAND.
    pub const RDRAND: u16 = 57;
    /// INVPCID.
    pub const INVPCID: u16 = 58;
    /// VMFUNC.
    pub const VMFUNC: u16 = 59;
    /// RDSEED.
    pub const RDSEED: u16 = 61;
    /// XSAVES.
    pub const XSAVES: u16 = 63;
    /// XRSTORS.
    pub const XRSTORS: u16 = 64;
}

/// Exit-reason bit 31: VM-entry failure.
pub const EXIT_REASON_ENTRY_FAILURE: u32 = 1 << 31;

/// Event types of the interruption-information formats (SDM Table 25-17 / §28.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// External interrupt.
    ExternalInterrupt = 0,
    /// NMI.
    Nmi = 2,
    /// Hardware exception.
    HardwareException = 3,
    /// Software interrupt (INT n).
    SoftwareInterrupt = 4,
    /// Privileged software exception (INT1).
    PrivilegedSoftwareException = 5,
    /// Software exception (INT3, INTO).
    SoftwareException = 6,
    /// Other event (MTF on VM entry).
    Other = 7,
}

/// An event from an interruption-information field (valid bit set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Vector.
    pub vector: u8,
    /// Type.
    pub kind: EventType,
    /// Error code, when the field says one was delivered.
    pub error_code: Option<u32>,
}

/// Interruption-information bit 31: valid.
pub const INTR_INFO_VALID: u32 = 1 << 31;
/// Interruption-information bit 11: error code valid.
pub const INTR_INFO_ERROR_CODE: u32 = 1 << 11;
/// Exit interruption-information bit 12: NMI unblocking due to IRET.
pub const INTR_INFO_NMI_UNBLOCKING: u32 = 1 << 12;

impl Event {
    /// Decodes an interruption-information field and its error-code field. `None` when the
    /// valid bit is clear or the type is reserved (1).
    pub fn decode(info: u32, error_code: u32) -> Option<Self> {
        if info & INTR_INFO_VALID == 0 {
            return None;
        }
        let kind = match (info >> 8) & 7 {
            0 => EventType::ExternalInterrupt,
            2 => EventType::Nmi,
            3 => EventType::HardwareException,
            4 => EventType::SoftwareInterrupt,
            5 => EventType::PrivilegedSoftwareException,
            6 => EventType::SoftwareException,
            7 => EventType::Other,
            _ => return None,
        };
        Some(Self {
            vector: info as u8,
            kind,
            error_code: (info & INTR_INFO_ERROR_CODE != 0).then_some(error_code),
        })
    }

    /// The VM-entry interruption-information encoding of this event (for injection).
    pub const fn encode(&self) -> u32 {
        let ec = if self.error_code.is_some() {
            INTR_INFO_ERROR_CODE
        } else {
            0
        };
        INTR_INFO_VALID | ec | (self.kind as u32) << 8 | self.vector as u32
    }
}

/// An I/O instruction exit (exit qualification, SDM Table 28-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoExit {
    /// Port.
    pub port: u16,
    /// Access size in bytes: 1, 2 or 4.
    pub size: u8,
    /// IN/INS (true) or OUT/OUTS.
    pub input: bool,
    /// INS/OUTS.
    pub string: bool,
    /// REP prefix.
    pub rep: bool,
    /// The port was an immediate operand (else DX).
    pub immediate: bool,
}

/// Control-register access types (SDM Table 28-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrAccess {
    /// MOV to CR`cr` from GPR `gpr` (0 = RAX ... 15 = R15).
    MovTo {
        /// Control register.
        cr: u8,
        /// Source register.
        gpr: u8,
    },
    /// MOV from CR`cr` to GPR `gpr`.
    MovFrom {
        /// Control register.
        cr: u8,
        /// Destination register.
        gpr: u8,
    },
    /// CLTS.
    Clts,
    /// LMSW with `data` (the low 16 bits of the source); `memory` when the operand was in memory
    /// (its linear address is then in the guest-linear-address field).
    Lmsw {
        /// LMSW source data.
        data: u16,
        /// Memory operand.
        memory: bool,
    },
}

/// An EPT violation (SDM Table 28-7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EptViolation {
    /// Guest-physical address of the access.
    pub gpa: u64,
    /// Data read.
    pub read: bool,
    /// Data write.
    pub write: bool,
    /// Instruction fetch.
    pub fetch: bool,
    /// The EPT entry allowed reads / writes / execution (bits 3-5): 0 = not present.
    pub permissions: u8,
    /// The guest-linear address, when the field is valid (bit 7).
    pub linear: Option<u64>,
    /// With `linear`: the access was to the final translation (bit 8 = 1), not to a guest
    /// paging structure.
    pub final_translation: bool,
    /// The exit happened during an IRET that unblocked NMIs (bit 12): NMI blocking must be
    /// re-established before re-entry.
    pub nmi_unblocking: bool,
}

/// What happened, one variant per kind of exit the core acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmxExit {
    /// A guest exception that the exception bitmap intercepts. `qualification` is the #PF
    /// linear address or the #DB pending-debug bits.
    Exception {
        /// The event (vector, hardware or software type, error code).
        event: Event,
        /// Exit qualification.
        qualification: u64,
        /// NMI unblocking due to IRET (bit 12).
        nmi_unblocking: bool,
    },
    /// A host NMI arrived in the guest: the caller invokes the host's NMI handling (`int 2`).
    Nmi,
    /// A host interrupt arrived; `vector` only with "acknowledge interrupt on exit" (not used:
    /// the interrupt stays pending and is taken when the host enables interrupts).
    ExternalInterrupt {
        /// Acknowledged vector.
        vector: Option<u8>,
    },
    /// Triple fault (shutdown).
    TripleFault,
    /// INIT signal.
    Init,
    /// Start-up IPI with its vector.
    Sipi {
        /// SIPI vector.
        vector: u8,
    },
    /// Interrupt window opened.
    InterruptWindow,
    /// NMI window opened.
    NmiWindow,
    /// Task switch to `selector`; `source` 0 CALL, 1 IRET, 2 JMP, 3 task gate in IDT.
    TaskSwitch {
        /// Target TSS selector.
        selector: u16,
        /// Source of the switch.
        source: u8,
    },
    /// CPUID.
    Cpuid,
    /// HLT.
    Hlt,
    /// INVLPG of `addr`.
    Invlpg {
        /// Linear address.
        addr: u64,
    },
    /// Control-register access.
    Cr(CrAccess),
    /// MOV DR: `to_dr` for a write of DR`dr` from GPR `gpr`.
    Dr {
        /// Debug register.
        dr: u8,
        /// MOV to DR (else from DR).
        to_dr: bool,
        /// General-purpose register.
        gpr: u8,
    },
    /// I/O instruction.
    Io(IoExit),
    /// RDMSR (index in ECX).
    Rdmsr,
    /// WRMSR (index in ECX, value in EDX:EAX).
    Wrmsr,
    /// XSETBV (index in ECX, value in EDX:EAX).
    Xsetbv,
    /// EPT violation.
    EptViolation(EptViolation),
    /// EPT misconfiguration at `gpa` (a bug in the EPT tables, or an MMIO marker).
    EptMisconfig {
        /// Guest-physical address.
        gpa: u64,
    },
    /// An instruction this backend intercepts to refuse or emulate trivially (RDPMC, RDTSC,
    /// RDTSCP, MWAIT, MONITOR, PAUSE, INVD, WBINVD, VMCALL, the VMX instructions, GETSEC,
    /// RSM, INVPCID, RDRAND, RDSEED, XSAVES, XRSTORS, VMFUNC, INVEPT, INVVPID, descriptor-table
    /// accesses): the basic exit reason.
    Instruction {
        /// Basic exit reason.
        reason: u16,
    },
    /// VM entry failed after the checks of the guest state (bit 31 set): `reason` is the full
    /// exit-reason value for `KVM_EXIT_FAIL_ENTRY.hardware_entry_failure_reason`;
    /// `qualification` names the failing check or MSR-list entry.
    FailEntry {
        /// Full exit reason.
        reason: u32,
        /// Exit qualification.
        qualification: u64,
    },
    /// An exit reason this backend does not expect: `KVM_EXIT_INTERNAL_ERROR`.
    Unexpected {
        /// Full exit reason.
        reason: u32,
        /// Exit qualification.
        qualification: u64,
    },
}

/// The raw exit-information fields of one VM exit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawExit {
    /// Exit reason.
    pub reason: u32,
    /// Exit qualification.
    pub qualification: u64,
    /// VM-exit interruption information.
    pub intr_info: u32,
    /// VM-exit interruption error code.
    pub intr_error_code: u32,
    /// IDT-vectoring information.
    pub idt_vectoring_info: u32,
    /// IDT-vectoring error code.
    pub idt_vectoring_error_code: u32,
    /// VM-exit instruction length.
    pub instruction_len: u32,
    /// Guest-physical address (EPT exits only).
    pub gpa: u64,
    /// Guest-linear address (EPT violations with bit 7, LMSW to memory, INS/OUTS).
    pub linear: u64,
}

impl RawExit {
    /// Reads the exit-information fields from the current VMCS, the guest-physical and
    /// guest-linear addresses only for the exits that define them.
    pub fn read(v: &impl Vmcs) -> Result<Self, VmFail> {
        let reason = v.read(ro::EXIT_REASON)? as u32;
        let basic = reason as u16;
        let ept = reason & EXIT_REASON_ENTRY_FAILURE == 0
            && (basic == reason::EPT_VIOLATION || basic == reason::EPT_MISCONFIG);
        Ok(Self {
            reason,
            qualification: v.read(ro::EXIT_QUALIFICATION)?,
            intr_info: v.read(ro::VMEXIT_INTERRUPTION_INFO)? as u32,
            intr_error_code: v.read(ro::VMEXIT_INTERRUPTION_ERR_CODE)? as u32,
            idt_vectoring_info: v.read(ro::IDT_VECTORING_INFO)? as u32,
            idt_vectoring_error_code: v.read(ro::IDT_VECTORING_ERR_CODE)? as u32,
            instruction_len: v.read(ro::VMEXIT_INSTRUCTION_LEN)? as u32,
            gpa: if ept {
                v.read(ro::GUEST_PHYSICAL_ADDR_FULL)?
            } else {
                0
            },
            linear: v.read(ro::GUEST_LINEAR_ADDR)?,
        })
    }
}

/// A decoded VM exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedExit {
    /// What happened.
    pub exit: VmxExit,
    /// Length of the instruction that caused an instruction exit (to skip it), else 0.
    pub instruction_len: u32,
    /// The event whose delivery the exit interrupted (IDT-vectoring information): to be
    /// re-injected on the next entry.
    pub interrupted: Option<Event>,
}

/// Whether `basic` is an exit that reports the instruction length (SDM §28.2.4).
const fn is_instruction_exit(basic: u16) -> bool {
    matches!(
        basic,
        reason::CPUID
            | reason::GETSEC
            | reason::HLT
            | reason::INVD
            | reason::INVLPG
            | reason::RDPMC
            | reason::RDTSC
            | reason::RSM
            | reason::VMCALL
            ..=reason::VMXON
                | reason::CR_ACCESS
                | reason::DR_ACCESS
                | reason::IO_INSTRUCTION
                | reason::RDMSR
                | reason::WRMSR
                | reason::MWAIT
                | reason::MONITOR
                | reason::PAUSE
                | reason::GDTR_IDTR
                | reason::LDTR_TR
                | reason::INVEPT
                | reason::RDTSCP
                | reason::INVVPID
                | reason::WBINVD
                | reason::XSETBV
                | reason::RDRAND
                | reason::INVPCID
                | reason::VMFUNC
                | reason::RDSEED
                | reason::XSAVES
                | reason::XRSTORS
    )
}

/// Decodes an I/O exit qualification.
pub const fn decode_io(q: u64) -> IoExit {
    IoExit {
        port: (q >> 16) as u16,
        size: ((q & 7) + 1) as u8,
        input: q & (1 << 3) != 0,
        string: q & (1 << 4) != 0,
        rep: q & (1 << 5) != 0,
        immediate: q & (1 << 6) != 0,
    }
}

/// Decodes a control-register access exit qualification.
pub const fn decode_cr(q: u64) -> CrAccess {
    let cr = (q & 0xf) as u8;
    let gpr = ((q >> 8) & 0xf) as u8;
    match (q >> 4) & 3 {
        0 => CrAccess::MovTo { cr, gpr },
        1 => CrAccess::MovFrom { cr, gpr },
        2 => CrAccess::Clts,
        _ => CrAccess::Lmsw {
            data: (q >> 16) as u16,
            memory: q & (1 << 6) != 0,
        },
    }
}

/// Decodes an EPT-violation exit qualification with its addresses.
pub const fn decode_ept_violation(q: u64, gpa: u64, linear: u64) -> EptViolation {
    let linear_valid = q & (1 << 7) != 0;
    EptViolation {
        gpa,
        read: q & 1 != 0,
        write: q & 2 != 0,
        fetch: q & 4 != 0,
        permissions: ((q >> 3) & 7) as u8,
        linear: if linear_valid { Some(linear) } else { None },
        final_translation: linear_valid && q & (1 << 8) != 0,
        nmi_unblocking: q & (1 << 12) != 0,
    }
}

/// Decodes one exit. `ack_on_exit` says whether "acknowledge interrupt on exit" was set (so
/// the exit interruption information holds the vector of an external interrupt).
pub fn decode(raw: &RawExit, ack_on_exit: bool) -> DecodedExit {
    let q = raw.qualification;
    let basic = raw.reason as u16;
    let interrupted = Event::decode(raw.idt_vectoring_info, raw.idt_vectoring_error_code);
    if raw.reason & EXIT_REASON_ENTRY_FAILURE != 0 {
        return DecodedExit {
            exit: VmxExit::FailEntry {
                reason: raw.reason,
                qualification: q,
            },
            instruction_len: 0,
            interrupted: None,
        };
    }
    let unexpected = VmxExit::Unexpected {
        reason: raw.reason,
        qualification: q,
    };
    let exit = match basic {
        reason::EXCEPTION_NMI => match Event::decode(raw.intr_info, raw.intr_error_code) {
            Some(Event {
                kind: EventType::Nmi,
                ..
            }) => VmxExit::Nmi,
            Some(event) => VmxExit::Exception {
                event,
                qualification: q,
                nmi_unblocking: raw.intr_info & INTR_INFO_NMI_UNBLOCKING != 0,
            },
            None => unexpected,
        },
        reason::EXTERNAL_INTERRUPT => VmxExit::ExternalInterrupt {
            vector: if ack_on_exit && raw.intr_info & INTR_INFO_VALID != 0 {
                Some(raw.intr_info as u8)
            } else {
                None
            },
        },
        reason::TRIPLE_FAULT => VmxExit::TripleFault,
        reason::INIT => VmxExit::Init,
        reason::SIPI => VmxExit::Sipi { vector: q as u8 },
        reason::INTERRUPT_WINDOW => VmxExit::InterruptWindow,
        reason::NMI_WINDOW => VmxExit::NmiWindow,
        reason::TASK_SWITCH => VmxExit::TaskSwitch {
            selector: q as u16,
            source: ((q >> 30) & 3) as u8,
        },
        reason::CPUID => VmxExit::Cpuid,
        reason::HLT => VmxExit::Hlt,
        reason::INVLPG => VmxExit::Invlpg { addr: q },
        reason::CR_ACCESS => VmxExit::Cr(decode_cr(q)),
        reason::DR_ACCESS => VmxExit::Dr {
            dr: (q & 7) as u8,
            to_dr: q & (1 << 4) == 0,
            gpr: ((q >> 8) & 0xf) as u8,
        },
        reason::IO_INSTRUCTION => VmxExit::Io(decode_io(q)),
        reason::RDMSR => VmxExit::Rdmsr,
        reason::WRMSR => VmxExit::Wrmsr,
        reason::XSETBV => VmxExit::Xsetbv,
        reason::EPT_VIOLATION => {
            VmxExit::EptViolation(decode_ept_violation(q, raw.gpa, raw.linear))
        }
        reason::EPT_MISCONFIG => VmxExit::EptMisconfig { gpa: raw.gpa },
        b if is_instruction_exit(b) => VmxExit::Instruction { reason: b },
        _ => unexpected,
    };
    DecodedExit {
        exit,
        instruction_len: if is_instruction_exit(basic) {
            raw.instruction_len
        } else {
            0
        },
        interrupted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmcs::fake::FakeVmcs;

    fn raw(reason: u32, qualification: u64) -> RawExit {
        RawExit {
            reason,
            qualification,
            instruction_len: 2,
            ..Default::default()
        }
    }

    #[test]
    fn io_exits() {
        // `out dx, al` to port 0x3f8: size 1, OUT, DX operand.
        let d = decode(&raw(30, 0x03f8_0000), false);
        assert_eq!(
            d.exit,
            VmxExit::Io(IoExit {
                port: 0x3f8,
                size: 1,
                input: false,
                string: false,
                rep: false,
                immediate: false
            })
        );
        assert_eq!(d.instruction_len, 2);
        // `in eax, 0x71`: size 4 (encoding 3), IN, immediate.
        let d = decode(&raw(30, 0x0071_0000 | 0x40 | 0x8 | 3), false);
        let VmxExit::Io(io) = d.exit else {
            panic!("{d:?}")
        };
        assert_eq!(
            (io.port, io.size, io.input, io.immediate),
            (0x71, 4, true, true)
        );
        // `rep outsw` to 0x1f0.
        let VmxExit::Io(io) = decode(&raw(30, 0x01f0_0000 | 0x20 | 0x10 | 1), false).exit else {
            panic!()
        };
        assert_eq!(
            (io.port, io.size, io.string, io.rep, io.input),
            (0x1f0, 2, true, true, false)
        );
    }

    #[test]
    fn cr_and_dr_access() {
        // mov cr3, rbx (GPR 3) ; mov rax, cr8 ; clts ; lmsw 0x0031 from a register.
        assert_eq!(
            decode(&raw(28, 0x0303), false).exit,
            VmxExit::Cr(CrAccess::MovTo { cr: 3, gpr: 3 })
        );
        assert_eq!(
            decode(&raw(28, 0x0018), false).exit,
            VmxExit::Cr(CrAccess::MovFrom { cr: 8, gpr: 0 })
        );
        assert_eq!(
            decode(&raw(28, 0x0020), false).exit,
            VmxExit::Cr(CrAccess::Clts)
        );
        assert_eq!(
            decode(&raw(28, 0x0031_0030), false).exit,
            VmxExit::Cr(CrAccess::Lmsw {
                data: 0x31,
                memory: false
            })
        );
        assert_eq!(
            decode(&raw(28, 0x0001_0070), false).exit,
            VmxExit::Cr(CrAccess::Lmsw {
                data: 1,
                memory: true
            })
        );
        // mov dr7, r9 ; mov rcx, dr6.
        assert_eq!(
            decode(&raw(29, 0x0907), false).exit,
            VmxExit::Dr {
                dr: 7,
                to_dr: true,
                gpr: 9
            }
        );
        assert_eq!(
            decode(&raw(29, 0x0116), false).exit,
            VmxExit::Dr {
                dr: 6,
                to_dr: false,
                gpr: 1
            }
        );
    }

    #[test]
    fn ept_violation_and_misconfig() {
        // A write to an unmapped page at GPA 0xfee00030 through the final translation of
        // linear address 0xfee00030.
        let r = RawExit {
            reason: 48,
            qualification: 0x182,
            gpa: 0xfee0_0030,
            linear: 0xfee0_0030,
            ..Default::default()
        };
        let d = decode(&r, false);
        assert_eq!(
            d.exit,
            VmxExit::EptViolation(EptViolation {
                gpa: 0xfee0_0030,
                read: false,
                write: true,
                fetch: false,
                permissions: 0,
                linear: Some(0xfee0_0030),
                final_translation: true,
                nmi_unblocking: false
            })
        );
        assert_eq!(
            d.instruction_len, 0,
            "EPT violations report no instruction length"
        );
        // A fetch from a readable, non-executable page during a guest page walk; no linear.
        let r = RawExit {
            reason: 48,
            qualification: 0x1000 | 0x08 | 0x04,
            gpa: 0x1000,
            linear: 7,
            ..Default::default()
        };
        let VmxExit::EptViolation(v) = decode(&r, false).exit else {
            panic!()
        };
        assert!(
            v.fetch && !v.write && v.permissions == 1 && v.linear.is_none() && v.nmi_unblocking
        );
        let r = RawExit {
            reason: 49,
            gpa: 0xd000_0000,
            ..Default::default()
        };
        assert_eq!(
            decode(&r, false).exit,
            VmxExit::EptMisconfig { gpa: 0xd000_0000 }
        );
    }

    #[test]
    fn exceptions_nmi_and_interrupts() {
        // #PF, error code 2, at CR2 0xdead000.
        let r = RawExit {
            reason: 0,
            qualification: 0xdead000,
            intr_info: 0x8000_0b0e,
            intr_error_code: 2,
            ..Default::default()
        };
        assert_eq!(
            decode(&r, false).exit,
            VmxExit::Exception {
                event: Event {
                    vector: 14,
                    kind: EventType::HardwareException,
                    error_code: Some(2)
                },
                qualification: 0xdead000,
                nmi_unblocking: false
            }
        );
        // INT3 (software exception, no error code).
        let r = RawExit {
            reason: 0,
            intr_info: 0x8000_0603,
            ..Default::default()
        };
        let VmxExit::Exception { event, .. } = decode(&r, false).exit else {
            panic!()
        };
        assert_eq!(
            (event.vector, event.kind, event.error_code),
            (3, EventType::SoftwareException, None)
        );
        // Host NMI.
        let r = RawExit {
            reason: 0,
            intr_info: 0x8000_0202,
            ..Default::default()
        };
        assert_eq!(decode(&r, false).exit, VmxExit::Nmi);
        // External interrupt, not acknowledged: no vector even if the field holds stale data.
        let r = RawExit {
            reason: 1,
            intr_info: 0x8000_0030,
            ..Default::default()
        };
        assert_eq!(
            decode(&r, false).exit,
            VmxExit::ExternalInterrupt { vector: None }
        );
        assert_eq!(
            decode(&r, true).exit,
            VmxExit::ExternalInterrupt { vector: Some(0x30) }
        );
        assert_eq!(decode(&raw(7, 0), false).exit, VmxExit::InterruptWindow);
        assert_eq!(decode(&raw(7, 0), false).instruction_len, 0);
        assert_eq!(decode(&raw(8, 0), false).exit, VmxExit::NmiWindow);
        assert_eq!(decode(&raw(2, 0), false).exit, VmxExit::TripleFault);
        assert_eq!(decode(&raw(3, 0), false).exit, VmxExit::Init);
        assert_eq!(
            decode(&raw(4, 0x9a), false).exit,
            VmxExit::Sipi { vector: 0x9a }
        );
        assert_eq!(
            decode(&raw(9, 3 << 30 | 0x28), false).exit,
            VmxExit::TaskSwitch {
                selector: 0x28,
                source: 3
            }
        );
    }

    #[test]
    fn instructions_and_failures() {
        for (r, e) in [
            (10, VmxExit::Cpuid),
            (12, VmxExit::Hlt),
            (31, VmxExit::Rdmsr),
            (32, VmxExit::Wrmsr),
            (55, VmxExit::Xsetbv),
            (14, VmxExit::Invlpg { addr: 0 }),
            (18, VmxExit::Instruction { reason: 18 }),
            (24, VmxExit::Instruction { reason: 24 }),
            (54, VmxExit::Instruction { reason: 54 }),
        ] {
            let d = decode(&raw(r, 0), false);
            assert_eq!((d.exit, d.instruction_len), (e, 2), "reason {r}");
        }
        // Invalid guest state on entry: 0x80000021 goes to userspace unchanged.
        let d = decode(&raw(0x8000_0021, 0), false);
        assert_eq!(
            d.exit,
            VmxExit::FailEntry {
                reason: 0x8000_0021,
                qualification: 0
            }
        );
        // MSR loading failure of entry 3 of the VM-entry MSR-load list.
        let d = decode(&raw(0x8000_0022, 4), false);
        assert_eq!(
            d.exit,
            VmxExit::FailEntry {
                reason: 0x8000_0022,
                qualification: 4
            }
        );
        assert_eq!(
            decode(&raw(52, 0), false).exit,
            VmxExit::Unexpected {
                reason: 52,
                qualification: 0
            }
        );
        // An exception exit without a valid interruption info is malformed.
        assert_eq!(
            decode(&raw(0, 5), false).exit,
            VmxExit::Unexpected {
                reason: 0,
                qualification: 5
            }
        );
    }

    #[test]
    fn idt_vectoring_for_reinjection() {
        // EPT violation on the IDT page while delivering external interrupt 0x20.
        let r = RawExit {
            reason: 48,
            qualification: 0x81,
            idt_vectoring_info: 0x8000_0020,
            gpa: 0x1000,
            ..Default::default()
        };
        let d = decode(&r, false);
        assert_eq!(
            d.interrupted,
            Some(Event {
                vector: 0x20,
                kind: EventType::ExternalInterrupt,
                error_code: None
            })
        );
        assert_eq!(d.interrupted.map(|e| e.encode()), Some(0x8000_0020));
        // #GP(0x18) being delivered.
        let r = RawExit {
            reason: 48,
            idt_vectoring_info: 0x8000_0b0d,
            idt_vectoring_error_code: 0x18,
            ..Default::default()
        };
        let e = decode(&r, false).interrupted.unwrap();
        assert_eq!((e.vector, e.error_code), (13, Some(0x18)));
        assert_eq!(e.encode(), 0x8000_0b0d);
        // Reserved type 1: dropped.
        assert_eq!(Event::decode(0x8000_0120, 0), None);
        assert_eq!(Event::decode(0x0000_0b0d, 0), None);
    }

    #[test]
    fn read_from_vmcs() {
        let mut v = FakeVmcs::default();
        v.set_exit_field(ro::EXIT_REASON, 48);
        v.set_exit_field(ro::EXIT_QUALIFICATION, 0x182);
        v.set_exit_field(ro::GUEST_PHYSICAL_ADDR_FULL, 0xfee0_0030);
        v.set_exit_field(ro::GUEST_LINEAR_ADDR, 0x7fff_0030);
        v.set_exit_field(ro::VMEXIT_INSTRUCTION_LEN, 3);
        let r = RawExit::read(&v).unwrap();
        assert_eq!(
            (r.reason, r.qualification, r.gpa, r.linear),
            (48, 0x182, 0xfee0_0030, 0x7fff_0030)
        );
        // The guest-physical address is only read for EPT exits.
        v.set_exit_field(ro::EXIT_REASON, 30);
        assert_eq!(RawExit::read(&v).unwrap().gpa, 0);
    }
}
