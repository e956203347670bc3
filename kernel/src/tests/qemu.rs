//! QEMU start-up replay: the ioctl sequence of QEMU 7.2 (`-machine kernel-irqchip=off`) and
//! QEMU 7.2/10 (`-machine kernel-irqchip=split`, and the default `kernel-irqchip=on`, the full
//! in-kernel irqchip with the in-kernel PIT) from `kvm_init` to the first `KVM_RUN`, each
//! reply checked the way QEMU checks it (accel/kvm/kvm-all.c, target/i386/kvm/kvm.c,
//! hw/i386/kvm/apic.c, hw/intc/ioapic.c, hw/i386/kvm/i8254.c).
//!
//! QEMU ≥ 8.2 (Linux ≥ 4.4 required) also insists on capabilities okvm does not implement yet:
//! [`QEMU10_MISSING`] lists them, and the QEMU 10 replay checks that exactly these are absent,
//! then continues as if QEMU had got past them, so the split-irqchip path is exercised.

use kvm_abi::*;
use zerocopy::IntoBytes;

use crate::backend::Exit;
use crate::errno::E2BIG;
use crate::fake::vmm::{zeroed, Vmm};
use crate::msrs::{self, Mce};

/// QEMU's `MCE_BANKS_DEF`.
const QEMU_MCE_BANKS: u64 = 10;

/// Capabilities QEMU ≥ 8.2 requires that okvm does not offer yet: `kvm_init` stops with "kvm
/// does not support KVM_CAP_..." (the generic and x86 required lists), and
/// `kvm_irqchip_create` with "kvm: irqfd not implemented". Empty now: IOEVENTFD,
/// IOEVENTFD_ANY_LENGTH, IRQFD, X86_ROBUST_SINGLESTEP, MCE and ADJUST_CLOCK are all offered.
pub const QEMU10_MISSING: [u32; 0] = [
];

fn cap(v: &Vmm, h: *mut std::ffi::c_void, c: u32) -> i64 {
    v.ioctl(h, KVM_CHECK_EXTENSION, u64::from(c))
}

/// `kvm_init` up to and including the x86 `kvm_arch_init`; returns the VM fd.
fn kvm_init(v: &Vmm, qemu10: bool) -> i64 {
    // kvm_init: API version must equal KVM_API_VERSION.
    assert_eq!(v.ioctl(v.kvm, KVM_GET_API_VERSION, 0), 12);
    let nr_slots = cap(v, v.kvm, KVM_CAP_NR_MEMSLOTS);
    assert!(nr_slots >= 32, "QEMU falls back to 32 only when 0");
    assert_eq!(cap(v, v.kvm, KVM_CAP_MULTI_ADDRESS_SPACE), 0, "nr_as = 1");
    // -smp 1: within the soft and hard limits.
    assert!(cap(v, v.kvm, KVM_CAP_NR_VCPUS) >= 1);
    assert!(cap(v, v.kvm, KVM_CAP_MAX_VCPUS) >= 1);
    let vm = v.create_vm();
    let vmh = v.h(vm);
    // kvm_check_extension_list(kvm_required_capabilites + kvm_arch_required_capabilities).
    for c in [
        KVM_CAP_USER_MEMORY,
        KVM_CAP_DESTROY_MEMORY_REGION_WORKS,
        KVM_CAP_JOIN_MEMORY_REGIONS_WORKS,
        KVM_CAP_SET_TSS_ADDR,
        KVM_CAP_EXT_CPUID,
        KVM_CAP_MP_STATE,
    ] {
        assert!(cap(v, v.kvm, c) > 0, "required cap {c}");
    }
    if qemu10 {
        // QEMU >= 8.2: kvm_required_capabilites + x86 kvm_arch_required_capabilities, and
        // KVM_CAP_IRQFD for any in-kernel irqchip.
        for c in [
            KVM_CAP_INTERNAL_ERROR_DATA,
            KVM_CAP_IOEVENTFD,
            KVM_CAP_IOEVENTFD_ANY_LENGTH,
            KVM_CAP_SIGNAL_MSI,
            KVM_CAP_IRQ_ROUTING,
            KVM_CAP_DEBUGREGS,
            KVM_CAP_XSAVE,
            KVM_CAP_VCPU_EVENTS,
            KVM_CAP_X86_ROBUST_SINGLESTEP,
            KVM_CAP_MCE,
            KVM_CAP_ADJUST_CLOCK,
            KVM_CAP_SET_IDENTITY_MAP_ADDR,
            KVM_CAP_IRQFD,
        ] {
            let have = cap(v, v.kvm, c) > 0;
            assert_eq!(!have, QEMU10_MISSING.contains(&c), "required cap {c}");
        }
        // kvm_vm_check_extension goes to the VM fd when KVM_CAP_CHECK_EXTENSION_VM is set.
        assert_eq!(cap(v, v.kvm, KVM_CAP_CHECK_EXTENSION_VM), 1);
        assert_eq!(
            cap(v, vmh, KVM_CAP_USER_MEMORY2),
            0,
            "QEMU 10 then uses KVM_SET_USER_MEMORY_REGION"
        );
        assert_eq!(cap(v, vmh, KVM_CAP_GUEST_MEMFD), 0);
    }
    // The page offset QEMU uses for the ring inside the vCPU mapping.
    assert_eq!(cap(v, vmh, KVM_CAP_COALESCED_MMIO), 2);
    assert_eq!(cap(v, vmh, KVM_CAP_COALESCED_PIO), 0);
    assert_eq!(cap(v, vmh, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2), 0);
    assert_eq!(cap(v, vmh, KVM_CAP_DIRTY_LOG_RING), 0);
    assert_eq!(cap(v, vmh, KVM_CAP_VCPU_EVENTS), 1);
    assert_eq!(cap(v, vmh, KVM_CAP_DEBUGREGS), 1);
    assert_eq!(cap(v, vmh, KVM_CAP_XSAVE), 1);
    assert_eq!(cap(v, vmh, KVM_CAP_XCRS), 1);
    assert_eq!(cap(v, vmh, KVM_CAP_READONLY_MEM), 1);
    assert_eq!(
        cap(v, vmh, KVM_CAP_IMMEDIATE_EXIT),
        1,
        "QEMU then uses immediate_exit, not SET_SIGNAL_MASK"
    );
    // kvm_init: kvm_eventfds_allowed / kvm_irqfds_allowed / ioeventfd_any_length; no
    // resampling (VFIO INTx then stays in userspace).
    assert_eq!(cap(v, vmh, KVM_CAP_IOEVENTFD), 1);
    assert_eq!(cap(v, vmh, KVM_CAP_IOEVENTFD_ANY_LENGTH), 1);
    assert_eq!(cap(v, vmh, KVM_CAP_IRQFD), 1);
    assert_eq!(cap(v, vmh, KVM_CAP_IRQFD_RESAMPLE), 0);
    if !qemu10 {
        // QEMU < 8.2 kvm_check_many_ioeventfds: 7 PIO ioeventfds at port 0, 2 bytes,
        // datamatch 0..6, all must be accepted; then deassigned and closed.
        let fds: Vec<i32> = (0..7).map(|_| v.host.eventfd_create()).collect();
        let pio = |fd: i32, i: u64, deassign: bool| {
            let a = v.put(&kvm_ioeventfd {
                datamatch: i,
                addr: 0,
                len: 2,
                fd,
                flags: KVM_IOEVENTFD_FLAG_PIO
                    | KVM_IOEVENTFD_FLAG_DATAMATCH
                    | if deassign {
                        KVM_IOEVENTFD_FLAG_DEASSIGN
                    } else {
                        0
                    },
                ..zeroed()
            });
            v.ioctl(vmh, KVM_IOEVENTFD, a)
        };
        for (i, &fd) in fds.iter().enumerate() {
            assert_eq!(pio(fd, i as u64, false), 0, "many ioeventfds");
        }
        for (i, &fd) in fds.iter().enumerate().rev() {
            assert_eq!(pio(fd, i as u64, true), 0);
            v.host.eventfd_close(fd);
        }
    }
    // kvm_has_pit_state2: kvm-pit then uses KVM_GET/SET_PIT2 (with the HPET-legacy flag).
    assert_eq!(cap(v, vmh, KVM_CAP_PIT_STATE2), 1);
    assert_eq!(cap(v, vmh, KVM_CAP_SET_GUEST_DEBUG), 0);
    assert_eq!(
        cap(v, vmh, KVM_CAP_XSAVE2),
        0,
        "QEMU then uses the 4 KiB KVM_GET_XSAVE"
    );
    assert_eq!(cap(v, vmh, KVM_CAP_SYNC_REGS), 0);
    // Pins are held until slot removal: no MMU-notifier-synchronized MMU to advertise (QEMU then
    // disables RAM discard, which is what it must do).
    assert_eq!(cap(v, vmh, KVM_CAP_SYNC_MMU), 0);
    assert_eq!(cap(v, vmh, KVM_CAP_BINARY_STATS_FD), 0);
    // kvm_arch_init (x86).
    assert_eq!(cap(v, vmh, KVM_CAP_EXCEPTION_PAYLOAD), 0);
    assert_eq!(cap(v, vmh, KVM_CAP_X86_TRIPLE_FAULT_EVENT), 0);
    assert_eq!(cap(v, vmh, KVM_CAP_X86_SMM), 0);
    assert_eq!(cap(v, vmh, KVM_CAP_X86_USER_SPACE_MSR), 0);
    // kvm_get_supported_msrs: nmsrs = 0 → -E2BIG with the count; then the list.
    let hdr = v.put(&0u32);
    assert_eq!(
        v.ioctl(v.kvm, KVM_GET_MSR_INDEX_LIST, hdr),
        -i64::from(E2BIG.0)
    );
    let n: kvm_msr_list = v.get(hdr);
    assert!(n.nmsrs > 0);
    let full = v.buf(4 + 4 * n.nmsrs as usize);
    v.host.user_write(full, n.as_bytes());
    assert_eq!(v.ioctl(v.kvm, KVM_GET_MSR_INDEX_LIST, full), 0);
    let idx = v.host.user_read(full + 4, 4 * n.nmsrs as usize);
    let list: Vec<u32> = idx
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert!(list.contains(&0xc000_0081), "has_msr_star");
    // kvm_get_supported_feature_msrs: asserts nmsrs > 0 after the E2BIG probe.
    assert_eq!(cap(v, v.kvm, KVM_CAP_GET_MSR_FEATURES), 1);
    let fh = v.put(&0u32);
    assert_eq!(
        v.ioctl(v.kvm, KVM_GET_MSR_FEATURE_INDEX_LIST, fh),
        -i64::from(E2BIG.0)
    );
    let fnr: kvm_msr_list = v.get(fh);
    assert!(fnr.nmsrs > 0);
    let ff = v.buf(4 + 4 * fnr.nmsrs as usize);
    v.host.user_write(ff, fnr.as_bytes());
    assert_eq!(v.ioctl(v.kvm, KVM_GET_MSR_FEATURE_INDEX_LIST, ff), 0);
    // kvm_arch_get_supported_msr_feature: KVM_GET_MSRS on /dev/kvm must return 1.
    let mut one = [0u8; 24];
    one[..4].copy_from_slice(&1u32.to_le_bytes());
    one[8..12].copy_from_slice(&0x10au32.to_le_bytes());
    let m = v.put(&one);
    assert_eq!(v.ioctl(v.kvm, KVM_GET_MSRS, m), 1);
    // Identity map and TSS below the BIOS.
    assert_eq!(cap(v, vmh, KVM_CAP_SET_IDENTITY_MAP_ADDR), 1);
    let ident = v.put(&0xfeff_c000u64);
    assert_eq!(v.ioctl(vmh, KVM_SET_IDENTITY_MAP_ADDR, ident), 0);
    assert_eq!(v.ioctl(vmh, KVM_SET_TSS_ADDR, 0xfeff_d000), 0);
    vm
}

