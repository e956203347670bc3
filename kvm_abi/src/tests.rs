//! Unit tests: comparison with `kvm-bindings`, ioctl encoding, union views, manifest sanity.

use crate::manifest::*;
use crate::*;
use zerocopy::{FromZeros, IntoBytes};

/// Every constant list's `kvm_bindings` comparison (kept in step with `CONST_PARTS` by the
/// count check in `matches_kvm_bindings`).
fn const_kb() -> Vec<(&'static str, u64, Option<u64>)> {
    let lists = [
        ioctl::IOC_CONSTS::kb(),
        consts::GENERAL_CONSTS::kb(),
        consts::CAP_CONSTS::kb(),
        consts::EXIT_CONSTS::kb(),
        consts::INTERNAL_ERROR_CONSTS::kb(),
        consts::MEM_CONSTS::kb(),
        consts::MP_STATE_CONSTS::kb(),
        consts::SYSTEM_EVENT_CONSTS::kb(),
        consts::IRQ_CONSTS::kb(),
        consts::IOEVENTFD_CONSTS::kb(),
        consts::VCPUEVENT_CONSTS::kb(),
        consts::QUIRK_CONSTS::kb(),
        consts::MSR_FILTER_CONSTS::kb(),
        consts::NESTED_CONSTS::kb(),
        consts::GUESTDBG_CONSTS::kb(),
        consts::CPUID_CONSTS::kb(),
        consts::CLOCK_CONSTS::kb(),
        consts::DIRTY_CONSTS::kb(),
        consts::XEN_CONSTS::kb(),
        consts::DEVICE_CONSTS::kb(),
        consts::STATS_CONSTS::kb(),
        consts::REG_CONSTS::kb(),
        consts::GUEST_MEMFD_CONSTS::kb(),
        consts::VECTOR_CONSTS::kb(),
        consts::SEV_CONSTS::kb(),
        consts::INTERNAL_CONSTS::kb(),
    ];
    lists.into_iter().flatten().collect()
}

#[test]
fn matches_kvm_bindings() {
    let mut layout = x86::X86_STRUCTS::kb();
    layout.extend(kvm::KVM_STRUCTS::kb());
    let consts = const_kb();
    assert_eq!(
        consts.len(),
        CONSTS.len() + INTERNAL_CONSTS.len(),
        "const_kb() must cover every constant list"
    );

    let mut diffs = Vec::new();
    let (mut sizes, mut aligns, mut offsets) = (0, 0, 0);
    for (item, ours, theirs) in &layout {
        if item.starts_with("sizeof") {
            sizes += 1;
        } else if item.starts_with("alignof") {
            aligns += 1;
        } else {
            offsets += 1;
        }
        if ours != theirs {
            diffs.push(format!("{item}: kvm_abi {ours} kvm-bindings {theirs}"));
        }
    }
    let mut compared = 0;
    let mut absent = Vec::new();
    for (name, ours, theirs) in &consts {
        match theirs {
            Some(v) => {
                compared += 1;
                if v != ours {
                    diffs.push(format!("{name}: kvm_abi {ours:#x} kvm-bindings {v:#x}"));
                }
            }
            None => absent.push(*name),
        }
    }
    println!(
        "kvm-bindings 0.14 comparison: {sizes} sizes, {aligns} alignments, {offsets} field offsets, \
         {compared} constants ({} items); kvm-bindings has no ioctl numbers",
        sizes + aligns + offsets + compared
    );
    println!(
        "{} constants not in kvm-bindings (the C differential test covers the uapi ones): {}",
        absent.len(),
        absent.join(" ")
    );
    assert!(
        sizes >= 60 && offsets >= 300 && compared >= 500,
        "too little compared"
    );
    assert!(
        diffs.is_empty(),
        "differences with kvm-bindings:\n{}",
        diffs.join("\n")
    );
}

