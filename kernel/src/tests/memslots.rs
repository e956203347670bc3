//! Memslot semantics after Linux's `set_memory_region_test` and `dirty_log_test`.

use kvm_abi::*;

use crate::backend::Exit;
use crate::errno::{EEXIST, EFAULT, EINVAL, ENOENT};
use crate::fake::vmm::Vmm;
use crate::memslot::KVM_USER_MEM_SLOTS;

const MB: u64 = 1 << 20;

fn e(x: crate::errno::Errno) -> i64 {
    -i64::from(x.0)
}

#[test]
fn region_rules() {
    let v = Vmm::new();
    let vm = v.create_vm();
    let ua = v.host.user_alloc(8 * MB as usize, true);
    // Table: (slot, flags, gpa, size, uaddr, expected).
    let cases: &[(u32, u32, u64, u64, u64, i64)] = &[
        (0, 0, 0, 2 * MB, ua, 0),                                    // create
        (0, 0, 0, 2 * MB, ua, 0),                                    // identical again: no change
        (1, 0, MB, 2 * MB, ua + 2 * MB, e(EEXIST)),                  // overlaps slot 0
        (1, 0, 2 * MB, 2 * MB, ua + 2 * MB, 0),                      // adjacent is fine
        (0, 0, 4 * MB, 2 * MB, ua, 0),                               // move slot 0
        (0, 0, 2 * MB, 2 * MB, ua, e(EEXIST)),                       // move onto slot 1
        (0, 0, 4 * MB, 4 * MB, ua, e(EINVAL)),                       // resize
        (0, 0, 4 * MB, 2 * MB, ua + 4096, e(EINVAL)),                // new user address
        (0, KVM_MEM_READONLY, 4 * MB, 2 * MB, ua, e(EINVAL)),        // toggle READONLY
        (0, KVM_MEM_LOG_DIRTY_PAGES, 4 * MB, 2 * MB, ua, 0),         // flags-only change
        (2, 0, 8 * MB + 1, 4096, ua, e(EINVAL)),                     // unaligned gpa
        (2, 0, 8 * MB, 4095, ua, e(EINVAL)),                         // unaligned size
        (2, 0, 8 * MB, 4096, ua + 1, e(EINVAL)),                     // unaligned uaddr
        (2, 1 << 2, 8 * MB, 4096, ua, e(EINVAL)),                    // unknown flag
        (2, 0, !0xfff, 8192, ua, e(EINVAL)),                         // gpa + size wraps
        (2, 0, 8 * MB, 4096, 1 << 47, e(EINVAL)),                    // not a user address
        (KVM_USER_MEM_SLOTS as u32, 0, 8 * MB, 4096, ua, e(EINVAL)), // id too large
        (1 << 16, 0, 8 * MB, 4096, ua, e(EINVAL)),                   // address space 1 (no SMM)
        (3, 0, 0, 0, 0, e(EINVAL)),                                  // delete an unused slot
        (1, 0, 0, 0, 0, 0),                                          // delete slot 1
        (1, 0, 0, 0, 0, e(EINVAL)),                                  // ... twice
        (1, 0, 2 * MB, 2 * MB, ua + 2 * MB, 0),                      // re-create
    ];
    for (i, &(slot, flags, gpa, size, uaddr, want)) in cases.iter().enumerate() {
        assert_eq!(
            v.set_region(vm, slot, flags, gpa, size, uaddr),
            want,
            "case {i}"
        );
    }
    v.close(vm);
    v.assert_clean();
}

#[test]
fn add_max_memory_regions() {
    let v = Vmm::new();
    let vm = v.create_vm();
    let max = v.ioctl(v.kvm, KVM_CHECK_EXTENSION, u64::from(KVM_CAP_NR_MEMSLOTS)) as u32;
    assert!(max >= 509);
    let ua = v.host.user_alloc(2 * MB as usize, true);
    for s in 0..max {
        assert_eq!(
            v.set_region(vm, s, 0, u64::from(s) * 2 * MB, 2 * MB, ua),
            0,
            "slot {s}"
        );
    }
    assert_eq!(
        v.set_region(vm, max, 0, u64::from(max) * 2 * MB, 2 * MB, ua),
        e(EINVAL)
    );
    v.close(vm);
    v.assert_clean();
}

