//! #VMEXIT decoding: EXITCODE (AMD APM vol. 2, appendix C "SVM Intercept Exit Codes", Table C-1)
//! plus EXITINFO1/EXITINFO2/EXITINTINFO/nRIP into one [`DecodedExit`].

use crate::vmcb::{EventInj, VmcbControl};
use bitflags::bitflags;

/// EXITCODE values (Table C-1) this crate names.
pub mod code {
    /// First CR read exit (`+ n` for CRn).
    pub const CR0_READ: u64 = 0x00;
    /// First CR write exit (`+ n` for CRn).
    pub const CR0_WRITE: u64 = 0x10;
    /// First DR read exit.
    pub const DR0_READ: u64 = 0x20;
    /// First DR write exit.
    pub const DR0_WRITE: u64 = 0x30;
    /// First exception exit (`+ vector`).
    pub const EXCP_BASE: u64 = 0x40;
    /// Physical INTR.
    pub const INTR: u64 = 0x60;
    /// Physical NMI.
    pub const NMI: u64 = 0x61;
    /// Physical SMI.
    pub const SMI: u64 = 0x62;
    /// Physical INIT.
    pub const INIT: u64 = 0x63;
    /// Virtual interrupt taken.
    pub const VINTR: u64 = 0x64;
    /// Selective CR0 write.
    pub const CR0_SEL_WRITE: u64 = 0x65;
    /// RDTSC.
    pub const RDTSC: u64 = 0x6e;
    /// RDPMC.
    pub const RDPMC: u64 = 0x6f;
    /// PUSHF.
    pub const PUSHF: u64 = 0x70;
    /// POPF.
    pub const POPF: u64 = 0x71;
    /// CPUID.
    pub const CPUID: u64 = 0x72;
    /// RSM.
    pub const RSM: u64 = 0x73;
    /// IRET.
    pub const IRET: u64 = 0x74;
    /// INTn.
    pub const SWINT: u64 = 0x75;
    /// INVD.
    pub const INVD: u64 = 0x76;
    /// PAUSE.
    pub const PAUSE: u64 = 0x77;
    /// HLT.
    pub const HLT: u64 = 0x78;
    /// INVLPG.
    pub const INVLPG: u64 = 0x79;
    /// INVLPGA.
    pub const INVLPGA: u64 = 0x7a;
    /// IN/OUT/INS/OUTS.
    pub const IOIO: u64 = 0x7b;
    /// RDMSR/WRMSR.
    pub const MSR: u64 = 0x7c;
    /// Task switch.
    pub const TASK_SWITCH: u64 = 0x7d;
    /// FERR_FREEZE.
    pub const FERR_FREEZE: u64 = 0x7e;
    /// Shutdown.
    pub const SHUTDOWN: u64 = 0x7f;
    /// VMRUN.
    pub const VMRUN: u64 = 0x80;
    /// VMMCALL.
    pub const VMMCALL: u64 = 0x81;
    /// VMLOAD.
    pub const VMLOAD: u64 = 0x82;
    /// VMSAVE.
    pub const VMSAVE: u64 = 0x83;
    /// STGI.
    pub const STGI: u64 = 0x84;
    /// CLGI.
    pub const CLGI: u64 = 0x85;
    /// SKINIT.
    pub const SKINIT: u64 = 0x86;
    /// RDTSCP.
    pub const RDTSCP: u64 = 0x87;
    /// ICEBP.
    pub const ICEBP: u64 = 0x88;
    /// WBINVD/WBNOINVD.
    pub const WBINVD: u64 = 0x89;
    /// MONITOR/MONITORX.
    pub const MONITOR: u64 = 0x8a;
    /// MWAIT/MWAITX.
    pub const MWAIT: u64 = 0x8b;
    /// MWAIT/MWAITX with the monitor armed.
    pub const MWAIT_CONDITIONAL: u64 = 0x8c;
    /// XSETBV.
    pub const XSETBV: u64 = 0x8d;
    /// RDPRU.
    pub const RDPRU: u64 = 0x8e;
    /// EFER write trap.
    pub const EFER_WRITE_TRAP: u64 = 0x8f;
    /// First CR write trap (`+ n`).
    pub const CR0_WRITE_TRAP: u64 = 0x90;
    /// INVLPGB.
    pub const INVLPGB: u64 = 0xa0;
    /// Illegal INVLPGB.
    pub const INVLPGB_ILLEGAL: u64 = 0xa1;
    /// INVPCID.
    pub const INVPCID: u64 = 0xa2;
    /// MCOMMIT.
    pub const MCOMMIT: u64 = 0xa3;
    /// TLBSYNC.
    pub const TLBSYNC: u64 = 0xa4;
    /// Nested page fault.
    pub const NPF: u64 = 0x400;
    /// AVIC incomplete IPI.
    pub const AVIC_INCOMPLETE_IPI: u64 = 0x401;
    /// AVIC unaccelerated access.
    pub const AVIC_NOACCEL: u64 = 0x402;
    /// VMGEXIT (SEV-ES).
    pub const VMGEXIT: u64 = 0x403;
    /// VMRUN failed its consistency checks (-1).
    pub const INVALID: u64 = u64::MAX;
    /// VMRUN of a busy VMSA (-2, SEV-ES).
    pub const BUSY: u64 = u64::MAX - 1;
}

