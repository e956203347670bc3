//! VMCS field access behind [`Vmcs`] (VMREAD/VMWRITE by encoding), VM-instruction errors, and
//! the field-encoding facts (SDM vol. 3C §25.11.2 "VMREAD, VMWRITE, and Encodings of VMCS
//! Fields"). Field encodings themselves come from `x86::vmx::vmcs`.

use core::fmt;

/// The error number in the VM-instruction error field after VMfailValid (SDM §31.4,
/// "VM Instruction Error Numbers").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmInstructionError(pub u32);

impl VmInstructionError {
    /// VMRESUME with a VMCS that was not launched.
    pub const VMRESUME_NONLAUNCHED: Self = Self(5);
    /// VMLAUNCH with a VMCS that was already launched.
    pub const VMLAUNCH_NONCLEAR: Self = Self(4);
    /// VM entry with invalid control fields.
    pub const ENTRY_INVALID_CONTROLS: Self = Self(7);
    /// VM entry with invalid host-state fields.
    pub const ENTRY_INVALID_HOST_STATE: Self = Self(8);
    /// VMREAD/VMWRITE of an unsupported VMCS component.
    pub const UNSUPPORTED_COMPONENT: Self = Self(12);
    /// VMWRITE to a read-only VMCS component.
    pub const WRITE_READ_ONLY: Self = Self(13);

    /// The SDM's description of the error.
    pub const fn description(self) -> &'static str {
        match self.0 {
            1 => "VMCALL executed in VMX root operation",
            2 => "VMCLEAR with invalid physical address",
            3 => "VMCLEAR with VMXON pointer",
            4 => "VMLAUNCH with non-clear VMCS",
            5 => "VMRESUME with non-launched VMCS",
            6 => "VMRESUME after VMXOFF",
            7 => "VM entry with invalid control field(s)",
            8 => "VM entry with invalid host-state field(s)",
            9 => "VMPTRLD with invalid physical address",
            10 => "VMPTRLD with VMXON pointer",
            11 => "VMPTRLD with incorrect VMCS revision identifier",
            12 => "VMREAD/VMWRITE from/to unsupported VMCS component",
            13 => "VMWRITE to read-only VMCS component",
            15 => "VMXON executed in VMX root operation",
            16 => "VM entry with invalid executive-VMCS pointer",
            17 => "VM entry with non-launched executive VMCS",
            18 => "VM entry with executive-VMCS pointer not VMXON pointer",
            19 => "VMCALL with non-clear VMCS",
            20 => "VMCALL with invalid VM-exit control fields",
            22 => "VMCALL with incorrect MSEG revision identifier",
            23 => "VMXOFF under dual-monitor treatment of SMIs and SMM",
            24 => "VMCALL with invalid SMM-monitor features",
            25 => "VM entry with invalid VM-execution control fields in executive VMCS",
            26 => "VM entry with events blocked by MOV SS",
            28 => "Invalid operand to INVEPT/INVVPID",
            _ => "unknown VM-instruction error",
        }
    }
}

/// How a VMX instruction failed (SDM §31.2 "Conventions").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmFail {
    /// VMfailInvalid (CF = 1): no current VMCS, or the pointer operand is invalid.
    Invalid,
    /// VMfailValid (ZF = 1) with the VM-instruction error field's value.
    Valid(VmInstructionError),
}

impl fmt::Display for VmFail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmFail::Invalid => f.write_str("VMfailInvalid"),
            VmFail::Valid(e) => write!(f, "VMfailValid({}: {})", e.0, e.description()),
        }
    }
}

/// The width of a VMCS field, from encoding bits 14:13.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldWidth {
    /// 16-bit.
    W16,
    /// 64-bit (the "high" access type, bit 0 = 1, reads the upper 32 bits).
    W64,
    /// 32-bit.
    W32,
    /// Natural width (64 bits on x86-64).
    Natural,
}

/// The width of field `encoding`.
pub const fn field_width(encoding: u32) -> FieldWidth {
    match (encoding >> 13) & 3 {
        0 => FieldWidth::W16,
        1 => FieldWidth::W64,
        2 => FieldWidth::W32,
        _ => FieldWidth::Natural,
    }
}

/// Whether field `encoding` is a read-only VM-exit information field (type bits 11:10 = 1).
pub const fn field_read_only(encoding: u32) -> bool {
    (encoding >> 10) & 3 == 1
}

/// The largest value field `encoding` holds.
pub const fn field_mask(encoding: u32) -> u64 {
    match field_width(encoding) {
        FieldWidth::W16 => 0xffff,
        FieldWidth::W32 => 0xffff_ffff,
        FieldWidth::W64 if encoding & 1 == 1 => 0xffff_ffff,
        FieldWidth::W64 | FieldWidth::Natural => u64::MAX,
    }
}

/// Access to the current VMCS by field encoding.
pub trait Vmcs {
    /// VMREAD.
    fn read(&self, field: u32) -> Result<u64, VmFail>;
    /// VMWRITE.
    fn write(&mut self, field: u32, value: u64) -> Result<(), VmFail>;
}

/// The current VMCS of this CPU, through the VMREAD and VMWRITE instructions.
#[derive(Debug)]
pub struct CurrentVmcs {
    _private: (),
}

impl CurrentVmcs {
    /// A handle on the current VMCS.
    ///
    /// # Safety
    /// This CPU is in VMX root operation with the vCPU's VMCS loaded (VMPTRLD) and stays so,
    /// without migrating, while the handle lives.
    pub unsafe fn new() -> Self {
        Self { _private: () }
    }
}

