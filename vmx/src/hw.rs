//! The VMX instructions other than VMREAD/VMWRITE (`vmcs.rs`) and the world switch
//! (`switch.rs`), behind [`VmxInstr`] so the logic around them is host-tested with a fake;
//! [`RealVmx`] executes them. Failures come back as [`VmFail`] values (SDM §31.2).

use crate::vmcs::{vm_status, VmFail};

/// INVEPT types (SDM §31.3 "INVEPT").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InveptType {
    /// Mappings tagged with one EPTP.
    SingleContext = 1,
    /// All EPT-derived mappings.
    AllContext = 2,
}

/// INVVPID types (SDM §31.3 "INVVPID").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvvpidType {
    /// One linear address of one VPID.
    IndividualAddress = 0,
    /// Everything tagged with one VPID.
    SingleContext = 1,
    /// Everything tagged with any VPID but 0.
    AllContext = 2,
    /// One VPID except global translations.
    SingleContextRetainingGlobals = 3,
}

/// VMXON, VMXOFF, VMCLEAR, VMPTRLD, INVEPT, INVVPID.
///
/// # Safety
/// Implementations execute privileged instructions; each method is valid only in the situation
/// its documentation states.
pub unsafe trait VmxInstr {
    /// VMXON with the 4 KiB VMXON region at physical `pa` (revision identifier written).
    ///
    /// # Safety
    /// CR4.VMXE is set, the fixed CR0/CR4 bits hold, `IA32_FEATURE_CONTROL` allows VMX, and
    /// the region stays allocated until VMXOFF.
    unsafe fn vmxon(&self, pa: u64) -> Result<(), VmFail>;
    /// VMXOFF.
    ///
    /// # Safety
    /// No VMCS of this CPU is in use; the caller owns VMX operation on this CPU.
    unsafe fn vmxoff(&self) -> Result<(), VmFail>;
    /// VMCLEAR of the VMCS at physical `pa`: writes its state back to memory, makes it
    /// inactive and "clear" (the next entry must be VMLAUNCH).
    ///
    /// # Safety
    /// VMX root operation; `pa` is a VMCS region of this backend.
    unsafe fn vmclear(&self, pa: u64) -> Result<(), VmFail>;
    /// VMPTRLD: makes the VMCS at `pa` current on this CPU.
    ///
    /// # Safety
    /// VMX root operation; `pa` is a VMCS region of this backend that no other CPU has current
    /// (VMCLEAR it on its last CPU before migrating).
    unsafe fn vmptrld(&self, pa: u64) -> Result<(), VmFail>;
    /// INVEPT of `eptp` (ignored for all-context).
    ///
    /// # Safety
    /// VMX root operation; the type is supported (`EptVpidCaps`).
    unsafe fn invept(&self, kind: InveptType, eptp: u64) -> Result<(), VmFail>;
    /// INVVPID of `vpid` (and `addr` for individual-address).
    ///
    /// # Safety
    /// VMX root operation; the type is supported (`EptVpidCaps`).
    unsafe fn invvpid(&self, kind: InvvpidType, vpid: u16, addr: u64) -> Result<(), VmFail>;
}

/// The real instructions, for the kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealVmx;

#[cfg(target_arch = "x86_64")]
mod real {
    use super::*;
    use crate::vmcs::read_instruction_error;

    /// Runs one VMX instruction with a memory operand at `op` and returns its outcome.
    macro_rules! vmx_mem_op {
        ($insn:literal, $op:expr) => {{
            let (cf, zf): (u8, u8);
            let op = $op;
            // SAFETY: the caller upholds the instruction's contract (see `VmxInstr`); the
            // operand is a live local read by the instruction.
            unsafe {
                core::arch::asm!(concat!($insn, " qword ptr [{op}]"), "setc {cf}", "setz {zf}",
                    op = in(reg) core::ptr::addr_of!(op), cf = out(reg_byte) cf,
                    zf = out(reg_byte) zf, options(nostack));
            }
            vm_status(cf, zf, read_instruction_error)
        }};
    }

    // SAFETY: each method executes exactly the instruction it names.
    unsafe impl VmxInstr for RealVmx {
        unsafe fn vmxon(&self, pa: u64) -> Result<(), VmFail> {
            vmx_mem_op!("vmxon", pa)
        }

        unsafe fn vmxoff(&self) -> Result<(), VmFail> {
            let (cf, zf): (u8, u8);
            // SAFETY: the caller guarantees no VMCS of this CPU is in use.
            unsafe {
                core::arch::asm!("vmxoff", "setc {cf}", "setz {zf}", cf = out(reg_byte) cf,
                    zf = out(reg_byte) zf, options(nostack));
            }
            vm_status(cf, zf, read_instruction_error)
        }

        unsafe fn vmclear(&self, pa: u64) -> Result<(), VmFail> {
            vmx_mem_op!("vmclear", pa)
        }

        unsafe fn vmptrld(&self, pa: u64) -> Result<(), VmFail> {
            vmx_mem_op!("vmptrld", pa)
        }

        unsafe fn invept(&self, kind: InveptType, eptp: u64) -> Result<(), VmFail> {
            let desc: [u64; 2] = [eptp, 0];
            let (cf, zf): (u8, u8);
            // SAFETY: the caller guarantees VMX root operation and a supported type; the
            // descriptor is a live local.
            unsafe {
                core::arch::asm!("invept {t}, [{d}]", "setc {cf}", "setz {zf}",
                    t = in(reg) kind as u64, d = in(reg) desc.as_ptr(), cf = out(reg_byte) cf,
                    zf = out(reg_byte) zf, options(nostack));
            }
            vm_status(cf, zf, read_instruction_error)
        }

        unsafe fn invvpid(&self, kind: InvvpidType, vpid: u16, addr: u64) -> Result<(), VmFail> {
            let desc: [u64; 2] = [u64::from(vpid), addr];
            let (cf, zf): (u8, u8);
            // SAFETY: as for `invept`.
            unsafe {
                core::arch::asm!("invvpid {t}, [{d}]", "setc {cf}", "setz {zf}",
                    t = in(reg) kind as u64, d = in(reg) desc.as_ptr(), cf = out(reg_byte) cf,
                    zf = out(reg_byte) zf, options(nostack));
            }
            vm_status(cf, zf, read_instruction_error)
        }
    }
}

/// Writes the revision identifier into a VMXON or VMCS region (bit 31 clear: not a shadow
/// VMCS), as VMXON and VMPTRLD require (SDM §25.2 "Format of the VMCS Region").
pub fn init_region(region: &mut [u8; 4096], revision_id: u32) {
    region.fill(0);
    let id = (revision_id & 0x7fff_ffff).to_le_bytes();
    for (b, v) in region.iter_mut().zip(id) {
        *b = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_header() {
        let mut r = [0xffu8; 4096];
        init_region(&mut r, 0x8000_002b);
        assert_eq!(&r[..4], &[0x2b, 0, 0, 0]);
        assert!(r[4..].iter().all(|&b| b == 0));
    }
}
