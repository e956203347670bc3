//! Intercept vectors (AMD APM vol. 2, Table B-1, offsets 000h–017h; §15.7–§15.14) and the set
//! of intercepts this backend programs for KVM guests.

use crate::vmcb::VmcbControl;
use bitflags::bitflags;

bitflags! {
    /// The intercept word at 00Ch.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct InterceptMisc1: u32 {
        /// Physical maskable interrupt.
        const INTR = 1 << 0;
        /// Physical NMI.
        const NMI = 1 << 1;
        /// Physical SMI.
        const SMI = 1 << 2;
        /// Physical INIT.
        const INIT = 1 << 3;
        /// Virtual interrupt (V_IRQ) being taken: the interrupt window.
        const VINTR = 1 << 4;
        /// Writes of CR0 that change bits other than CR0.TS or CR0.MP.
        const CR0_SEL_WRITE = 1 << 5;
        /// SIDT.
        const IDTR_READ = 1 << 6;
        /// SGDT.
        const GDTR_READ = 1 << 7;
        /// SLDT.
        const LDTR_READ = 1 << 8;
        /// STR.
        const TR_READ = 1 << 9;
        /// LIDT.
        const IDTR_WRITE = 1 << 10;
        /// LGDT.
        const GDTR_WRITE = 1 << 11;
        /// LLDT.
        const LDTR_WRITE = 1 << 12;
        /// LTR.
        const TR_WRITE = 1 << 13;
        /// RDTSC.
        const RDTSC = 1 << 14;
        /// RDPMC.
        const RDPMC = 1 << 15;
        /// PUSHF.
        const PUSHF = 1 << 16;
        /// POPF.
        const POPF = 1 << 17;
        /// CPUID.
        const CPUID = 1 << 18;
        /// RSM.
        const RSM = 1 << 19;
        /// IRET (used to find the end of an NMI handler without vNMI).
        const IRET = 1 << 20;
        /// INTn.
        const INTN = 1 << 21;
        /// INVD.
        const INVD = 1 << 22;
        /// PAUSE (subject to the pause filter).
        const PAUSE = 1 << 23;
        /// HLT.
        const HLT = 1 << 24;
        /// INVLPG.
        const INVLPG = 1 << 25;
        /// INVLPGA.
        const INVLPGA = 1 << 26;
        /// IN/OUT, filtered by the I/O permission map.
        const IOIO_PROT = 1 << 27;
        /// RDMSR/WRMSR, filtered by the MSR permission map.
        const MSR_PROT = 1 << 28;
        /// Task switch.
        const TASK_SWITCH = 1 << 29;
        /// FERR_FREEZE.
        const FERR_FREEZE = 1 << 30;
        /// Shutdown (triple fault).
        const SHUTDOWN = 1 << 31;
    }
}

bitflags! {
    /// The intercept word at 010h.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct InterceptMisc2: u32 {
        /// VMRUN. Must be set, or VMRUN fails with VMEXIT_INVALID.
        const VMRUN = 1 << 0;
        /// VMMCALL.
        const VMMCALL = 1 << 1;
        /// VMLOAD.
        const VMLOAD = 1 << 2;
        /// VMSAVE.
        const VMSAVE = 1 << 3;
        /// STGI.
        const STGI = 1 << 4;
        /// CLGI.
        const CLGI = 1 << 5;
        /// SKINIT.
        const SKINIT = 1 << 6;
        /// RDTSCP.
        const RDTSCP = 1 << 7;
        /// ICEBP (INT1).
        const ICEBP = 1 << 8;
        /// WBINVD and WBNOINVD.
        const WBINVD = 1 << 9;
        /// MONITOR and MONITORX.
        const MONITOR = 1 << 10;
        /// MWAIT and MWAITX, unconditionally.
        const MWAIT = 1 << 11;
        /// MWAIT and MWAITX, if the monitor hardware is armed.
        const MWAIT_CONDITIONAL = 1 << 12;
        /// XSETBV.
        const XSETBV = 1 << 13;
        /// RDPRU.
        const RDPRU = 1 << 14;
        /// Writes of EFER, after the instruction completes (trap).
        const EFER_WRITE_TRAP = 1 << 15;
    }
}

bitflags! {
    /// The intercept word at 014h.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct InterceptMisc3: u32 {
        /// INVLPGB (all).
        const INVLPGB = 1 << 0;
        /// Illegally specified INVLPGB.
        const INVLPGB_ILLEGAL = 1 << 1;
        /// INVPCID.
        const INVPCID = 1 << 2;
        /// MCOMMIT.
        const MCOMMIT = 1 << 3;
        /// TLBSYNC.
        const TLBSYNC = 1 << 4;
        /// Bus lock (with the bus-lock threshold).
        const BUS_LOCK = 1 << 5;
    }
}

