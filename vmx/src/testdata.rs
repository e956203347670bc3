//! Recorded VMX capability MSR values of several CPU models, for the host tests.
//!
//! Two kinds:
//!
//! - **Bochs 2.7 models** (the emulator of the nested VMX harness; Debian 12 ships
//!   `bochs 2.7+dfsg`). Bochs computes its VMX MSRs from each CPU model's list of VMX
//!   extensions (`get_vmx_extensions_bitmask()` in `cpu/cpudb/intel/<model>.cc`) and ISA
//!   extensions (`enable_cpu_extension(...)`), through `init_vmx_capabilities()` in
//!   `cpu/vmcs.cc` and the `VMX_MSR_*` definitions in `cpu/vmx.h` (tag `REL_2_7_FINAL`, built
//!   with `--enable-vmx=2 --enable-x86-64`). The values below were derived by hand from those
//!   facts: BASIC = revision 0x2b, size 4096, WB, INS/OUTS info, TRUE controls; allowed-0 halves
//!   0x16 / 0x0401e172 (TRUE 0x04006172) / 0x00036dff (TRUE 0x00036dfb) / 0x000011ff (TRUE
//!   0x000011fb); allowed-1 = those bits | the model's supported controls; CR0_FIXED0
//!   0x80000021, CR0_FIXED1 0xffffffff, CR4_FIXED0 0x2000, CR4_FIXED1 = the model's CR4 mask;
//!   MISC = LMA store (bit 5), HLT/shutdown/wait-for-SIPI activity (6-8), 4 CR3 targets, plus
//!   bit 29 with VMCS shadowing and bit 30 with zero-length software-interrupt injection.
//! - **Real processors**: the dumps of physical CPUs that the Bochs authors recorded as comments
//!   next to the corresponding models in the Bochs sources (`cpu/cpudb/intel/corei7_skylake-x.cc`,
//!   `core2_penryn_t9600.cc`, `corei7_sandy_bridge_2600K.cc` on the master branch, 2025). The
//!   Skylake-X dump does not list `IA32_VMX_VMFUNC` although VM functions may be enabled: the
//!   value 1 (EPTP switching, the only VM function defined) is assumed; nothing here uses it.

use crate::caps::{MsrSource, TrueCtls, VmxCapMsrs};
use std::collections::HashMap;

/// The MSRs of a recorded CPU; reading an MSR the CPU does not have fails the test (a real
/// CPU would raise #GP).
pub struct Recorded(pub HashMap<u32, u64>);

impl MsrSource for Recorded {
    fn rdmsr(&self, index: u32) -> u64 {
        match self.0.get(&index) {
            Some(v) => *v,
            None => panic!("rdmsr of absent MSR {index:#x}"),
        }
    }
}

/// The recorded MSRs as a map, as a CPU would answer RDMSR.
pub fn as_msrs(m: &VmxCapMsrs) -> Recorded {
    let mut h = HashMap::new();
    h.insert(0x480, m.basic);
    h.insert(0x481, m.pinbased);
    h.insert(0x482, m.procbased);
    h.insert(0x483, m.exit);
    h.insert(0x484, m.entry);
    h.insert(0x485, m.misc);
    h.insert(0x486, m.cr0_fixed0);
    h.insert(0x487, m.cr0_fixed1);
    h.insert(0x488, m.cr4_fixed0);
    h.insert(0x489, m.cr4_fixed1);
    if let Some(v) = m.procbased2 {
        h.insert(0x48b, v);
    }
    if let Some(v) = m.ept_vpid_cap {
        h.insert(0x48c, v);
    }
    if let Some(t) = m.true_ctls {
        h.insert(0x48d, t.pinbased);
        h.insert(0x48e, t.procbased);
        h.insert(0x48f, t.exit);
        h.insert(0x490, t.entry);
    }
    if let Some(v) = m.vmfunc {
        h.insert(0x491, v);
    }
    Recorded(h)
}

const BOCHS_BASIC: u64 = 0x00d8_1000_0000_002b;

/// Bochs 2.7 `cpu: model=corei7_skylake_x` (the harness's VMX CPU): EPT, VPID, unrestricted
/// guest, EPT A/D, 1 GiB pages, PML, VMCS shadowing, RDTSCP/INVPCID/XSAVES/RDRAND/RDSEED.
pub const BOCHS_SKYLAKE_X: VmxCapMsrs = VmxCapMsrs {
    basic: BOCHS_BASIC,
    pinbased: 0x0000_007f_0000_0016,
    procbased: 0xfff9_fffe_0401_e172,
    exit: 0x007f_ffff_0003_6dff,
    entry: 0x0000_ffff_0000_11ff,
    misc: 0x6004_01e0,
    cr0_fixed0: 0x8000_0021,
    cr0_fixed1: 0xffff_ffff,
    cr4_fixed0: 0x2000,
    cr4_fixed1: 0x0037_27ff,
    procbased2: Some(0x0217_7fff_0000_0000),
    ept_vpid_cap: Some(0x0000_0f01_0633_4141),
    true_ctls: Some(TrueCtls {
        pinbased: 0x0000_007f_0000_0016,
        procbased: 0xfff9_fffe_0400_6172,
        exit: 0x007f_ffff_0003_6dfb,
        entry: 0x0000_ffff_0000_11fb,
    }),
    vmfunc: Some(1),
};