bitflags! {
    /// EXITINFO1 of an IOIO intercept (§15.10.2 "IN and OUT Behavior", "IOIO EXITINFO1").
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct IoioInfo: u64 {
        /// 1 = IN, 0 = OUT.
        const TYPE_IN = 1 << 0;
        /// String instruction (INS/OUTS).
        const STR = 1 << 2;
        /// REP prefix.
        const REP = 1 << 3;
        /// 8-bit operand.
        const SZ8 = 1 << 4;
        /// 16-bit operand.
        const SZ16 = 1 << 5;
        /// 32-bit operand.
        const SZ32 = 1 << 6;
        /// 16-bit address size.
        const A16 = 1 << 7;
        /// 32-bit address size.
        const A32 = 1 << 8;
        /// 64-bit address size.
        const A64 = 1 << 9;
        /// Bits 12:10: effective segment (decode assists).
        const SEG_MASK = 7 << 10;
        /// Bits 31:16: port.
        const PORT_MASK = 0xffff << 16;
    }
}

bitflags! {
    /// EXITINFO1 of a nested page fault (§15.25.6 "Nested versus Guest Page Faults, Fault
    /// Ordering"): a #PF-style error code plus where in the walk the fault happened.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct NpfError: u64 {
        /// The nested page was present (protection violation).
        const P = 1 << 0;
        /// Write access.
        const RW = 1 << 1;
        /// User access.
        const US = 1 << 2;
        /// Reserved bit set in a nested table entry.
        const RSV = 1 << 3;
        /// Instruction fetch.
        const ID = 1 << 4;
        /// Shadow-stack access.
        const SS = 1 << 6;
        /// The fault was on the final guest physical address.
        const GUEST_FINAL = 1 << 32;
        /// The fault was on a guest page-table access during the guest's walk.
        const GUEST_TABLE = 1 << 33;
        /// Supervisor shadow-stack page.
        const SSS = 1 << 37;
        /// VMPL violation (SEV-SNP).
        const VMPL = 1 << 38;
    }
}

/// An intercepted IN/OUT/INS/OUTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoExit {
    /// I/O port.
    pub port: u16,
    /// Operand size in bytes: 1, 2 or 4.
    pub size: u8,
    /// IN/INS (true) or OUT/OUTS (false).
    pub input: bool,
    /// INS/OUTS.
    pub string: bool,
    /// REP prefix.
    pub rep: bool,
    /// Address size in bytes for string instructions: 2, 4 or 8; 0 when not reported.
    pub addr_size: u8,
    /// Effective segment of OUTS (ES=0, CS, SS, DS, FS, GS), with decode assists only.
    pub segment: Option<u8>,
}