#[test]
fn ioctl_encoding_matches_linux_numbers() {
    // Values as Linux prints them (strace, kvm selftests).
    assert_eq!(KVM_GET_API_VERSION, 0xae00);
    assert_eq!(KVM_RUN, 0xae80);
    assert_eq!(KVM_GET_REGS, 0x8090_ae81);
    assert_eq!(KVM_SET_REGS, 0x4090_ae82);
    assert_eq!(KVM_SET_USER_MEMORY_REGION, 0x4020_ae46);
    assert_eq!(KVM_GET_SUPPORTED_CPUID, 0xc008_ae05);
    assert_eq!(KVM_GET_XSAVE, 0x9000_aea4);
    assert_eq!(ioc_dir(KVM_GET_MSRS), _IOC_READ | _IOC_WRITE);
    assert_eq!(ioc_size(KVM_GET_SREGS), core::mem::size_of::<kvm_sregs>());
    assert_eq!(ioc_nr(KVM_GET_SREGS), 0x83);
    assert_eq!(ioc_type(KVM_GET_SREGS), KVMIO);
    assert_eq!(ioc_dir(KVM_CREATE_VM), _IOC_NONE);
}

#[test]
fn ioctl_numbers_are_unique_and_consistent() {
    let mut seen = std::collections::HashMap::new();
    for i in IOCTLS.iter() {
        assert_eq!(ioc_type(i.value), KVMIO, "{}", i.name);
        assert!(
            i.fds != 0 && i.fds & !(FD_SYSTEM | FD_VM | FD_VCPU | FD_DEVICE) == 0,
            "{}",
            i.name
        );
        if let Some(other) = seen.insert(i.value, i.name) {
            panic!("{} and {} share {:#x}", i.name, other, i.value);
        }
    }
    let mut names: Vec<_> = IOCTLS.iter().map(|i| i.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), IOCTLS.len());
}

#[test]
fn manifest_names_are_unique() {
    let mut s: Vec<_> = STRUCTS.iter().map(|s| s.name).collect();
    s.sort_unstable();
    s.dedup();
    assert_eq!(s.len(), STRUCTS.len());
    let mut c: Vec<_> = CONSTS
        .iter()
        .chain(INTERNAL_CONSTS)
        .map(|c| c.name)
        .collect();
    c.sort_unstable();
    c.dedup();
    assert_eq!(c.len(), CONSTS.len() + INTERNAL_CONSTS.len());
    for st in STRUCTS.iter() {
        for f in st.fields {
            assert!(
                f.offset + f.size <= st.size,
                "{}.{} out of bounds",
                st.name,
                f.path
            );
        }
    }
}

#[test]
fn run_union_views_hit_linux_offsets() {
    let mut run = kvm_run::new_zeroed();
    run.exit_reason = KVM_EXIT_IO;
    let io = run.u.io_mut();
    io.direction = KVM_EXIT_IO_OUT;
    io.size = 2;
    io.port = 0x3f8;
    io.count = 1;
    io.data_offset = 4096;
    let b = run.as_bytes();
    assert_eq!(b[8], KVM_EXIT_IO as u8);
    assert_eq!(b[32], KVM_EXIT_IO_OUT);
    assert_eq!(&b[34..36], &0x3f8u16.to_le_bytes());
    assert_eq!(&b[40..48], &4096u64.to_le_bytes());
    assert_eq!(run.u.io().port, 0x3f8);

    run.u.mmio_mut().len = 4;
    assert_eq!(&run.as_bytes()[48..52], &4u32.to_le_bytes());
    run.s.regs_mut().regs.rip = 0xfff0;
    assert_eq!(
        &run.as_bytes()[304 + 128..304 + 136],
        &0xfff0u64.to_le_bytes()
    );
    run.u.system_event_mut().data[0] = 7;
    assert_eq!(run.u.system_event().flags(), 7);
}

#[test]
fn irqchip_and_nested_views() {
    let mut chip = kvm_irqchip::new_zeroed();
    chip.chip_id = KVM_IRQCHIP_IOAPIC;
    chip.chip.ioapic_mut().redirtbl[1].fields_mut().dest_id = 0xab;
    assert_eq!(*chip.chip.ioapic().redirtbl[1].bits() >> 56, 0xab);
    assert_eq!(chip.as_bytes()[8 + 24 + 8 + 7], 0xab);

    let mut ns = kvm_nested_state::new_zeroed();
    ns.hdr.vmx_mut().vmxon_pa = 0x1000;
    assert_eq!(&ns.as_bytes()[8..16], &0x1000u64.to_le_bytes());
    assert_eq!(ns.hdr.svm().vmcb_pa, 0x1000);
}