/// Bochs 2.7 `corei7_haswell_4770`: like Skylake-X without XSAVES, RDSEED, SMAP, PML, TSC
/// scaling.
pub const BOCHS_HASWELL: VmxCapMsrs = VmxCapMsrs {
    misc: 0x2004_01e0,
    cr4_fixed1: 0x0017_27ff,
    procbased2: Some(0x0004_7fff_0000_0000),
    ..BOCHS_SKYLAKE_X
};

/// Bochs 2.7 `corei5_lynnfield_750`: EPT and VPID but **no unrestricted guest**, no 1 GiB EPT
/// pages, no EPT A/D, no VM functions.
pub const BOCHS_LYNNFIELD: VmxCapMsrs = VmxCapMsrs {
    misc: 0x0004_01e0,
    cr4_fixed1: 0x0000_67ff,
    procbased2: Some(0x0000_007f_0000_0000),
    ept_vpid_cap: Some(0x0000_0f01_0611_4141),
    vmfunc: None,
    ..BOCHS_SKYLAKE_X
};

/// Bochs 2.7 `core2_penryn_t9600`: **no EPT**, no VPID, no PAT/EFER load/save, no
/// preemption timer.
pub const BOCHS_PENRYN: VmxCapMsrs = VmxCapMsrs {
    basic: BOCHS_BASIC,
    pinbased: 0x0000_003f_0000_0016,
    procbased: 0xf7f9_fffe_0401_e172,
    exit: 0x0003_ffff_0003_6dff,
    entry: 0x0000_3fff_0000_11ff,
    misc: 0x0004_01e0,
    cr0_fixed0: 0x8000_0021,
    cr0_fixed1: 0xffff_ffff,
    cr4_fixed0: 0x2000,
    cr4_fixed1: 0x0004_67ff,
    procbased2: Some(0x0000_0041_0000_0000),
    ept_vpid_cap: None,
    true_ctls: Some(TrueCtls {
        pinbased: 0x0000_003f_0000_0016,
        procbased: 0xf7f9_fffe_0400_6172,
        exit: 0x0003_ffff_0003_6dfb,
        entry: 0x0000_3fff_0000_11fb,
    }),
    vmfunc: None,
};

/// A physical Core i7/i9 Skylake-X (dump in Bochs's `corei7_skylake-x.cc`): posted interrupts,
/// PML, TSC scaling, 1 GiB EPT pages, EPT A/D, advanced EPT exit information.
pub const REAL_SKYLAKE_X: VmxCapMsrs = VmxCapMsrs {
    basic: 0x00da_0400_0000_0004,
    pinbased: 0x0000_00ff_0000_0016,
    procbased: 0xfff9_fffe_0401_e172,
    exit: 0x01ff_ffff_0003_6dff,
    entry: 0x0003_ffff_0000_11ff,
    misc: 0x7004_c1e7,
    cr0_fixed0: 0x8000_0021,
    cr0_fixed1: 0xffff_ffff,
    cr4_fixed0: 0x2000,
    cr4_fixed1: 0x0037_27ff,
    procbased2: Some(0x025d_3fff_0000_0000),
    ept_vpid_cap: Some(0x0000_0f01_0673_4141),
    true_ctls: Some(TrueCtls {
        pinbased: 0x0000_00ff_0000_0016,
        procbased: 0xfff9_fffe_0400_6172,
        exit: 0x01ff_ffff_0003_6dfb,
        entry: 0x0003_ffff_0000_11fb,
    }),
    vmfunc: Some(1),
};

/// A physical Core i7-2600K Sandy Bridge (dump in Bochs's `corei7_sandy_bridge_2600K.cc`):
/// EPT, VPID, unrestricted guest; no VM functions, no EPT A/D.
pub const REAL_SANDY_BRIDGE: VmxCapMsrs = VmxCapMsrs {
    basic: 0x00da_0400_0000_0010,
    pinbased: 0x0000_007f_0000_0016,
    procbased: 0xfff9_fffe_0401_e172,
    exit: 0x007f_ffff_0003_6dff,
    entry: 0x0000_ffff_0000_11ff,
    misc: 0x1004_01e5,
    cr0_fixed0: 0x8000_0021,
    cr0_fixed1: 0xffff_ffff,
    cr4_fixed0: 0x2000,
    cr4_fixed1: 0x0006_27ff,
    procbased2: Some(0x0000_00ff_0000_0000),
    ept_vpid_cap: Some(0x0000_0f01_0611_4141),
    true_ctls: Some(TrueCtls {
        pinbased: 0x0000_007f_0000_0016,
        procbased: 0xfff9_fffe_0400_6172,
        exit: 0x007f_ffff_0003_6dfb,
        entry: 0x0000_ffff_0000_11fb,
    }),
    vmfunc: None,
};

/// A physical Core 2 Duo T9600 Penryn (dump in Bochs's `core2_penryn_t9600.cc`): no TRUE
/// control MSRs (`IA32_VMX_BASIC[55]` clear), no EPT, no `IA32_VMX_EPT_VPID_CAP`.
pub const REAL_PENRYN: VmxCapMsrs = VmxCapMsrs {
    basic: 0x005a_0800_0000_000d,
    pinbased: 0x0000_003f_0000_0016,
    procbased: 0xf7f9_fffe_0401_e172,
    exit: 0x0003_ffff_0003_6dff,
    entry: 0x0000_3fff_0000_11ff,
    misc: 0x0004_03c0,
    cr0_fixed0: 0x8000_0021,
    cr0_fixed1: 0xffff_ffff,
    cr4_fixed0: 0x2000,
    cr4_fixed1: 0x0004_67ff,
    procbased2: Some(0x0000_0041_0000_0000),
    ept_vpid_cap: None,
    true_ctls: None,
    vmfunc: None,
};