/// The guest state the core must act on, one variant per kind of exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvmExit {
    /// Read of CR`cr`; `gpr` is the destination register when decode assists name it.
    CrRead {
        /// Control register number.
        cr: u8,
        /// Destination GPR (decode assists).
        gpr: Option<u8>,
    },
    /// Write of CR`cr` (also selective CR0 writes, `cr` = 0); `gpr` is the source register when
    /// decode assists name it (MOV CR; CLTS/LMSW give `None`).
    CrWrite {
        /// Control register number.
        cr: u8,
        /// Source GPR (decode assists, MOV only).
        gpr: Option<u8>,
    },
    /// Read of DR`dr`; `gpr` with decode assists.
    DrRead {
        /// Debug register number.
        dr: u8,
        /// Destination GPR (decode assists).
        gpr: Option<u8>,
    },
    /// Write of DR`dr`; `gpr` with decode assists.
    DrWrite {
        /// Debug register number.
        dr: u8,
        /// Source GPR (decode assists).
        gpr: Option<u8>,
    },
    /// Intercepted exception `vector`. `error_code` is EXITINFO1 for vectors that push one;
    /// `info2` is EXITINFO2 (the faulting address for #PF).
    Exception {
        /// Exception vector.
        vector: u8,
        /// Error code (EXITINFO1), for vectors that push one.
        error_code: Option<u32>,
        /// EXITINFO2 (#PF: the faulting linear address).
        info2: u64,
    },
    /// A physical interrupt arrived: the host takes it after STGI.
    Intr,
    /// A physical NMI arrived: the host takes it after STGI.
    Nmi,
    /// A physical SMI arrived.
    Smi,
    /// A physical INIT arrived.
    Init,
    /// The guest became able to take the pending virtual interrupt (interrupt window).
    Vintr,
    /// CPUID (leaf in RAX, subleaf in RCX).
    Cpuid,
    /// HLT.
    Hlt,
    /// PAUSE (pause filter expired).
    Pause,
    /// IRET (the NMI window opens after it retires).
    Iret,
    /// INVLPG; the linear address with decode assists.
    Invlpg {
        /// Linear address (decode assists).
        addr: Option<u64>,
    },
    /// An intercepted instruction the guest may not execute or that the host emulates trivially:
    /// the EXITCODE (RDTSC, RDPMC, RSM, INVD, VMRUN, VMLOAD, VMSAVE, STGI, CLGI, SKINIT,
    /// INVLPGA, RDTSCP, ICEBP, WBINVD, MONITOR, MWAIT, RDPRU, INTn, PUSHF, POPF, ...).
    Instruction {
        /// EXITCODE.
        code: u64,
    },
    /// VMMCALL (hypercall).
    Vmmcall,
    /// IN/OUT/INS/OUTS.
    Io(IoExit),
    /// RDMSR (`write` false) or WRMSR (index in RCX, data in EDX:EAX).
    Msr {
        /// WRMSR rather than RDMSR.
        write: bool,
    },
    /// XSETBV (index in RCX, value in EDX:EAX).
    Xsetbv,
    /// Task switch: EXITINFO1 bits 15:0 are the target selector, EXITINFO2 the reason bits.
    TaskSwitch {
        /// Target TSS selector.
        selector: u16,
        /// EXITINFO2: reason (IRET, JMP, error code valid) and error code.
        info2: u64,
    },
    /// Nested page fault at guest physical `gpa`.
    Npf {
        /// Faulting guest physical address (EXITINFO2).
        gpa: u64,
        /// Error code and walk position (EXITINFO1).
        error: NpfError,
    },
    /// Shutdown (triple fault). The VMCB state is undefined afterwards (§15.12) and the vCPU
    /// must be reset before it runs again.
    Shutdown,
    /// VMRUN's consistency checks failed (EXITCODE -1): `KVM_EXIT_FAIL_ENTRY`.
    Invalid,
    /// Exit information the architecture does not produce for this code (e.g. an IOIO exit
    /// with no operand size): the raw values, for `KVM_EXIT_INTERNAL_ERROR`.
    Malformed {
        /// EXITCODE.
        code: u64,
        /// EXITINFO1.
        info1: u64,
        /// EXITINFO2.
        info2: u64,
    },
    /// An EXITCODE this backend never asks for.
    Unexpected {
        /// EXITCODE.
        code: u64,
    },
}