#[test]
fn flex_msrs_round_trip_and_rejects_bad_sizes() {
    use crate::flex::*;
    let mut buf = vec![0u8; 8 + 3 * 16];
    write_header(
        &mut buf,
        &kvm_msrs {
            nmsrs: 3,
            pad: 0,
            entries: [],
        },
    )
    .unwrap();
    for i in 0..3 {
        let e = kvm_msr_entry {
            index: 0x10 + i as u32,
            reserved: 0,
            data: i as u64 * 7,
        };
        write_entry::<kvm_msrs>(&mut buf, i, &e).unwrap();
    }
    let (h, n) = parse::<kvm_msrs>(&buf).unwrap();
    assert_eq!((h.nmsrs, n), (3, 3));
    let got: Vec<_> = entries::<kvm_msrs>(&buf, n)
        .map(|e| (e.index, e.data))
        .collect();
    assert_eq!(got, vec![(0x10, 0), (0x11, 7), (0x12, 14)]);
    assert_eq!(&buf[8 + 16..8 + 20], &0x11u32.to_le_bytes());

    // Announces more entries than the buffer holds.
    buf[0] = 4;
    assert_eq!(
        parse::<kvm_msrs>(&buf),
        Err(FlexError::TooShort {
            needed: 8 + 64,
            have: 56
        })
    );
    // Above Linux's limit, and absurd counts: errors, never panics or overflows.
    buf[..4].copy_from_slice(&256u32.to_le_bytes());
    assert!(matches!(
        parse::<kvm_msrs>(&buf),
        Err(FlexError::TooMany { .. })
    ));
    buf[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        parse::<kvm_msrs>(&buf),
        Err(FlexError::TooMany { .. })
    ));
    assert!(byte_len::<kvm_reg_list>(usize::MAX).is_err());
    assert!(read_entry::<kvm_msrs>(&buf, usize::MAX).is_err());
    assert!(
        write_entry::<kvm_msrs>(&mut buf, usize::MAX / 16, &kvm_msr_entry::new_zeroed()).is_err()
    );
    assert!(read_entry::<kvm_msrs>(&buf, 3).is_err());
    assert!(parse::<kvm_msrs>(&buf[..5]).is_err());
    assert!(parse::<kvm_msrs>(&[]).is_err());
    assert_eq!(entries::<kvm_msrs>(&buf[..30], 3).count(), 1);
}

#[test]
fn flex_limits_match_linux() {
    use crate::flex::*;
    assert_eq!(byte_len::<kvm_cpuid2>(256), Ok(8 + 256 * 40));
    assert!(byte_len::<kvm_cpuid2>(257).is_err());
    assert_eq!(byte_len::<kvm_irq_routing>(4096), Ok(8 + 4096 * 48));
    assert_eq!(
        <kvm_coalesced_mmio_ring as FlexArray>::MAX_ENTRIES,
        (4096 - 8) / 24
    );
    assert_eq!(xsave_extra_words(4096, 1 << 16), Ok(0));
    assert_eq!(xsave_extra_words(4096 + 8192, 1 << 16), Ok(2048));
    assert!(xsave_extra_words(4095, 1 << 16).is_err());
    assert!(xsave_extra_words(4098, 1 << 16).is_err());
    assert!(xsave_extra_words(1 << 20, 1 << 16).is_err());
    assert_eq!(
        nested_state_size(KVM_STATE_NESTED_FORMAT_VMX, true),
        Some(128 + 8192)
    );
    assert_eq!(
        nested_state_size(KVM_STATE_NESTED_FORMAT_SVM, true),
        Some(128 + 4096)
    );
    assert_eq!(nested_state_size(7, false), None);
}