/// `kvm_arch_get_supported_cpuid` / `try_get_cpuid`: nent from 1, doubled on -E2BIG.
fn supported_cpuid(v: &Vmm) -> Vec<kvm_cpuid_entry2> {
    let mut max = 1u32;
    loop {
        let a = v.buf(8 + 40 * max as usize);
        v.host.user_write(a, &max.to_le_bytes());
        let r = v.ioctl(v.kvm, KVM_GET_SUPPORTED_CPUID, a);
        if r == -i64::from(E2BIG.0) {
            max *= 2;
            assert!(max <= 256);
            continue;
        }
        assert_eq!(r, 0);
        let nent = u32::from_le_bytes(v.host.user_read(a, 4).try_into().unwrap());
        let bytes = v.host.user_read(a + 8, 40 * nent as usize);
        return bytes
            .chunks(40)
            .map(|c| <kvm_cpuid_entry2 as zerocopy::FromBytes>::read_from_bytes(c).unwrap())
            .collect();
    }
}

/// `kvm_init_vcpu` + `kvm_arch_init_vcpu` + the reset-level `kvm_arch_put_registers`
/// (the part of the sequence shared by QEMU 7.2 and 10); returns the vCPU fd.
fn init_vcpu(
    v: &Vmm,
    vm: i64,
    id: u64,
    sup: &[kvm_cpuid_entry2],
    apic_base: u64,
    mp_state: u32,
    before_reset: impl Fn(i64),
) -> i64 {
    // kvm_init_vcpu.
    let cpu = v.create_vcpu(vm, id);
    // kvm_init_vcpu asks for a stats fd and keeps going when it fails.
    assert!(v.ioctl_fd(cpu, KVM_GET_STATS_FD, 0) < 0);
    let mmap_size = v.ioctl(v.kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    assert_eq!(mmap_size, 3 * 4096);
    for pg in 0..3 {
        assert_ne!(v.mmap(cpu, pg), 0);
    }
    // SAFETY: the fake host's physical address is the kernel address of the page.
    unsafe { assert!(v.sys.mmap(v.h(cpu), 3).is_err()) };
    // kvm_arch_init_vcpu: SET_CPUID2 with QEMU's table (hypervisor bit, APIC id 0).
    let mut table: Vec<kvm_cpuid_entry2> = sup.to_vec();
    for e in table.iter_mut().filter(|e| e.function == 1) {
        e.ecx |= 1 << 31;
    }
    let mut bytes = (table.len() as u32).to_le_bytes().to_vec();
    bytes.extend([0u8; 4]);
    for e in &table {
        bytes.extend(e.as_bytes());
    }
    let c = v.buf(bytes.len());
    v.host.user_write(c, &bytes);
    assert_eq!(v.ioctl_fd(cpu, KVM_SET_CPUID2, c), 0);
    // kvm_arch_init_vcpu: machine checks when the model has MCE and MCA and family >= 6 (QEMU
    // adds both bits to every KVM CPUID). QEMU 7.2 also wants KVM_CAP_MCE > 0 here, QEMU 10
    // already required it in kvm_init.
    let l1 = *table
        .iter()
        .find(|e| e.function == 1 && e.index == 0)
        .unwrap();
    const MCE_MCA: u32 = (1 << 7) | (1 << 14);
    assert!((l1.eax >> 8) & 0xf >= 6 && l1.edx & MCE_MCA == MCE_MCA);
    // kvm_get_mce_cap_supported: banks from KVM_CHECK_EXTENSION on /dev/kvm, then the bits.
    let banks = cap(v, v.kvm, KVM_CAP_MCE);
    assert!(banks >= QEMU_MCE_BANKS as i64, "Unsupported MCE bank count");
    let sa = v.put(&0u64);
    assert_eq!(v.ioctl(v.kvm, KVM_X86_GET_MCE_CAP_SUPPORTED, sa), 0);
    let supported: u64 = v.get(sa);
    // MCE_CAP_DEF | MCE_BANKS_DEF: QEMU warns about unsupported bits (fails only for LMCE) and
    // masks them off.
    let want = msrs::MCG_CTL_P | msrs::MCG_SER_P | QEMU_MCE_BANKS;
    assert_eq!(want & !(supported | 0xff), 0, "Unsupported MCG_CAP bits");
    let mcg_cap = want & (supported | 0xff);
    let ca = v.put(&mcg_cap);
    assert_eq!(v.ioctl_fd(cpu, KVM_X86_SETUP_MCE, ca), 0);
    assert_eq!(cap(v, v.h(vm), KVM_CAP_GET_TSC_KHZ), 1);
    assert!(v.ioctl_fd(cpu, KVM_GET_TSC_KHZ, 0) > 0);
    assert_eq!(cap(v, v.h(vm), KVM_CAP_NESTED_STATE), 0);
    // kvm_init_msrs: nothing to set → KVM_SET_MSRS returns 0 == nmsrs.
    let empty = v.put(&0u64);
    assert_eq!(v.ioctl_fd(cpu, KVM_SET_MSRS, empty), 0);
    before_reset(cpu);
    // Reset: kvm_arch_put_registers(KVM_PUT_RESET_STATE).
    let mut regs: kvm_regs = zeroed();
    regs.rip = 0xfff0;
    regs.rflags = 2;
    regs.rdx = 0x663;
    v.set_regs(cpu, &regs);
    let mut xs: Box<kvm_xsave> = Box::new(zeroed());
    xs.as_mut_bytes()[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
    xs.as_mut_bytes()[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    xs.as_mut_bytes()[512..520].copy_from_slice(&3u64.to_le_bytes());
    let xa = v.put(&*xs);
    assert_eq!(v.ioctl_fd(cpu, KVM_SET_XSAVE, xa), 0);
    let mut xcrs: kvm_xcrs = zeroed();
    xcrs.nr_xcrs = 1;
    xcrs.xcrs[0].value = 1;
    let xc = v.put(&xcrs);
    assert_eq!(v.ioctl_fd(cpu, KVM_SET_XCRS, xc), 0);
    let sa = v.buf(size_of::<kvm_sregs>());
    assert_eq!(v.ioctl_fd(cpu, KVM_GET_SREGS, sa), 0);
    let mut sregs: kvm_sregs = v.get(sa);
    sregs.apic_base = apic_base;
    let sa = v.put(&sregs);
    assert_eq!(v.ioctl_fd(cpu, KVM_SET_SREGS, sa), 0);
    // kvm_put_msrs at reset level, every entry must be taken (QEMU asserts ret == nmsrs).
    let mut msrs: Vec<(u32, u64)> = vec![
        (0x174, 0),
        (0x175, 0),
        (0x176, 0),
        (0x277, 0x0007_0406_0007_0406),
        (0xc000_0081, 0),
        (0xc000_0103, 0),
        (0x1a0, 1),
        (0xc000_0083, 0),
        (0xc000_0102, 0),
        (0xc000_0084, 0),
        (0xc000_0082, 0),
        (0x10, 0),
        (0x12, 0),
        (0x11, 0),
        (0x2ff, 0),
    ];
    msrs.extend([0x250u32, 0x258, 0x259].iter().map(|&i| (i, 0)));
    msrs.extend((0x268u32..=0x26f).map(|i| (i, 0)));
    msrs.extend((0x200u32..=0x20f).map(|i| (i, 0)));
    // env->mcg_cap != 0: MCG_STATUS, MCG_CTL and every bank (CTL all ones from mce_init).
    msrs.extend([(0x17a, 0), (0x17b, !0)]);
    msrs.extend(
        (0..4 * QEMU_MCE_BANKS as u32).map(|i| (0x400 + i, if i % 4 == 0 { !0 } else { 0 })),
    );
    let mut mb = (msrs.len() as u32).to_le_bytes().to_vec();
    mb.extend([0u8; 4]);
    for (i, d) in &msrs {
        mb.extend(i.to_le_bytes());
        mb.extend([0u8; 4]);
        mb.extend(d.to_le_bytes());
    }
    let ma = v.buf(mb.len());
    v.host.user_write(ma, &mb);
    assert_eq!(v.ioctl_fd(cpu, KVM_SET_MSRS, ma), msrs.len() as i64);
    // ... and read back by kvm_get_msrs (same count, the values set).
    assert_eq!(v.ioctl_fd(cpu, KVM_GET_MSRS, ma), msrs.len() as i64);
    let back = v.host.user_read(ma + 8, 16 * msrs.len());
    for ((i, d), e) in msrs.iter().zip(back.chunks(16)) {
        if Mce::handles(*i) {
            assert_eq!(
                u64::from_le_bytes(e[8..].try_into().unwrap()),
                *d,
                "MSR {i:#x}"
            );
        }
    }
    let mut ev: kvm_vcpu_events = zeroed();
    ev.flags = KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SHADOW;
    let ea = v.put(&ev);
    assert_eq!(v.ioctl_fd(cpu, KVM_SET_VCPU_EVENTS, ea), 0);
    let mp = v.put(&kvm_mp_state { mp_state });
    assert_eq!(v.ioctl_fd(cpu, KVM_SET_MP_STATE, mp), 0);
    let mut dr: kvm_debugregs = zeroed();
    dr.dr6 = 0xffff_0ff0;
    dr.dr7 = 0x400;
    let da = v.put(&dr);
    assert_eq!(v.ioctl_fd(cpu, KVM_SET_DEBUGREGS, da), 0);
    cpu
}

#[test]
fn qemu_7_2_startup_to_first_run() {
    let v = Vmm::new();
    let vm = kvm_init(&v, false);
    // Memory listener: RAM below 640K, ROM (read-only), RAM above 1M, BIOS (read-only).
    v.add_slot(vm, 0, 0, 0xa0000, 0);
    v.add_slot(vm, 1, 0xc0000, 0x20000, KVM_MEM_READONLY);
    v.add_slot(vm, 2, 0x10_0000, 0x80_0000, 0);
    v.add_slot(vm, 3, 0xfffc_0000, 0x4_0000, KVM_MEM_READONLY);
    // VGA registers its window as coalesced MMIO.
    let z = v.put(&kvm_coalesced_mmio_zone {
        addr: 0xa0000,
        size: 0x20000,
        pad: 0,
    });
    assert_eq!(v.ioctl_fd(vm, KVM_REGISTER_COALESCED_MMIO, z), 0);
    // CPU realize: supported CPUID (for -cpu qemu64 filtering).
    let sup = supported_cpuid(&v);
    assert!(sup.iter().any(|e| e.function == 1));
    assert!(
        sup.iter()
            .any(|e| e.function == 0x8000_0001 && e.edx & (1 << 29) != 0),
        "LM"
    );
    let cpu = init_vcpu(&v, vm, 0, &sup, 0xfee0_0900, KVM_MP_STATE_RUNNABLE, |_| {});
    // First KVM_RUN (kvm_arch_pre_run: cr8 = TPR 0, no window request); SeaBIOS starts with
    // an OUT to the fw_cfg selector.
    v.script(
        0,
        &[(
            Exit::Io {
                port: 0x510,
                size: 2,
                out: true,
                data: 0x0000,
            },
            3,
        )],
    );
    let run = v.run_page(cpu);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    // SAFETY: the run page stays mapped while the vCPU lives.
    let r = unsafe { &*run };
    assert_eq!(r.exit_reason, KVM_EXIT_IO);
    assert_eq!(r.u.io().port, 0x510);
    assert_eq!(r.u.io().direction, KVM_EXIT_IO_OUT);
    assert_eq!(r.u.io().data_offset, 4096);
    // kvm_arch_post_run: QEMU loads the APIC base and TPR from here.
    assert_eq!(r.apic_base, 0xfee0_0900);
    assert_eq!(r.cr8, 0);
    assert_eq!(r.if_flag, 0);
    v.close(cpu);
    v.close(vm);
    v.assert_clean();
}

/// `kvm_apic_put` (hw/i386/kvm/apic.c) at reset: `kvm_put_apicbase` (KVM_SET_MSRS of one
/// MSR, QEMU asserts 1) then KVM_SET_LAPIC with QEMU's reset APIC state.
fn kvm_apic_put(v: &Vmm, cpu: i64, id: u32, base: u64, bsp: bool) {
    let mut one = [0u8; 24];
    one[..4].copy_from_slice(&1u32.to_le_bytes());
    one[8..12].copy_from_slice(&0x1bu32.to_le_bytes());
    one[16..24].copy_from_slice(&base.to_le_bytes());
    let m = v.put(&one);
    assert_eq!(v.ioctl_fd(cpu, KVM_SET_MSRS, m), 1);
    // apic_reset_common → kvm_apic_vapic_base_update: no TPR-patching page (QEMU aborts on error).
    let va = v.put(&kvm_vapic_addr { vapic_addr: 0 });
    assert_eq!(v.ioctl_fd(cpu, KVM_SET_VAPIC_ADDR, va), 0);
    let mut page = [0u8; 1024];
    let mut set = |r: usize, val: u32| page[r * 16..r * 16 + 4].copy_from_slice(&val.to_le_bytes());
    set(0x2, id << 24);
    set(0xe, 0xffff_ffff);
    set(0xf, 0xff);
    for i in 0..6 {
        set(0x32 + i, 1 << 16);
    }
    if bsp {
        set(0x35, 0x700);
    }
    let a = v.put(&page);
    assert_eq!(v.ioctl_fd(cpu, KVM_SET_LAPIC, a), 0);
}

fn routes(v: &Vmm, vm: i64, r: &[(u32, u32, u32)]) -> i64 {
    let mut b = (r.len() as u32).to_le_bytes().to_vec();
    b.extend([0u8; 4]);
    for &(gsi, addr, data) in r {
        let mut e: kvm_irq_routing_entry = zeroed();
        e.gsi = gsi;
        e.r#type = KVM_IRQ_ROUTING_MSI;
        e.u.msi_mut().address_lo = addr;
        e.u.msi_mut().data = data;
        b.extend(e.as_bytes());
    }
    let a = v.buf(b.len());
    v.host.user_write(a, &b);
    v.ioctl_fd(vm, KVM_SET_GSI_ROUTING, a)
}

#[test]
fn qemu_10_split_irqchip_startup_to_first_run() {
    split_irqchip_startup(true);
}

#[test]
fn qemu_7_2_split_irqchip_startup_to_first_run() {
    // QEMU 7.2 asks for none of QEMU10_MISSING: with -machine kernel-irqchip=split it gets the
    // in-kernel local APICs from okvm as it is.
    split_irqchip_startup(false);
}

/// QEMU's start-up with `-machine kernel-irqchip=split -smp 2` through both vCPUs' first
/// `KVM_RUN`, then the interrupt paths QEMU uses in split mode (same ioctls in 7.2 and 10).
fn split_irqchip_startup(qemu10: bool) {
    let v = Vmm::new();
    let vm = kvm_init(&v, qemu10);
    let vmh = v.h(vm);
    // kvm_irqchip_create: KVM_CAP_IRQCHIP gates every in-kernel irqchip; then (QEMU >= 8.2)
    // KVM_CAP_IRQFD, offered; x86 kvm_arch_irqchip_create enables split mode
    // with 24 IOAPIC pins.
    assert_eq!(cap(&v, vmh, KVM_CAP_IRQCHIP), 1);
    assert_eq!(cap(&v, vmh, KVM_CAP_SPLIT_IRQCHIP), 1);
    let mut ec: kvm_enable_cap = zeroed();
    ec.cap = KVM_CAP_SPLIT_IRQCHIP;
    ec.args[0] = 24;
    let a = v.put(&ec);
    assert_eq!(v.ioctl_fd(vm, KVM_ENABLE_CAP, a), 0);
    // kvm_init_irq_routing: gsi_count = KVM_CAP_IRQ_ROUTING - 1; kvm_arch_init_irq_routing
    // reserves 24 MSI routes (address/data 0) for the IOAPIC and commits them (assert ret 0).
    let gsi_count = cap(&v, vmh, KVM_CAP_IRQ_ROUTING) - 1;
    assert!(gsi_count >= 24);
    let reserved: Vec<(u32, u32, u32)> = (0..24).map(|g| (g, 0, 0)).collect();
    assert_eq!(routes(&v, vm, &reserved), 0);
    // kvm_init: direct MSI is used when offered (kvm_direct_msi_allowed); no x2APIC API
    // (only needed beyond 255 vCPUs).
    assert_eq!(cap(&v, vmh, KVM_CAP_SIGNAL_MSI), 1);
    assert_eq!(cap(&v, vmh, KVM_CAP_X2APIC_API), 0);
    // QEMU then adds CPUID.1:ECX.TSC_DEADLINE to the guest's CPUID itself.
    assert_eq!(cap(&v, vmh, KVM_CAP_TSC_DEADLINE_TIMER), 1);
    assert_eq!(
        cap(&v, vmh, KVM_CAP_IRQ_INJECT_STATUS),
        1,
        "QEMU then uses KVM_IRQ_LINE_STATUS"
    );
    v.add_slot(vm, 0, 0, 0xa0000, 0);
    v.add_slot(vm, 2, 0x10_0000, 0x80_0000, 0);
    v.add_slot(vm, 3, 0xfffc_0000, 0x4_0000, KVM_MEM_READONLY);
    let sup = supported_cpuid(&v);
    // -smp 2. kvm_arch_reset_vcpu: with an in-kernel irqchip the AP starts UNINITIALIZED;
    // kvm_apic_reset puts the APIC (apic base, then the register page).
    let bsp = init_vcpu(&v, vm, 0, &sup, 0xfee0_0900, KVM_MP_STATE_RUNNABLE, |c| {
        kvm_apic_put(&v, c, 0, 0xfee0_0900, true)
    });
    let ap = init_vcpu(
        &v,
        vm,
        1,
        &sup,
        0xfee0_0800,
        KVM_MP_STATE_UNINITIALIZED,
        |c| kvm_apic_put(&v, c, 1, 0xfee0_0800, false),
    );
    // The AP's vCPU thread enters KVM_RUN and sleeps in the kernel until INIT/SIPI.
    v.script(
        1,
        &[(
            Exit::Io {
                port: 0x80,
                size: 1,
                out: true,
                data: 0x55,
            },
            2,
        )],
    );
    let (sys, aph, aprun) = (v.sys, v.h(ap) as usize, v.run_page(ap) as usize);
    let apt = std::thread::spawn(move || {
        // SAFETY: the vCPU is closed only after this thread is joined.
        let r = unsafe { sys.ioctl(aph as *mut std::ffi::c_void, KVM_RUN, 0) };
        // SAFETY: as above.
        (r, unsafe { (*(aprun as *const kvm_run)).exit_reason })
    });
    // First KVM_RUN of the BSP (kvm_arch_pre_run: the userspace PIC has nothing; run->cr8 is
    // QEMU's TPR copy, ignored with an in-kernel APIC). SeaBIOS: fw_cfg OUT, then it enables
    // the APIC and starts the AP with INIT + SIPI(0x9f) through the xAPIC page.
    let mmio_w = |off: u64, val: u32| {
        let mut data = [0u8; 8];
        data[..4].copy_from_slice(&val.to_le_bytes());
        (
            Exit::Mmio {
                gpa: 0xfee0_0000 + off,
                len: 4,
                write: true,
                data,
            },
            6,
        )
    };
    let fw_cfg = (
        Exit::Io {
            port: 0x510,
            size: 2,
            out: true,
            data: 0,
        },
        3,
    );
    v.script(
        0,
        &[
            fw_cfg,
            mmio_w(0xf0, 0x1ff),
            mmio_w(0x310, 1 << 24),
            mmio_w(0x300, 0x4500),
            mmio_w(0x300, 0x469f),
            fw_cfg,
        ],
    );
    let run = v.run_page(bsp);
    // SAFETY: the run page lives as long as the vCPU; QEMU writes cr8 before KVM_RUN.
    unsafe { (*run).cr8 = 0 };
    assert_eq!(v.ioctl_fd(bsp, KVM_RUN, 0), 0);
    // SAFETY: as above.
    let r = unsafe { &*run };
    assert_eq!(r.exit_reason, KVM_EXIT_IO);
    assert_eq!(r.u.io().port, 0x510);
    // kvm_arch_post_run: APIC base and TPR for QEMU's kvm-apic copy.
    assert_eq!(r.apic_base, 0xfee0_0900);
    assert_eq!(r.cr8, 0);
    assert_eq!(v.ioctl_fd(bsp, KVM_RUN, 0), 0);
    assert_eq!(r.exit_reason, KVM_EXIT_IO, "INIT/SIPI stayed in the kernel");
    let (ar, reason) = apt.join().unwrap();
    assert_eq!(
        (ar, reason),
        (0, KVM_EXIT_IO),
        "the AP woke at the SIPI vector and ran"
    );
    let sa = v.buf(size_of::<kvm_sregs>());
    assert_eq!(v.ioctl_fd(ap, KVM_GET_SREGS, sa), 0);
    let s: kvm_sregs = v.get(sa);
    assert_eq!((s.cs.selector, s.cs.base), (0x9f00, 0x9_f000));
    assert_eq!(
        v.regs(ap).rip,
        0,
        "started at 0 (the OUT completes at the next KVM_RUN)"
    );
    // The userspace IOAPIC (ioapic_update_kvm_routes) routes pin 9 level-triggered to APIC 0,
    // vector 0x39, and asserts it with KVM_IRQ_LINE.
    let mut table = reserved.clone();
    table[9] = (9, 0xfee0_0000, 0x8039);
    assert_eq!(routes(&v, vm, &table), 0);
    let l = v.put(&kvm_irq_level { irq: 9, level: 1 });
    assert_eq!(v.ioctl_fd(vm, KVM_IRQ_LINE, l), 0);
    // The guest (IF=1) takes 0x39 and EOIs it: KVM_EXIT_IOAPIC_EOI for ioapic_eoi_broadcast.
    let mut regs = v.regs(bsp);
    regs.rflags |= 0x200;
    v.set_regs(bsp, &regs);
    v.script(0, &[mmio_w(0xb0, 0)]);
    assert_eq!(v.ioctl_fd(bsp, KVM_RUN, 0), 0);
    assert_eq!(r.exit_reason, KVM_EXIT_IOAPIC_EOI);
    assert_eq!(r.u.eoi().vector, 0x39);
    // kvm_arch_get_registers with an in-kernel irqchip: KVM_GET_MP_STATE, KVM_GET_LAPIC;
    // kvm-apic's MSI window forwards device MSIs with KVM_SIGNAL_MSI.
    let mp = v.buf(4);
    assert_eq!(v.ioctl_fd(ap, KVM_GET_MP_STATE, mp), 0);
    assert_eq!(v.get::<kvm_mp_state>(mp).mp_state, KVM_MP_STATE_RUNNABLE);
    // A device MSI to APIC 1, whose guest has not software-enabled it yet: matched, not
    // accepted (0); to APIC 0: accepted.
    let m1 = v.put(&kvm_msi {
        address_lo: 0xfee0_1000,
        data: 0x0049,
        ..zeroed()
    });
    assert_eq!(v.ioctl_fd(vm, KVM_SIGNAL_MSI, m1), 0);
    let m0 = v.put(&kvm_msi {
        address_lo: 0xfee0_0000,
        data: 0x0049,
        ..zeroed()
    });
    assert_eq!(v.ioctl_fd(vm, KVM_SIGNAL_MSI, m0), 1);
    let la = v.buf(1024);
    assert_eq!(v.ioctl_fd(bsp, KVM_GET_LAPIC, la), 0);
    let page = v.host.user_read(la, 1024);
    assert_eq!(
        page[0x200 + 0x10 * 2 + 1],
        1 << 1,
        "MSI vector 0x49 requested at APIC 0"
    );
    // virtio-pci with ioeventfd/irqfd (7.2 and 10 alike now that the capabilities exist): the
    // queue-notify register becomes an MMIO ioeventfd of length 0 (kvm_mem_ioeventfd_add, any
    // length), each MSI-X vector an MSI route plus an irqfd (kvm_irqchip_add_msi_route,
    // kvm_irqchip_commit_routes, kvm_irqchip_assign_irqfd).
    let notify = v.host.eventfd_create();
    let a = v.put(&kvm_ioeventfd {
        addr: 0xfe00_3000,
        len: 0,
        fd: notify,
        ..zeroed()
    });
    assert_eq!(v.ioctl_fd(vm, KVM_IOEVENTFD, a), 0);
    let vector = v.host.eventfd_create();
    table.push((24, 0xfee0_0000, 0x0061));
    assert_eq!(routes(&v, vm, &table), 0);
    let a = v.put(&kvm_irqfd {
        fd: vector as u32,
        gsi: 24,
        ..zeroed()
    });
    assert_eq!(v.ioctl_fd(vm, KVM_IRQFD, a), 0);
    // The guest kicks the queue (a 2-byte MMIO write): no exit, the notifier is signaled; the
    // next exit is the fw_cfg OUT after it.
    let kick = (
        Exit::Mmio {
            gpa: 0xfe00_3000,
            len: 2,
            write: true,
            data: [0; 8],
        },
        6,
    );
    v.script(0, &[kick, fw_cfg]);
    assert_eq!(v.ioctl_fd(bsp, KVM_RUN, 0), 0);
    assert_eq!(r.exit_reason, KVM_EXIT_IO);
    assert_eq!(v.host.eventfd_read(notify), 1);
    // QEMU's iothread completes the request and signals the vector's irqfd.
    v.host.eventfd_write(vector);
    assert_eq!(v.host.eventfd_pump(), 1);
    assert_eq!(v.ioctl_fd(bsp, KVM_GET_LAPIC, la), 0);
    let page = v.host.user_read(la, 1024);
    assert_ne!(page[0x230] & 2, 0, "irqfd vector 0x61 requested at APIC 0");
    // Teardown with the ioeventfd and the irqfd still assigned (QEMU exits without
    // deassigning): every notifier reference and watch is released.
    v.close(bsp);
    v.close(ap);
    v.close(vm);
    v.assert_clean();
    v.host.eventfd_close(notify);
    v.host.eventfd_close(vector);
}

#[test]
fn supported_cpuid_is_filtered() {
    let v = Vmm::new();
    let t = supported_cpuid(&v);
    let leaf = |f: u32, i: u32| *t.iter().find(|e| e.function == f && e.index == i).unwrap();
    let l0 = leaf(0, 0);
    assert_eq!(
        (l0.ebx, l0.edx, l0.ecx),
        (0x6874_7541, 0x6974_6e65, 0x444d_4163),
        "vendor kept"
    );
    assert_eq!(l0.eax, 0xd, "max basic leaf capped to what is reported");
    let l1 = leaf(1, 0);
    assert_eq!(l1.ecx & (1 << 5), 0, "no VMX");
    assert_ne!(
        l1.ecx & (1 << 21),
        0,
        "x2APIC, emulated by the in-kernel LAPIC"
    );
    assert_eq!(l1.ecx & (1 << 27), 0, "OSXSAVE is the guest's");
    assert_eq!(
        l1.edx & ((1 << 7) | (1 << 14)),
        (1 << 7) | (1 << 14),
        "MCE/MCA (machine-check banks)"
    );
    assert_ne!(l1.ecx & (1 << 26), 0, "XSAVE");
    assert_eq!(l1.ebx >> 24, 0, "APIC id is set per vCPU by userspace");
    let e1 = leaf(0x8000_0001, 0);
    assert_eq!(e1.ecx & (1 << 2), 0, "no SVM");
    let d0 = leaf(0xd, 0);
    assert_eq!((d0.eax, d0.ebx, d0.ecx), (7, 832, 832), "x87|SSE|AVX only");
    assert_eq!(
        leaf(0xd, 0).flags,
        crate::cpuid::KVM_CPUID_FLAG_SIGNIFCANT_INDEX
    );
    assert!(
        t.iter()
            .all(|e| e.function < 0x4000_0000 || e.function >= 0x8000_0000),
        "no KVM PV leaves"
    );
}

#[test]
fn qemu_10_full_irqchip_startup_to_first_run() {
    full_irqchip_startup(true);
}

#[test]
fn qemu_7_2_full_irqchip_startup_to_first_run() {
    full_irqchip_startup(false);
}

/// One IRQCHIP route of `KVM_SET_GSI_ROUTING`.
fn chip_route(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e: kvm_irq_routing_entry = zeroed();
    e.gsi = gsi;
    e.r#type = KVM_IRQ_ROUTING_IRQCHIP;
    e.u.irqchip_mut().irqchip = chip;
    e.u.irqchip_mut().pin = pin;
    e
}

fn pio_out(port: u16, val: u8) -> (Exit, u64) {
    (
        Exit::Io {
            port,
            size: 1,
            out: true,
            data: u32::from(val),
        },
        2,
    )
}

fn pio_in(port: u16) -> (Exit, u64) {
    (
        Exit::Io {
            port,
            size: 1,
            out: false,
            data: 0,
        },
        2,
    )
}

fn get_pit2(v: &Vmm, vm: i64) -> kvm_pit_state2 {
    let a = v.put(&zeroed::<kvm_pit_state2>());
    assert_eq!(v.ioctl_fd(vm, KVM_GET_PIT2, a), 0, "QEMU aborts");
    v.get(a)
}

fn set_pit2(v: &Vmm, vm: i64, s: &kvm_pit_state2) {
    let a = v.put(s);
    assert_eq!(v.ioctl_fd(vm, KVM_SET_PIT2, a), 0, "QEMU aborts");
}

/// kvm-pit (hw/i386/kvm/i8254.c, default `lost_tick_policy=delay`) and SeaBIOS's first use
/// of the PIT, up to an `IN 0x61` that QEMU answers: `kvm_pit_realizefn` (KVM_CAP_PIT2, then
/// KVM_CREATE_PIT2 with flags 0: port 0x61 stays with QEMU's pcspk; no KVM_REINJECT_CONTROL
/// for `delay`), `kvm_pit_reset` (`pit_reset_common` + `kvm_pit_put`: KVM_SET_PIT2), then
/// SeaBIOS `timer_setup` raises gate 2 through port 0x61 (pcspk → `kvm_pit_set_gate`:
/// KVM_GET_PIT2, restart on the rising edge, KVM_SET_PIT2), loads channel 2 in mode 0 in the
/// kernel and polls OUT 2 through port 0x61 (pcspk → `kvm_pit_get_channel_info`:
/// KVM_GET_PIT2).
fn kvm_pit_startup(v: &Vmm, vm: i64, bsp: i64, r: &kvm_run) {
    use crate::host::Host as _;
    assert_eq!(cap(v, v.h(vm), KVM_CAP_PIT2), 1);
    let cfg = v.put(&zeroed::<kvm_pit_config>());
    assert_eq!(v.ioctl_fd(vm, KVM_CREATE_PIT2, cfg), 0);
    // pit_reset_common: every channel mode 3, count 0x10000, gate 2 low; HPET not in legacy
    // mode (flags 0). count_load_time: QEMU's virtual clock minus its offset to the host's.
    let mut s: kvm_pit_state2 = zeroed();
    for (i, c) in s.channels.iter_mut().enumerate() {
        (c.mode, c.gate, c.count) = (3, u8::from(i != 2), 0x10000);
        c.count_load_time = v.host.nanotime() as i64;
    }
    set_pit2(v, vm, &s);
    let g = get_pit2(v, vm);
    assert_eq!(
        g.channels.map(|c| (c.mode, c.gate, c.count)),
        [(3, 1, 0x10000), (3, 1, 0x10000), (3, 0, 0x10000)]
    );
    assert_eq!(g.flags, 0);
    // SeaBIOS: gate 2 up, speaker off, by port 0x61: QEMU's.
    v.script(0, &[pio_out(0x61, 0x01)]);
    assert_eq!(v.ioctl_fd(bsp, KVM_RUN, 0), 0);
    assert_eq!((r.exit_reason, r.u.io().port), (KVM_EXIT_IO, 0x61));
    let mut s = get_pit2(v, vm);
    assert_eq!(s.channels[2].gate, 0);
    s.channels[2].gate = 1;
    s.channels[2].count_load_time = v.host.nanotime() as i64;
    set_pit2(v, vm, &s);
    // Channel 2: mode 0, LSB+MSB, count 0x800 (the kernel's), then OUT 2 by port 0x61.
    v.script(
        0,
        &[
            pio_out(0x43, 0xb0),
            pio_out(0x42, 0x00),
            pio_out(0x42, 0x08),
            pio_in(0x61),
        ],
    );
    assert_eq!(v.ioctl_fd(bsp, KVM_RUN, 0), 0);
    assert_eq!(
        (r.exit_reason, r.u.io().port, r.u.io().direction),
        (KVM_EXIT_IO, 0x61, KVM_EXIT_IO_IN)
    );
    let c = get_pit2(v, vm).channels[2];
    assert_eq!((c.mode, c.rw_mode, c.count, c.gate), (0, 3, 0x800, 1));
    // QEMU answers with OUT 2 (bit 5) set: the count has run out.
    // SAFETY: page 1 of the vCPU mapping is the PIO page (data_offset 4096).
    unsafe { *(v.mmap(bsp, 1) as *mut u8) = 0x21 };
}

/// QEMU's default `-machine kernel-irqchip=on` start-up (`-smp 1`, pc machine) through the
/// first `KVM_RUN`: `kvm_irqchip_create` creates the full irqchip, `kvm_pc_setup_irq_routing`
/// commits the PC's IRQCHIP routes, kvm-i8259 and kvm-ioapic put their reset states
/// (hw/i386/kvm/i8259.c, ioapic.c), the vCPU is set up as in split mode; SeaBIOS then programs
/// the PIC in the kernel and takes the keyboard's IRQ1 as an ExtINT vector.
fn full_irqchip_startup(qemu10: bool) {
    let v = Vmm::new();
    let vm = kvm_init(&v, qemu10);
    let vmh = v.h(vm);
    // kvm_irqchip_create: KVM_CAP_IRQCHIP, then (QEMU >= 8.2) KVM_CAP_IRQFD (QEMU10_MISSING);
    // x86 kvm_arch_irqchip_create returns 0 when not split: KVM_CREATE_IRQCHIP, whose failure
    // is fatal ("Create kernel irqchip failed").
    assert_eq!(cap(&v, vmh, KVM_CAP_IRQCHIP), 1);
    assert_eq!(v.ioctl_fd(vm, KVM_CREATE_IRQCHIP, 0), 0);
    // kvm_init_irq_routing + x86 kvm_arch_init_irq_routing (GSI routing available).
    let gsi_count = cap(&v, vmh, KVM_CAP_IRQ_ROUTING) - 1;
    assert!(gsi_count >= 24);
    assert_eq!(
        cap(&v, vmh, KVM_CAP_IRQ_INJECT_STATUS),
        1,
        "KVM_IRQ_LINE_STATUS then"
    );
    // kvm_pc_setup_irq_routing(pci_enabled): kvm_irqchip_commit_routes asserts 0.
    let mut t = Vec::new();
    for i in (0..8).filter(|&i| i != 2) {
        t.push(chip_route(i, KVM_IRQCHIP_PIC_MASTER, i));
    }
    for i in 8..16 {
        t.push(chip_route(i, KVM_IRQCHIP_PIC_SLAVE, i - 8));
    }
    t.push(chip_route(0, KVM_IRQCHIP_IOAPIC, 2));
    for i in (1..24).filter(|&i| i != 2) {
        t.push(chip_route(i, KVM_IRQCHIP_IOAPIC, i));
    }
    let mut b = (t.len() as u32).to_le_bytes().to_vec();
    b.extend([0u8; 4]);
    for e in &t {
        b.extend(e.as_bytes());
    }
    let a = v.buf(b.len());
    v.host.user_write(a, &b);
    assert_eq!(v.ioctl_fd(vm, KVM_SET_GSI_ROUTING, a), 0);
    // kvm_pic_reset → pic_reset_common + kvm_pic_put: KVM_SET_IRQCHIP (QEMU aborts on error)
    // with the reset state and the ELCR masks of the i8259 properties.
    for (id, mask) in [
        (KVM_IRQCHIP_PIC_MASTER, 0xf8),
        (KVM_IRQCHIP_PIC_SLAVE, 0xde),
    ] {
        let mut c: kvm_irqchip = zeroed();
        c.chip_id = id;
        c.chip.pic_mut().elcr_mask = mask;
        let a = v.put(&c);
        assert_eq!(v.ioctl_fd(vm, KVM_SET_IRQCHIP, a), 0);
    }
    // kvm_ioapic_reset → ioapic_reset_common + kvm_ioapic_put: all pins masked, base from the
    // sysbus mapping.
    let mut c: kvm_irqchip = zeroed();
    c.chip_id = KVM_IRQCHIP_IOAPIC;
    c.chip.ioapic_mut().base_address = 0xfec0_0000;
    for e in c.chip.ioapic_mut().redirtbl.iter_mut() {
        e.raw = 1 << 16;
    }
    let a = v.put(&c);
    assert_eq!(v.ioctl_fd(vm, KVM_SET_IRQCHIP, a), 0);
    // kvm_ioapic_get (migration, `info pic`): the same state back.
    let g = v.put(&kvm_irqchip {
        chip_id: KVM_IRQCHIP_IOAPIC,
        ..zeroed()
    });
    assert_eq!(v.ioctl_fd(vm, KVM_GET_IRQCHIP, g), 0);
    assert_eq!(v.get::<kvm_irqchip>(g), c);
    v.add_slot(vm, 0, 0, 0xa0000, 0);
    v.add_slot(vm, 2, 0x10_0000, 0x80_0000, 0);
    v.add_slot(vm, 3, 0xfffc_0000, 0x4_0000, KVM_MEM_READONLY);
    let sup = supported_cpuid(&v);
    let bsp = init_vcpu(&v, vm, 0, &sup, 0xfee0_0900, KVM_MP_STATE_RUNNABLE, |c| {
        kvm_apic_put(&v, c, 0, 0xfee0_0900, true)
    });
    let outb = |port: u16, val: u8| {
        (
            Exit::Io {
                port,
                size: 1,
                out: true,
                data: u32::from(val),
            },
            2,
        )
    };
    let inb = |port: u16| {
        (
            Exit::Io {
                port,
                size: 1,
                out: false,
                data: 0,
            },
            2,
        )
    };
    let run = v.run_page(bsp);
    // SAFETY: the run page lives as long as the vCPU.
    unsafe { (*run).cr8 = 0 };
    // SAFETY: as above.
    let r = unsafe { &*run };
    kvm_pit_startup(&v, vm, bsp, r);
    // then pic_setup (vectors 0x08/0x70, everything masked but the cascade); it unmasks the
    // keyboard's IRQ1, reads the mask back, and talks to fw_cfg.
    let fw_cfg = (
        Exit::Io {
            port: 0x510,
            size: 2,
            out: true,
            data: 0,
        },
        3,
    );
    // SeaBIOS pit_setup (channel 0: mode 2, count 0x10000, the 18.2 Hz tick; in the kernel),
    v.script(
        0,
        &[
            outb(0x43, 0x34),
            outb(0x40, 0x00),
            outb(0x40, 0x00),
            outb(0x20, 0x11),
            outb(0x21, 0x08),
            outb(0x21, 0x04),
            outb(0x21, 0x01),
            outb(0xa0, 0x11),
            outb(0xa1, 0x70),
            outb(0xa1, 0x02),
            outb(0xa1, 0x01),
            outb(0x21, 0xfb),
            outb(0xa1, 0xff),
            outb(0x21, 0xf9),
            inb(0x21),
            fw_cfg,
        ],
    );
    assert_eq!(v.ioctl_fd(bsp, KVM_RUN, 0), 0);
    assert_eq!(r.exit_reason, KVM_EXIT_IO, "only fw_cfg reaches QEMU");
    assert_eq!(r.u.io().port, 0x510);
    assert_eq!(v.regs(bsp).rax & 0xff, 0xf9);
    assert_eq!(r.ready_for_interrupt_injection, 1);
    // Channel 0 was programmed in the kernel (QEMU's vm-stop kvm_pit_get reads it back).
    let c = get_pit2(&v, vm).channels[0];
    assert_eq!((c.mode, c.rw_mode, c.count, c.gate), (2, 3, 0x10000, 1));
    // A key press: kvm_pc_gsi_handler raises GSI 1 through kvm-i8259 and kvm-ioapic, each a
    // kvm_set_irq (KVM_IRQ_LINE_STATUS): PIC 1 + masked IOAPIC pin (-1), then the PIC's pin is
    // already high (1) and the IOAPIC's edge coalesces (0).
    let line = |gsi: u32, level: u32| {
        let a = v.put(&kvm_irq_level { irq: gsi, level });
        assert_eq!(v.ioctl_fd(vm, KVM_IRQ_LINE_STATUS, a), 0);
        v.get::<kvm_irq_level>(a).status()
    };
    assert_eq!(line(1, 1), 1);
    assert_eq!(line(1, 1), 1);
    // The guest runs with IF=1: vector 0x09 arrives through LINT0 (ExtINT).
    let mut regs = v.regs(bsp);
    regs.rflags |= 0x200;
    v.set_regs(bsp, &regs);
    v.script(0, &[outb(0x20, 0x20), fw_cfg]);
    assert_eq!(v.ioctl_fd(bsp, KVM_RUN, 0), 0);
    assert_eq!(r.exit_reason, KVM_EXIT_IO);
    let h = v.h(bsp)
        as *const crate::vcpu::Vcpu<
            crate::fake::host::FakeHost,
            crate::soft::SoftBackend<crate::fake::host::FakeHost>,
        >;
    // SAFETY: live vCPU handle, idle.
    let st = unsafe { &*h }.st.lock();
    assert_eq!(&st.b.delivered[..st.b.ndelivered as usize], &[0x09]);
    drop(st);
    v.close(bsp);
    v.close(vm);
    v.assert_clean();
}

/// kvm-pit with `-global kvm-pit.lost_tick_policy=discard` (`kvm_pit_realizefn`): after
/// KVM_CREATE_PIT2, KVM_CAP_REINJECT_CONTROL, then KVM_REINJECT_CONTROL with `pit_reinject`
/// 0, whose failure stops QEMU ("Can't disable in-kernel PIT reinjection"). Without
/// KVM_CAP_PIT2 QEMU would fall back to KVM_CREATE_PIT, which works too.
#[test]
fn qemu_kvm_pit_discard_policy() {
    let v = Vmm::new();
    let vm = v.create_vm();
    let vmh = v.h(vm);
    assert_eq!(v.ioctl_fd(vm, KVM_CREATE_IRQCHIP, 0), 0);
    assert_eq!(cap(&v, vmh, KVM_CAP_PIT), 1);
    assert_eq!(cap(&v, vmh, KVM_CAP_PIT2), 1);
    let cfg = v.put(&zeroed::<kvm_pit_config>());
    assert_eq!(v.ioctl_fd(vm, KVM_CREATE_PIT2, cfg), 0);
    assert_eq!(cap(&v, vmh, KVM_CAP_REINJECT_CONTROL), 1);
    let rc = v.put(&zeroed::<kvm_reinject_control>());
    assert_eq!(v.ioctl_fd(vm, KVM_REINJECT_CONTROL, rc), 0);
    // The device reset that follows: KVM_SET_PIT2 as in the default policy.
    let mut s: kvm_pit_state2 = zeroed();
    for (i, c) in s.channels.iter_mut().enumerate() {
        (c.mode, c.gate, c.count) = (3, u8::from(i != 2), 0x10000);
    }
    set_pit2(&v, vm, &s);
    assert_eq!(get_pit2(&v, vm).channels[0].mode, 3);
    v.close(vm);
    v.assert_clean();
}