/// A decoded #VMEXIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedExit {
    /// What happened.
    pub exit: SvmExit,
    /// RIP of the next instruction, when the hardware reported it: EXITINFO2 for IOIO
    /// (architectural), nRIP for instruction intercepts with NRIPS. `None` for an instruction
    /// intercept means the caller must decode the instruction to skip it (QEMU TCG has no NRIPS).
    pub next_rip: Option<u64>,
    /// The event whose delivery the exit interrupted (EXITINTINFO), to be re-injected.
    pub interrupted: Option<EventInj>,
    /// EXITINTINFO had V set but a reserved type: the raw value.
    pub bad_exit_int_info: Option<u64>,
}

/// Whether exception `vector` pushes an error code (and so EXITINFO1 holds it).
pub const fn exception_has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// EXITINFO1 bit 63 for CR/DR intercepts with decode assists: a MOV instruction, GPR in 3:0.
const CRDR_MOV_VALID: u64 = 1 << 63;

fn mov_gpr(info1: u64, decode_assists: bool) -> Option<u8> {
    (decode_assists && info1 & CRDR_MOV_VALID != 0).then_some((info1 & 0xf) as u8)
}

/// Decodes an IOIO EXITINFO1.
pub fn decode_ioio(info1: u64, decode_assists: bool) -> Option<IoExit> {
    let i = IoioInfo::from_bits_retain(info1);
    let size = match (i & (IoioInfo::SZ8 | IoioInfo::SZ16 | IoioInfo::SZ32)).bits() >> 4 {
        0b001 => 1,
        0b010 => 2,
        0b100 => 4,
        _ => return None,
    };
    let string = i.contains(IoioInfo::STR);
    let addr_size = match (i & (IoioInfo::A16 | IoioInfo::A32 | IoioInfo::A64)).bits() >> 7 {
        0b001 => 2,
        0b010 => 4,
        0b100 => 8,
        // Not reported (non-string instructions; QEMU TCG leaves the bits clear for INS/OUTS
        // too): 0 = unknown. The core decodes string instructions itself.
        _ => 0,
    };
    Some(IoExit {
        port: (info1 >> 16) as u16,
        size,
        input: i.contains(IoioInfo::TYPE_IN),
        string,
        rep: i.contains(IoioInfo::REP),
        addr_size,
        segment: decode_assists.then_some(((info1 >> 10) & 7) as u8),
    })
}