/// Exception vectors used in intercept and injection decisions.
pub mod vector {
    /// #DE.
    pub const DE: u8 = 0;
    /// #DB.
    pub const DB: u8 = 1;
    /// NMI.
    pub const NMI: u8 = 2;
    /// #BP.
    pub const BP: u8 = 3;
    /// #UD.
    pub const UD: u8 = 6;
    /// #DF.
    pub const DF: u8 = 8;
    /// #TS.
    pub const TS: u8 = 10;
    /// #NP.
    pub const NP: u8 = 11;
    /// #SS.
    pub const SS: u8 = 12;
    /// #GP.
    pub const GP: u8 = 13;
    /// #PF.
    pub const PF: u8 = 14;
    /// #AC.
    pub const AC: u8 = 17;
    /// #MC.
    pub const MC: u8 = 18;
}

/// How guest physical memory is translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paging {
    /// Nested paging: the guest owns CR3 and its page faults.
    Nested,
    /// Shadow paging: CR0/CR3/CR4 writes, INVLPG and #PF go to the host.
    Shadow,
}

/// What `KVM_SET_GUEST_DEBUG` asks to trap, as far as intercepts go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DebugIntercepts {
    /// `KVM_GUESTDBG_USE_SW_BP`: intercept #BP.
    pub sw_breakpoints: bool,
}

/// The complete intercept state of a VMCB (offsets 000h–017h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intercepts {
    /// 000h: CR reads (15:0) and writes (31:16).
    pub cr: u32,
    /// 004h: DR reads (15:0) and writes (31:16).
    pub dr: u32,
    /// 008h: exception vectors.
    pub exceptions: u32,
    /// 00Ch.
    pub misc1: InterceptMisc1,
    /// 010h.
    pub misc2: InterceptMisc2,
    /// 014h.
    pub misc3: InterceptMisc3,
}

/// Bit of `Intercepts::cr` for a read of CR`n`.
pub const fn cr_read(n: u32) -> u32 {
    1 << (n & 15)
}

/// Bit of `Intercepts::cr` for a write of CR`n`.
pub const fn cr_write(n: u32) -> u32 {
    1 << ((n & 15) + 16)
}

impl Intercepts {
    /// The intercepts a KVM guest runs with.
    ///
    /// - Exits the core must handle: CPUID, HLT, IN/OUT and RDMSR/WRMSR (through the permission
    ///   maps), XSETBV (XCR0 must be checked), SHUTDOWN, and physical INTR/NMI/SMI/INIT (the host
    ///   keeps its interrupts; INIT would otherwise reset the physical CPU's guest context).
    /// - Host safety against a hostile guest: every SVM instruction (VMRUN is required by the
    ///   architecture; VMLOAD/VMSAVE/INVLPGA would reach host physical memory or other ASIDs,
    ///   STGI/CLGI/SKINIT the host's GIF), INVD (would discard host dirty cache lines),
    ///   WBINVD (long uninterruptible operation), MONITOR/MWAIT (would idle the host CPU),
    ///   RDPRU, and #AC and #DB, whose delivery can loop forever in microcode
    ///   (CVE-2015-5307, CVE-2015-8104); the core reflects them back to the guest.
    /// - #MC, so machine checks reach the host.
    /// - With shadow paging: CR0/CR3/CR4 reads and writes, INVLPG and #PF.
    /// - VINTR and IRET are dynamic (interrupt and NMI windows): off here, see
    ///   [`set_interrupt_window`].
    pub fn for_kvm(paging: Paging, debug: DebugIntercepts) -> Self {
        let mut exceptions = 1u32 << vector::DB | 1 << vector::AC | 1 << vector::MC;
        if debug.sw_breakpoints {
            exceptions |= 1 << vector::BP;
        }
        let mut cr = 0;
        let mut misc1 = InterceptMisc1::INTR
            | InterceptMisc1::NMI
            | InterceptMisc1::SMI
            | InterceptMisc1::INIT
            | InterceptMisc1::CPUID
            | InterceptMisc1::RSM
            | InterceptMisc1::INVD
            | InterceptMisc1::HLT
            | InterceptMisc1::INVLPGA
            | InterceptMisc1::IOIO_PROT
            | InterceptMisc1::MSR_PROT
            | InterceptMisc1::SHUTDOWN;
        if paging == Paging::Shadow {
            cr = cr_read(0) | cr_write(0) | cr_read(3) | cr_write(3) | cr_read(4) | cr_write(4);
            misc1 |= InterceptMisc1::INVLPG;
            exceptions |= 1 << vector::PF;
        }
        let misc2 = InterceptMisc2::VMRUN
            | InterceptMisc2::VMMCALL
            | InterceptMisc2::VMLOAD
            | InterceptMisc2::VMSAVE
            | InterceptMisc2::STGI
            | InterceptMisc2::CLGI
            | InterceptMisc2::SKINIT
            | InterceptMisc2::WBINVD
            | InterceptMisc2::MONITOR
            | InterceptMisc2::MWAIT
            | InterceptMisc2::XSETBV
            | InterceptMisc2::RDPRU;
        Intercepts {
            cr,
            dr: 0,
            exceptions,
            misc1,
            misc2,
            misc3: InterceptMisc3::empty(),
        }
    }