fn dirty_log(v: &Vmm, vm: i64, slot: u32, bitmap: u64) -> i64 {
    let log = kvm_dirty_log {
        slot,
        padding1: 0,
        dirty_bitmap: bitmap,
    };
    let a = v.put(&log);
    v.ioctl_fd(vm, KVM_GET_DIRTY_LOG, a)
}

#[test]
fn dirty_log_and_pins() {
    let v = Vmm::new();
    let vm = v.create_vm();
    let cpu = v.create_vcpu(vm, 0);
    v.add_slot(vm, 0, 0, 1 << 20, 0);
    let ua1 = v.add_slot(vm, 1, 0x10_0000, 130 * 4096, KVM_MEM_LOG_DIRTY_PAGES);
    let bm = v.buf(24);
    // Guest writes pages 0, 3 and 129 of slot 1 and reads page 5 and a page of slot 0.
    v.script(
        0,
        &[
            (
                Exit::PageFault {
                    gpa: 0x10_0000,
                    write: true,
                    fetch: false,
                },
                0,
            ),
            (
                Exit::PageFault {
                    gpa: 0x10_3000 + 8,
                    write: true,
                    fetch: false,
                },
                0,
            ),
            (
                Exit::PageFault {
                    gpa: 0x10_0000 + 129 * 4096,
                    write: true,
                    fetch: false,
                },
                0,
            ),
            (
                Exit::PageFault {
                    gpa: 0x10_5000,
                    write: false,
                    fetch: false,
                },
                0,
            ),
            (
                Exit::PageFault {
                    gpa: 0x2000,
                    write: false,
                    fetch: true,
                },
                0,
            ),
            (Exit::Hlt, 1),
        ],
    );
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(v.host.counts().pins, 5);
    assert_eq!(dirty_log(&v, vm, 1, bm), 0);
    let bits = v.host.user_read(bm, 24);
    assert_eq!(u64::from_le_bytes(bits[0..8].try_into().unwrap()), 0b1001);
    assert_eq!(
        u64::from_le_bytes(bits[16..24].try_into().unwrap()),
        1 << 1,
        "page 129"
    );
    // Read-and-clear: the next call is empty.
    assert_eq!(dirty_log(&v, vm, 1, bm), 0);
    assert!(v.host.user_read(bm, 24).iter().all(|&b| b == 0));
    // Errors: no logging on slot 0, bad id, bad bitmap pointer, unused slot.
    assert_eq!(dirty_log(&v, vm, 0, bm), e(ENOENT));
    assert_eq!(dirty_log(&v, vm, KVM_USER_MEM_SLOTS as u32, bm), e(EINVAL));
    assert_eq!(dirty_log(&v, vm, 1 << 16, bm), e(EINVAL));
    assert_eq!(dirty_log(&v, vm, 1, 0x10), e(EFAULT));
    assert_eq!(dirty_log(&v, vm, 7, bm), e(ENOENT));
    // Turning logging off (flags-only change) drops the bitmap.
    assert_eq!(v.set_region(vm, 1, 0, 0x10_0000, 130 * 4096, ua1), 0);
    assert_eq!(dirty_log(&v, vm, 1, bm), e(ENOENT));
    // MMIO (outside slots) and a write to a read-only slot go to the emulator, which fetches
    // the instruction at RIP: here the reset vector, itself outside every slot, so it cannot
    // be emulated (an instruction fetched from MMIO): KVM_INTERNAL_ERROR_EMULATION without
    // instruction bytes (flags 0). The emulator's own cases are in tests::emulation.
    v.add_slot(vm, 2, 0x20_0000, 4096, KVM_MEM_READONLY);
    let run = v.run_page(cpu);
    for gpa in [0xfee0_0000u64, 0x20_0000] {
        v.script(
            0,
            &[(
                Exit::PageFault {
                    gpa,
                    write: true,
                    fetch: false,
                },
                0,
            )],
        );
        assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
        // SAFETY: live run page.
        let r = unsafe { &*run };
        assert_eq!(r.exit_reason, KVM_EXIT_INTERNAL_ERROR);
        assert_eq!(r.u.internal().suberror, KVM_INTERNAL_ERROR_EMULATION);
        assert_eq!((r.u.internal().ndata, r.u.internal().data[0]), (1, 0));
    }
    // Deleting slot 1 unpins its four pages (3 written + 1 read); slot 0's pin stays.
    assert_eq!(v.set_region(vm, 1, 0, 0, 0, 0), 0);
    assert_eq!(v.host.counts().pins, 1);
    v.close(cpu);
    v.close(vm);
    v.assert_clean();
}