/// Decodes the exit recorded in `c`. `nrips` and `decode_assists` are the processor's
/// features ([`crate::cpuid::SvmCaps`]): without them nRIP and the decode-assist fields are
/// stale and must not be trusted.
pub fn decode(c: &VmcbControl, nrips: bool, decode_assists: bool) -> DecodedExit {
    let (code, info1, info2) = (c.exit_code, c.exit_info1, c.exit_info2);
    let mut next_rip = None;
    let mut instruction = false;
    let exit = match code {
        0x00..=0x0f => SvmExit::CrRead {
            cr: code as u8,
            gpr: mov_gpr(info1, decode_assists),
        },
        0x10..=0x1f => SvmExit::CrWrite {
            cr: (code - code::CR0_WRITE) as u8,
            gpr: mov_gpr(info1, decode_assists),
        },
        0x20..=0x2f => SvmExit::DrRead {
            dr: (code - code::DR0_READ) as u8,
            gpr: mov_gpr(info1, decode_assists),
        },
        0x30..=0x3f => SvmExit::DrWrite {
            dr: (code - code::DR0_WRITE) as u8,
            gpr: mov_gpr(info1, decode_assists),
        },
        0x40..=0x5f => {
            let vector = (code - code::EXCP_BASE) as u8;
            let error_code = exception_has_error_code(vector).then_some(info1 as u32);
            SvmExit::Exception {
                vector,
                error_code,
                info2,
            }
        }
        code::INTR => SvmExit::Intr,
        code::NMI => SvmExit::Nmi,
        code::SMI => SvmExit::Smi,
        code::INIT => SvmExit::Init,
        code::VINTR => SvmExit::Vintr,
        code::CR0_SEL_WRITE => {
            instruction = true;
            SvmExit::CrWrite {
                cr: 0,
                gpr: mov_gpr(info1, decode_assists),
            }
        }
        code::CPUID => {
            instruction = true;
            SvmExit::Cpuid
        }
        code::HLT => {
            instruction = true;
            SvmExit::Hlt
        }
        code::PAUSE => {
            instruction = true;
            SvmExit::Pause
        }
        code::IRET => {
            instruction = true;
            SvmExit::Iret
        }
        code::INVLPG => {
            instruction = true;
            SvmExit::Invlpg {
                addr: decode_assists.then_some(info1),
            }
        }
        code::VMMCALL => {
            instruction = true;
            SvmExit::Vmmcall
        }
        code::MSR => {
            instruction = true;
            match info1 {
                0 => SvmExit::Msr { write: false },
                1 => SvmExit::Msr { write: true },
                _ => SvmExit::Malformed { code, info1, info2 },
            }
        }
        code::XSETBV => {
            instruction = true;
            SvmExit::Xsetbv
        }
        code::IOIO => match decode_ioio(info1, decode_assists) {
            Some(io) => {
                // EXITINFO2 holds the next RIP for every IOIO intercept, NRIPS or not.
                next_rip = Some(info2);
                SvmExit::Io(io)
            }
            None => SvmExit::Malformed { code, info1, info2 },
        },
        code::TASK_SWITCH => SvmExit::TaskSwitch {
            selector: info1 as u16,
            info2,
        },
        code::NPF => SvmExit::Npf {
            gpa: info2,
            error: NpfError::from_bits_retain(info1),
        },
        code::SHUTDOWN => SvmExit::Shutdown,
        code::INVALID => SvmExit::Invalid,
        code::RDTSC
        | code::RDPMC
        | code::PUSHF
        | code::POPF
        | code::RSM
        | code::SWINT
        | code::INVD
        | code::INVLPGA
        | code::VMRUN
        | code::VMLOAD
        | code::VMSAVE
        | code::STGI
        | code::CLGI
        | code::SKINIT
        | code::RDTSCP
        | code::ICEBP
        | code::WBINVD
        | code::MONITOR
        | code::MWAIT
        | code::MWAIT_CONDITIONAL
        | code::RDPRU
        | code::INVLPGB
        | code::INVLPGB_ILLEGAL
        | code::INVPCID
        | code::MCOMMIT
        | code::TLBSYNC => {
            instruction = true;
            SvmExit::Instruction { code }
        }
        _ => SvmExit::Unexpected { code },
    };
    if instruction && nrips {
        next_rip = Some(c.next_rip);
    }
    let (interrupted, bad_exit_int_info) = match EventInj::decode(c.exit_int_info) {
        Ok(ev) => (ev, None),
        Err(raw) => (None, Some(raw)),
    };
    DecodedExit {
        exit,
        next_rip,
        interrupted,
        bad_exit_int_info,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmcb::{EventType, Vmcb};

    fn vmcb(code: u64, info1: u64, info2: u64) -> Box<Vmcb> {
        // SAFETY: all-zero is a valid Vmcb.
        let mut v: Box<Vmcb> = Box::new(unsafe { core::mem::zeroed() });
        v.control.exit_code = code;
        v.control.exit_info1 = info1;
        v.control.exit_info2 = info2;
        v
    }

    #[test]
    fn ioio_out_dx_al_without_nrips() {
        // `out dx, al` to 0x3f8 at RIP 0x1000 (1 byte): TYPE=OUT, SZ8, A64, port 0x3f8.
        let v = vmcb(0x7b, 0x03f8_0210, 0x1001);
        let d = decode(&v.control, false, false);
        assert_eq!(
            d.exit,
            SvmExit::Io(IoExit {
                port: 0x3f8,
                size: 1,
                input: false,
                string: false,
                rep: false,
                addr_size: 8,
                segment: None
            })
        );
        // Architectural even without NRIPS.
        assert_eq!(d.next_rip, Some(0x1001));
        assert_eq!(d.interrupted, None);
    }

    #[test]
    fn ioio_rep_insw_and_in_eax() {
        // `rep insw` from port 0x1f0, 32-bit addressing, ES (decode assists segment 0).
        let v = vmcb(
            0x7b,
            0x01f0_0000 | 1 << 8 | 1 << 5 | 1 << 3 | 1 << 2 | 1,
            0x7c02,
        );
        let d = decode(&v.control, true, true);
        let SvmExit::Io(io) = d.exit else {
            panic!("{d:?}")
        };
        assert_eq!(
            (io.port, io.size, io.input, io.string, io.rep),
            (0x1f0, 2, true, true, true)
        );
        assert_eq!((io.addr_size, io.segment), (4, Some(0)));
        // `in eax, dx` at port 0xcfc.
        let io = decode_ioio(0x0cfc_0000 | 1 << 6 | 1, false).unwrap();
        assert_eq!(
            (io.port, io.size, io.input, io.string),
            (0xcfc, 4, true, false)
        );
        // No size, or two sizes: malformed, never a guess.
        let v = vmcb(0x7b, 0x0080_0000, 0);
        assert!(matches!(
            decode(&v.control, true, true).exit,
            SvmExit::Malformed { .. }
        ));
        assert_eq!(decode_ioio(0x0080_0030, false), None);
        // A string op without an address size (QEMU TCG's REP INSB at port 511h): size unknown.
        let io = decode_ioio(0x0511_001d, false).unwrap();
        assert_eq!(
            (io.port, io.size, io.input, io.string, io.rep, io.addr_size),
            (0x511, 1, true, true, true, 0)
        );
    }

    #[test]
    fn instruction_exits_next_rip_only_with_nrips() {
        let mut v = vmcb(0x72, 0, 0);
        v.control.next_rip = 0xfff2;
        assert_eq!(decode(&v.control, false, false).next_rip, None);
        let d = decode(&v.control, true, false);
        assert_eq!((d.exit, d.next_rip), (SvmExit::Cpuid, Some(0xfff2)));
        v.control.exit_code = 0x78;
        assert_eq!(decode(&v.control, true, false).exit, SvmExit::Hlt);
        v.control.exit_code = 0x8d;
        assert_eq!(decode(&v.control, true, false).exit, SvmExit::Xsetbv);
        v.control.exit_code = 0x80;
        assert_eq!(
            decode(&v.control, true, false).exit,
            SvmExit::Instruction { code: 0x80 }
        );
        // Non-instruction exits never report nRIP.
        v.control.exit_code = 0x60;
        assert_eq!(
            decode(&v.control, true, false),
            DecodedExit {
                exit: SvmExit::Intr,
                next_rip: None,
                interrupted: None,
                bad_exit_int_info: None
            }
        );
    }

    #[test]
    fn msr_exits() {
        assert_eq!(
            decode(&vmcb(0x7c, 0, 0).control, false, false).exit,
            SvmExit::Msr { write: false }
        );
        assert_eq!(
            decode(&vmcb(0x7c, 1, 0).control, false, false).exit,
            SvmExit::Msr { write: true }
        );
        assert!(matches!(
            decode(&vmcb(0x7c, 2, 0).control, false, false).exit,
            SvmExit::Malformed {
                code: 0x7c,
                info1: 2,
                ..
            }
        ));
    }

    #[test]
    fn npf_with_gpa_and_error() {
        // A write to an unmapped MMIO page during the final translation.
        let v = vmcb(0x400, 1 << 32 | 0b110, 0xfee0_0030);
        let d = decode(&v.control, false, false);
        let SvmExit::Npf { gpa, error } = d.exit else {
            panic!()
        };
        assert_eq!(gpa, 0xfee0_0030);
        assert!(error.contains(NpfError::RW | NpfError::US | NpfError::GUEST_FINAL));
        assert!(!error.intersects(NpfError::P | NpfError::ID | NpfError::GUEST_TABLE));
        assert_eq!(d.next_rip, None);
    }

    #[test]
    fn exceptions_and_error_codes() {
        // #PF with error code 2 at CR2 0xdead000.
        let d = decode(&vmcb(0x4e, 2, 0x0dea_d000).control, true, true);
        assert_eq!(
            d.exit,
            SvmExit::Exception {
                vector: 14,
                error_code: Some(2),
                info2: 0x0dea_d000
            }
        );
        // #DB has no error code, #AC has one (0).
        assert_eq!(
            decode(&vmcb(0x41, 0x77, 0).control, true, true).exit,
            SvmExit::Exception {
                vector: 1,
                error_code: None,
                info2: 0
            }
        );
        assert_eq!(
            decode(&vmcb(0x51, 0, 0).control, true, true).exit,
            SvmExit::Exception {
                vector: 17,
                error_code: Some(0),
                info2: 0
            }
        );
    }

    #[test]
    fn cr_dr_with_and_without_decode_assists() {
        // mov cr4, rbx (GPR 3) with decode assists.
        let v = vmcb(0x14, 1 << 63 | 3, 0);
        assert_eq!(
            decode(&v.control, true, true).exit,
            SvmExit::CrWrite {
                cr: 4,
                gpr: Some(3)
            }
        );
        assert_eq!(
            decode(&v.control, true, false).exit,
            SvmExit::CrWrite { cr: 4, gpr: None }
        );
        // LMSW (bit 63 clear).
        assert_eq!(
            decode(&vmcb(0x10, 0, 0).control, true, true).exit,
            SvmExit::CrWrite { cr: 0, gpr: None }
        );
        assert_eq!(
            decode(&vmcb(0x27, 1 << 63 | 9, 0).control, true, true).exit,
            SvmExit::DrRead {
                dr: 7,
                gpr: Some(9)
            }
        );
        assert_eq!(
            decode(&vmcb(0x03, 0, 0).control, true, true).exit,
            SvmExit::CrRead { cr: 3, gpr: None }
        );
    }

    #[test]
    fn invalid_shutdown_and_unknown() {
        assert_eq!(
            decode(&vmcb(u64::MAX, 0, 0).control, true, true).exit,
            SvmExit::Invalid
        );
        assert_eq!(
            decode(&vmcb(0x7f, 0, 0).control, true, true).exit,
            SvmExit::Shutdown
        );
        assert_eq!(
            decode(&vmcb(0x63, 0, 0).control, true, true).exit,
            SvmExit::Init
        );
        assert_eq!(
            decode(&vmcb(0x64, 0, 0).control, true, true).exit,
            SvmExit::Vintr
        );
        assert_eq!(
            decode(&vmcb(0x61, 0, 0).control, true, true).exit,
            SvmExit::Nmi
        );
        assert_eq!(
            decode(&vmcb(0x403, 0, 0).control, true, true).exit,
            SvmExit::Unexpected { code: 0x403 }
        );
        assert_eq!(
            decode(&vmcb(0x7d, 0x28, 1 << 36).control, true, true).exit,
            SvmExit::TaskSwitch {
                selector: 0x28,
                info2: 1 << 36
            }
        );
    }

    #[test]
    fn exit_int_info_is_reported_for_reinjection() {
        // An NPF while delivering external interrupt 0x20 through an unmapped IDT page.
        let mut v = vmcb(0x400, 1 << 33 | 1, 0x1000);
        v.control.exit_int_info = 0x8000_0020;
        let d = decode(&v.control, false, false);
        assert_eq!(
            d.interrupted,
            Some(EventInj {
                vector: 0x20,
                kind: EventType::Intr,
                error_code: None
            })
        );
        // #GP(0) being delivered.
        v.control.exit_int_info = 0x8000_0b0d;
        let d = decode(&v.control, false, false);
        assert_eq!(d.interrupted.map(|e| e.error_code), Some(Some(0)));
        // Reserved type: reported raw, not dropped.
        v.control.exit_int_info = 0x8000_0100;
        let d = decode(&v.control, false, false);
        assert_eq!(
            (d.interrupted, d.bad_exit_int_info),
            (None, Some(0x8000_0100))
        );
    }
}