    /// Writes the intercept words into the control area (the caller clears the `I` clean bit).
    pub fn apply(&self, c: &mut VmcbControl) {
        c.intercept_cr = self.cr;
        c.intercept_dr = self.dr;
        c.intercept_exceptions = self.exceptions;
        c.intercept_misc1 = self.misc1.bits();
        c.intercept_misc2 = self.misc2.bits();
        c.intercept_misc3 = self.misc3.bits();
    }

    /// Reads the intercept words back from a control area.
    pub fn read(c: &VmcbControl) -> Self {
        Intercepts {
            cr: c.intercept_cr,
            dr: c.intercept_dr,
            exceptions: c.intercept_exceptions,
            misc1: InterceptMisc1::from_bits_retain(c.intercept_misc1),
            misc2: InterceptMisc2::from_bits_retain(c.intercept_misc2),
            misc3: InterceptMisc3::from_bits_retain(c.intercept_misc3),
        }
    }
}

/// Turns the VINTR intercept on or off: on asks for an exit as soon as the guest can take a
/// (virtual) interrupt. Returns whether the word changed (then the `I` clean bit must go).
pub fn set_interrupt_window(c: &mut VmcbControl, on: bool) -> bool {
    set_misc1(c, InterceptMisc1::VINTR, on)
}

/// Turns the IRET intercept on or off (NMI window without vNMI). Returns whether it changed.
pub fn set_iret_intercept(c: &mut VmcbControl, on: bool) -> bool {
    set_misc1(c, InterceptMisc1::IRET, on)
}

fn set_misc1(c: &mut VmcbControl, f: InterceptMisc1, on: bool) -> bool {
    let old = c.intercept_misc1;
    let mut m = InterceptMisc1::from_bits_retain(old);
    m.set(f, on);
    c.intercept_misc1 = m.bits();
    old != c.intercept_misc1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmcb::Vmcb;

    #[test]
    fn kvm_set_has_required_and_safety_intercepts() {
        let i = Intercepts::for_kvm(Paging::Nested, DebugIntercepts::default());
        // VMRUN is architecturally required.
        assert!(i.misc2.contains(InterceptMisc2::VMRUN));
        for f in [
            InterceptMisc1::CPUID,
            InterceptMisc1::HLT,
            InterceptMisc1::IOIO_PROT,
            InterceptMisc1::MSR_PROT,
            InterceptMisc1::SHUTDOWN,
            InterceptMisc1::INTR,
            InterceptMisc1::NMI,
            InterceptMisc1::INIT,
            InterceptMisc1::INVD,
            InterceptMisc1::INVLPGA,
        ] {
            assert!(i.misc1.contains(f), "{f:?}");
        }
        assert!(i
            .misc2
            .contains(InterceptMisc2::XSETBV | InterceptMisc2::VMLOAD));
        assert!(i
            .misc2
            .contains(InterceptMisc2::VMSAVE | InterceptMisc2::CLGI));
        assert_eq!(i.exceptions, 1 << 1 | 1 << 17 | 1 << 18);
        // Nested paging: no CR, INVLPG or #PF intercepts, no windows yet.
        assert_eq!(i.cr, 0);
        assert!(!i
            .misc1
            .intersects(InterceptMisc1::INVLPG | InterceptMisc1::VINTR));
        // The raw word at 00Ch, bit by bit from Table B-1.
        assert_eq!(
            i.misc1.bits(),
            0x8000_0000 | 1 << 28 | 1 << 27 | 1 << 26 | 1 << 24 | 1 << 22 | 1 << 19 | 1 << 18 | 0xf
        );
    }

    #[test]
    fn shadow_paging_and_debug_add_intercepts() {
        let i = Intercepts::for_kvm(
            Paging::Shadow,
            DebugIntercepts {
                sw_breakpoints: true,
            },
        );
        assert_eq!(i.cr, 0x0019_0019);
        assert!(i.misc1.contains(InterceptMisc1::INVLPG));
        assert_ne!(i.exceptions & 1 << 14, 0);
        assert_ne!(i.exceptions & 1 << 3, 0);
    }

    #[test]
    fn apply_read_and_windows() {
        let mut v: Box<Vmcb> = Box::new(unsafe { core::mem::zeroed() });
        let i = Intercepts::for_kvm(Paging::Nested, DebugIntercepts::default());
        i.apply(&mut v.control);
        assert_eq!(Intercepts::read(&v.control), i);
        assert!(set_interrupt_window(&mut v.control, true));
        assert!(!set_interrupt_window(&mut v.control, true));
        assert_ne!(v.control.intercept_misc1 & 1 << 4, 0);
        assert!(set_iret_intercept(&mut v.control, true));
        assert!(set_interrupt_window(&mut v.control, false));
        assert_eq!(v.control.intercept_misc1, i.misc1.bits() | 1 << 20);
    }
}