/// Converts the flags after a VMX instruction into its outcome; on VMfailValid the error
/// number comes from `error_field`.
pub(crate) fn vm_status(cf: u8, zf: u8, error_field: impl FnOnce() -> u32) -> Result<(), VmFail> {
    if cf != 0 {
        Err(VmFail::Invalid)
    } else if zf != 0 {
        Err(VmFail::Valid(VmInstructionError(error_field())))
    } else {
        Ok(())
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn read_instruction_error() -> u32 {
    let v: u64;
    // SAFETY: VMREAD of the VM-instruction error field, only called after a VMfailValid, which
    // implies a current VMCS; no memory is touched.
    unsafe {
        core::arch::asm!("vmread {}, {}", out(reg) v,
            in(reg) u64::from(x86::vmx::vmcs::ro::VM_INSTRUCTION_ERROR),
            options(nomem, nostack));
    }
    v as u32
}

#[cfg(target_arch = "x86_64")]
impl Vmcs for CurrentVmcs {
    fn read(&self, field: u32) -> Result<u64, VmFail> {
        let (v, cf, zf): (u64, u8, u8);
        // SAFETY: `CurrentVmcs::new`'s contract: VMX root operation with a current VMCS.
        unsafe {
            core::arch::asm!("vmread {v}, {f}", "setc {cf}", "setz {zf}",
                v = out(reg) v, f = in(reg) u64::from(field), cf = out(reg_byte) cf,
                zf = out(reg_byte) zf, options(nomem, nostack));
        }
        vm_status(cf, zf, read_instruction_error).map(|()| v)
    }

    fn write(&mut self, field: u32, value: u64) -> Result<(), VmFail> {
        let (cf, zf): (u8, u8);
        // SAFETY: as for `read`; VMWRITE changes only the current VMCS, which this handle owns.
        unsafe {
            core::arch::asm!("vmwrite {f}, {v}", "setc {cf}", "setz {zf}",
                f = in(reg) u64::from(field), v = in(reg) value, cf = out(reg_byte) cf,
                zf = out(reg_byte) zf, options(nostack));
        }
        vm_status(cf, zf, read_instruction_error)
    }
}

#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::collections::HashMap;

    /// A VMCS in a map that behaves like the hardware on the mistakes a VMM can make: writing a
    /// read-only field or a value wider than the field fails with the SDM's error numbers;
    /// reading a never-written field gives 0 (a cleared VMCS).
    #[derive(Default, Debug, Clone)]
    pub struct FakeVmcs {
        pub fields: HashMap<u32, u64>,
        /// Every successful write, in order.
        pub writes: Vec<(u32, u64)>,
    }

    impl FakeVmcs {
        /// Stores a VM-exit information field as the processor would.
        pub fn set_exit_field(&mut self, field: u32, value: u64) {
            self.fields.insert(field, value);
        }
        pub fn get(&self, field: u32) -> u64 {
            self.fields.get(&field).copied().unwrap_or(0)
        }
    }

    impl Vmcs for FakeVmcs {
        fn read(&self, field: u32) -> Result<u64, VmFail> {
            if field & 0xffff_8000 != 0 {
                return Err(VmFail::Valid(VmInstructionError::UNSUPPORTED_COMPONENT));
            }
            Ok(self.get(field) & field_mask(field))
        }
        fn write(&mut self, field: u32, value: u64) -> Result<(), VmFail> {
            if field & 0xffff_8000 != 0 {
                return Err(VmFail::Valid(VmInstructionError::UNSUPPORTED_COMPONENT));
            }
            if field_read_only(field) {
                return Err(VmFail::Valid(VmInstructionError::WRITE_READ_ONLY));
            }
            assert_eq!(
                value & !field_mask(field),
                0,
                "value {value:#x} does not fit field {field:#x}"
            );
            self.fields.insert(field, value);
            self.writes.push((field, value));
            Ok(())
        }
    }

    #[test]
    fn field_facts() {
        use x86::vmx::vmcs::{control, guest, host, ro};
        assert_eq!(field_width(guest::CS_SELECTOR), FieldWidth::W16);
        assert_eq!(field_width(guest::CS_LIMIT), FieldWidth::W32);
        assert_eq!(field_width(guest::IA32_EFER_FULL), FieldWidth::W64);
        assert_eq!(field_width(host::RIP), FieldWidth::Natural);
        assert!(field_read_only(ro::EXIT_REASON));
        assert!(field_read_only(ro::GUEST_PHYSICAL_ADDR_FULL));
        assert!(!field_read_only(control::PINBASED_EXEC_CONTROLS));
        assert_eq!(field_mask(guest::IA32_EFER_HIGH), 0xffff_ffff);
        let mut v = FakeVmcs::default();
        assert_eq!(
            v.write(ro::EXIT_REASON, 1),
            Err(VmFail::Valid(VmInstructionError::WRITE_READ_ONLY))
        );
        v.write(guest::RIP, 0xfff0).unwrap();
        assert_eq!(v.read(guest::RIP), Ok(0xfff0));
        assert_eq!(
            VmFail::Valid(VmInstructionError(7)).to_string(),
            "VMfailValid(7: VM entry with invalid control field(s))"
        );
        assert_eq!(vm_status(1, 0, || 0), Err(VmFail::Invalid));
        assert_eq!(
            vm_status(0, 1, || 8),
            Err(VmFail::Valid(VmInstructionError(8)))
        );
        assert_eq!(vm_status(0, 0, || unreachable!()), Ok(()));
    }
}
