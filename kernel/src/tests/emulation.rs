//! MMIO and string-I/O emulation through the whole `KVM_RUN` path: guest code in fake guest RAM
//! (a memslot backed by fake user memory), scripted second-level faults / string-I/O exits from
//! the soft backend, and everything else done by the core: `emulate/` decodes and executes the
//! instruction at RIP, `shadowpt::walk` translates through guest page tables in guest RAM,
//! userspace completes accesses through `kvm_run` exactly as QEMU does.

use kvm_abi::*;

use crate::backend::Exit;
use crate::errno::EINTR;
use crate::fake::host::FakeHost;
use crate::fake::vmm::Vmm;
use crate::soft::SoftBackend;
use crate::vcpu::Vcpu;

/// Guest RAM: gpa 0 .. 512 KiB (slot 0), dirty-logged.
const RAM: u64 = 512 << 10;
/// An MMIO address reachable from real mode (no slot there).
const MMIO16: u64 = 0xd_0000;
/// An MMIO address for protected/long mode.
const MMIO: u64 = 0xfee0_0000;
/// Where the code goes.
const CODE: u64 = 0x1000;

struct Fix {
    v: Vmm,
    vm: i64,
    cpu: i64,
    run: *mut kvm_run,
    ram: u64,
}

fn e(x: crate::errno::Errno) -> i64 {
    -i64::from(x.0)
}

impl Fix {
    fn new() -> Self {
        let v = Vmm::new();
        let vm = v.create_vm();
        let cpu = v.create_vcpu(vm, 0);
        let run = v.run_page(cpu);
        let ram = v.add_slot(vm, 0, 0, RAM, KVM_MEM_LOG_DIRTY_PAGES);
        Fix {
            v,
            vm,
            cpu,
            run,
            ram,
        }
    }

    fn r(&self) -> &mut kvm_run {
        // SAFETY: the run page lives as long as the vCPU; tests are single-threaded here.
        unsafe { &mut *self.run }
    }

    fn kvm_run(&self) -> i64 {
        self.v.ioctl_fd(self.cpu, KVM_RUN, 0)
    }

    fn pio(&self) -> *mut u8 {
        self.v.mmap(self.cpu, 1) as *mut u8
    }

    fn poke(&self, gpa: u64, bytes: &[u8]) {
        self.v.host.user_write(self.ram + gpa, bytes);
    }

    fn peek(&self, gpa: u64, len: usize) -> Vec<u8> {
        self.v.host.user_read(self.ram + gpa, len)
    }

    fn u64_at(&self, gpa: u64) -> u64 {
        u64::from_le_bytes(self.peek(gpa, 8).try_into().unwrap())
    }

    fn sregs(&self) -> kvm_sregs {
        let a = self.v.buf(size_of::<kvm_sregs>());
        assert_eq!(self.v.ioctl_fd(self.cpu, KVM_GET_SREGS, a), 0);
        self.v.get(a)
    }

    fn set_sregs(&self, s: &kvm_sregs) {
        let a = self.v.put(s);
        assert_eq!(self.v.ioctl_fd(self.cpu, KVM_SET_SREGS, a), 0);
    }

    /// Real mode, CS = 0 (code at `CODE`), DS = `ds`, ES = 0.
    fn real_mode(&self, ds: u16, code: &[u8]) {
        self.real_mode_at(ds, CODE, code)
    }

    /// Real mode, CS = 0 with the code at `at`, DS = `ds`, ES = 0.
    fn real_mode_at(&self, ds: u16, at: u64, code: &[u8]) {
        let mut s = self.sregs();
        for seg in [&mut s.cs, &mut s.es, &mut s.ss] {
            seg.selector = 0;
            seg.base = 0;
        }
        s.ds.selector = ds;
        s.ds.base = u64::from(ds) << 4;
        self.set_sregs(&s);
        self.poke(at, code);
        let mut r = self.v.regs(self.cpu);
        r.rip = at;
        self.v.set_regs(self.cpu, &r);
    }

    /// 64-bit mode with 4-level paging: linear 0..2 MiB identity-mapped with 4 KiB pages,
    /// linear 2 MiB + i*4 KiB → `MMIO` + i*4 KiB for i < 4 (2 MiB + 16 KiB and up: not present).
    fn long_mode(&self, code: &[u8], user: bool) {
        const PML4: u64 = 0x10000;
        const PDPT: u64 = 0x11000;
        const PD: u64 = 0x12000;
        const PT0: u64 = 0x13000;
        const PT1: u64 = 0x14000;
        let us = if user { 4 } else { 0 };
        let p = 1 | 2 | us;
        self.poke(PML4, &(PDPT | p).to_le_bytes());
        self.poke(PDPT, &(PD | p).to_le_bytes());
        self.poke(PD, &(PT0 | p).to_le_bytes());
        self.poke(PD + 8, &(PT1 | p).to_le_bytes());
        for i in 0..512u64 {
            self.poke(PT0 + i * 8, &((i << 12) | p).to_le_bytes());
        }
        for i in 0..4u64 {
            self.poke(PT1 + i * 8, &((MMIO + (i << 12)) | p).to_le_bytes());
        }
        let mut s = self.sregs();
        let flat = |ty: u8, dpl: u8| kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: 0x10 | u16::from(dpl),
            r#type: ty,
            present: 1,
            dpl,
            db: 1,
            s: 1,
            g: 1,
            ..crate::fake::vmm::zeroed()
        };
        let dpl = if user { 3 } else { 0 };
        s.cs = kvm_segment {
            selector: 0x8 | u16::from(dpl),
            db: 0,
            l: 1,
            ..flat(0xb, dpl)
        };
        s.ds = flat(3, dpl);
        s.es = flat(3, dpl);
        s.ss = flat(3, dpl);
        s.cr0 = 0x8000_0011 | (1 << 16);
        s.cr3 = PML4;
        s.cr4 = 0x20 | (1 << 9);
        s.efer = 0x500;
        self.set_sregs(&s);
        self.poke(CODE, code);
        let mut r = self.v.regs(self.cpu);
        r.rip = CODE;
        self.v.set_regs(self.cpu, &r);
    }

    fn script(&self, steps: &[Exit]) {
        let v: Vec<(Exit, u64)> = steps.iter().map(|&x| (x, 0)).collect();
        self.v.script(0, &v);
    }

    fn fault(&self, gpa: u64, write: bool) -> Exit {
        Exit::PageFault {
            gpa,
            write,
            fetch: false,
        }
    }

    fn soft<R>(&self, f: impl FnOnce(&crate::soft::SoftVcpu) -> R) -> R {
        let v = self.v.h(self.cpu) as *const Vcpu<FakeHost, SoftBackend<FakeHost>>;
        // SAFETY: live vCPU handle; no concurrent ioctl.
        let g = unsafe { &*v }.st.lock();
        f(&g.b)
    }

    fn dirty_bits(&self) -> Vec<u64> {
        let bm = self.v.buf(RAM as usize / 4096 / 8);
        let log = kvm_dirty_log {
            slot: 0,
            padding1: 0,
            dirty_bitmap: bm,
        };
        let a = self.v.put(&log);
        assert_eq!(self.v.ioctl_fd(self.vm, KVM_GET_DIRTY_LOG, a), 0);
        let b = self.v.host.user_read(bm, RAM as usize / 4096 / 8);
        b.chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn page_dirty(bits: &[u64], gpa: u64) -> bool {
        let pfn = gpa >> 12;
        bits[(pfn / 64) as usize] & (1 << (pfn % 64)) != 0
    }

    fn expect_mmio(&self, gpa: u64, len: u32, write: Option<&[u8]>) {
        assert_eq!(self.r().exit_reason, KVM_EXIT_MMIO);
        let m = *self.r().u.mmio();
        assert_eq!((m.phys_addr, m.len), (gpa, len));
        match write {
            Some(d) => {
                assert_eq!(m.is_write, 1);
                assert_eq!(&m.data[..len as usize], d);
            }
            None => assert_eq!(m.is_write, 0),
        }
    }

    fn expect_hlt(&self) {
        assert_eq!(self.kvm_run(), 0);
        assert_eq!(self.r().exit_reason, KVM_EXIT_HLT);
    }

    fn done(self) {
        self.v.close(self.cpu);
        self.v.close(self.vm);
        self.v.assert_clean();
    }
}

#[test]
fn real_mode_mmio_write_then_read_with_completion() {
    let f = Fix::new();
    // mov [0x10], ax ; mov cx, [0x20]   (DS = 0xd000)
    f.real_mode(0xd000, &[0x89, 0x06, 0x10, 0x00, 0x8b, 0x0e, 0x20, 0x00]);
    let mut r = f.v.regs(f.cpu);
    r.rax = 0x1234;
    r.rcx = 0xffff_ffff_ffff_ffff;
    f.v.set_regs(f.cpu, &r);
    f.script(&[
        f.fault(MMIO16 + 0x10, true),
        f.fault(MMIO16 + 0x20, false),
        Exit::Hlt,
    ]);
    assert_eq!(f.kvm_run(), 0);
    f.expect_mmio(MMIO16 + 0x10, 2, Some(&[0x34, 0x12]));
    // The write committed the instruction (Linux does the same before exiting).
    assert_eq!(f.v.regs(f.cpu).rip, CODE + 4);
    assert_eq!(f.kvm_run(), 0);
    f.expect_mmio(MMIO16 + 0x20, 2, None);
    assert_eq!(
        f.v.regs(f.cpu).rip,
        CODE + 4,
        "a read stops before any effect"
    );
    f.r().u.mmio_mut().data = [0xef, 0xbe, 0, 0, 0, 0, 0, 0];
    f.expect_hlt();
    let r = f.v.regs(f.cpu);
    assert_eq!(
        r.rcx, 0xffff_ffff_ffff_beef,
        "16-bit load keeps the upper bits"
    );
    assert_eq!(r.rip, CODE + 8);
    f.done();
}

#[test]
fn long_mode_paging_translates_sets_accessed_dirty_and_logs_them() {
    let f = Fix::new();
    // mov [rbx], rax ; mov eax, [rbx+4]
    f.long_mode(&[0x48, 0x89, 0x03, 0x8b, 0x43, 0x04], false);
    let mut r = f.v.regs(f.cpu);
    r.rax = 0x1122_3344_5566_7788;
    r.rbx = 0x20_0008;
    f.v.set_regs(f.cpu, &r);
    let _ = f.dirty_bits(); // clear the log
    f.script(&[
        f.fault(MMIO + 8, true),
        f.fault(MMIO + 12, false),
        Exit::Hlt,
    ]);
    assert_eq!(f.kvm_run(), 0);
    f.expect_mmio(MMIO + 8, 8, Some(&0x1122_3344_5566_7788u64.to_le_bytes()));
    assert_eq!(f.kvm_run(), 0);
    f.expect_mmio(MMIO + 12, 4, None);
    f.r().u.mmio_mut().data = [0x78, 0x56, 0x34, 0x12, 0xaa, 0xbb, 0xcc, 0xdd];
    f.expect_hlt();
    let r = f.v.regs(f.cpu);
    assert_eq!(r.rax, 0x1234_5678, "32-bit load zero-extends");
    assert_eq!(r.rip, CODE + 6);
    // The walker set A on every level used, D on the written leaf, A on the code page's PTE.
    let (a, d) = (1u64 << 5, 1u64 << 6);
    for pte in [0x10000, 0x11000, 0x12000, 0x12008] {
        assert_ne!(f.u64_at(pte) & a, 0, "A at {pte:#x}");
    }
    let mmio_pte = f.u64_at(0x14000);
    assert_eq!(mmio_pte & (a | d), a | d, "A and D on the MMIO page's PTE");
    assert_eq!(
        f.u64_at(0x13000 + 8) & (a | d),
        a,
        "code page: accessed, not dirty"
    );
    // The A/D updates are guest writes to the page-table pages: they are dirty-logged.
    let bits = f.dirty_bits();
    for pt in [0x10000, 0x11000, 0x12000, 0x13000, 0x14000] {
        assert!(Fix::page_dirty(&bits, pt), "page table {pt:#x} logged");
    }
    assert!(!Fix::page_dirty(&bits, 0x20000));
    f.done();
}

#[test]
fn guest_page_fault_is_injected_not_exited() {
    let f = Fix::new();
    // mov [rbx], eax with RBX in a not-present page (linear 2 MiB + 16 KiB).
    f.long_mode(&[0x89, 0x03], false);
    let mut r = f.v.regs(f.cpu);
    r.rbx = 0x20_4010;
    f.v.set_regs(f.cpu, &r);
    // The hardware would not have faulted to the host for a guest #PF; a stale second-level
    // fault (another vCPU changed the PTE) is the realistic way here.
    f.script(&[f.fault(MMIO + 0x10, true), Exit::Hlt]);
    f.expect_hlt();
    let (n, exc, cr2) = f.soft(|s| (s.exceptions, s.last_exception, s.last_exception_cr2));
    assert_eq!(n, 1);
    assert_eq!(
        (exc.nr, exc.has_error_code, exc.error_code),
        (14, 1, 0x2),
        "#PF, supervisor write to a not-present page"
    );
    assert_eq!(cr2, 0x20_4010);
    assert_eq!(
        f.v.regs(f.cpu).rip,
        CODE,
        "a fault leaves RIP at the instruction"
    );
    f.done();
}

#[test]
fn user_mode_protection_fault_error_code() {
    let f = Fix::new();
    // CPL 3 with supervisor-only pages: the code fetch itself faults (P=1, U=1, I/D=0 without
    // NXE/SMEP), reported as #PF with CR2 = RIP.
    f.long_mode(&[0x89, 0x03], false);
    let mut s = f.sregs();
    s.cs.dpl = 3;
    s.cs.selector |= 3;
    s.ss.dpl = 3;
    s.ss.selector |= 3;
    f.set_sregs(&s);
    f.script(&[f.fault(MMIO, true), Exit::Hlt]);
    f.expect_hlt();
    let (exc, cr2) = f.soft(|s| (s.last_exception, s.last_exception_cr2));
    assert_eq!((exc.nr, exc.error_code), (14, 0x5));
    assert_eq!(cr2, CODE);
    f.done();
}

#[test]
fn rep_outsb_batches_at_page_boundary_and_resumes() {
    let f = Fix::new();
    // rep outsb with DS:SI 6 bytes before a page end and CX = 10: two batches (6, then 4).
    f.real_mode(0, &[0xf3, 0x6e]);
    f.poke(0x3ffa, b"0123456789");
    let mut r = f.v.regs(f.cpu);
    r.rsi = 0x3ffa;
    r.rcx = 10;
    r.rdx = 0x3f8;
    f.v.set_regs(f.cpu, &r);
    f.script(&[
        Exit::IoString {
            port: 0x3f8,
            size: 1,
            out: true,
        },
        Exit::Hlt,
    ]);
    let pio = |n: usize| -> Vec<u8> {
        // SAFETY: the PIO page is page 1 of the vCPU mapping.
        unsafe { std::slice::from_raw_parts(f.pio(), n).to_vec() }
    };
    assert_eq!(f.kvm_run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_IO);
    let io = *f.r().u.io();
    assert_eq!(
        (io.direction, io.size, io.port, io.count, io.data_offset),
        (KVM_EXIT_IO_OUT, 1, 0x3f8, 6, 4096)
    );
    assert_eq!(pio(6), b"012345");
    let r = f.v.regs(f.cpu);
    assert_eq!(
        (r.rsi, r.rcx, r.rip),
        (0x4000, 4, CODE),
        "batch committed, REP continues"
    );
    assert_eq!(f.kvm_run(), 0);
    let io = *f.r().u.io();
    assert_eq!((io.direction, io.count), (KVM_EXIT_IO_OUT, 4));
    assert_eq!(pio(4), b"6789");
    f.expect_hlt();
    let r = f.v.regs(f.cpu);
    assert_eq!((r.rsi, r.rcx, r.rip), (0x4004, 0, CODE + 2));
    f.done();
}

#[test]
fn rep_insw_batches_with_completion_into_dirty_logged_ram() {
    let f = Fix::new();
    // rep insw, ES:DI = 0x5ffc, CX = 5: 2 words up to the page end, then 3.
    f.real_mode(0, &[0xf3, 0x6d]);
    let mut r = f.v.regs(f.cpu);
    r.rdi = 0x5ffc;
    r.rcx = 5;
    r.rdx = 0x1f0;
    f.v.set_regs(f.cpu, &r);
    let _ = f.dirty_bits();
    f.script(&[
        Exit::IoString {
            port: 0x1f0,
            size: 2,
            out: false,
        },
        Exit::Hlt,
    ]);
    let fill = |bytes: &[u8]| {
        // SAFETY: PIO page, data_offset 4096 from kvm_run = page 1.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), f.pio(), bytes.len()) };
    };
    assert_eq!(f.kvm_run(), 0);
    let io = *f.r().u.io();
    assert_eq!(
        (io.direction, io.size, io.port, io.count),
        (KVM_EXIT_IO_IN, 2, 0x1f0, 2)
    );
    fill(&[1, 2, 3, 4]);
    assert_eq!(f.kvm_run(), 0);
    let io = *f.r().u.io();
    assert_eq!((io.direction, io.count), (KVM_EXIT_IO_IN, 3));
    assert_eq!(
        f.peek(0x5ffc, 4),
        [1, 2, 3, 4],
        "first batch stored on completion"
    );
    fill(&[5, 6, 7, 8, 9, 10]);
    f.expect_hlt();
    assert_eq!(f.peek(0x6000, 6), [5, 6, 7, 8, 9, 10]);
    let r = f.v.regs(f.cpu);
    assert_eq!((r.rdi, r.rcx, r.rip), (0x6006, 0, CODE + 2));
    let bits = f.dirty_bits();
    assert!(Fix::page_dirty(&bits, 0x5000) && Fix::page_dirty(&bits, 0x6000));
    f.done();
}

#[test]
fn coalesced_mmio_write_lands_in_the_ring() {
    let f = Fix::new();
    let z = f.v.put(&kvm_coalesced_mmio_zone {
        addr: MMIO16,
        size: 0x1000,
        pad: 0,
    });
    assert_eq!(f.v.ioctl_fd(f.vm, KVM_REGISTER_COALESCED_MMIO, z), 0);
    // mov [0x10], eax (66 prefix in real mode)
    f.real_mode(0xd000, &[0x66, 0x89, 0x06, 0x10, 0x00]);
    let mut r = f.v.regs(f.cpu);
    r.rax = 0xcafe_f00d;
    f.v.set_regs(f.cpu, &r);
    f.script(&[f.fault(MMIO16 + 0x10, true), Exit::Hlt]);
    f.expect_hlt();
    assert_eq!(f.v.regs(f.cpu).rip, CODE + 5);
    let ring = f.v.mmap(f.cpu, 2) as *const u8;
    // SAFETY: page 2 is the ring page: header then entries.
    unsafe {
        let (first, last) = (*(ring as *const u32), *(ring.add(4) as *const u32));
        assert_eq!((first, last), (0, 1));
        let e = &*(ring.add(8) as *const kvm_coalesced_mmio);
        assert_eq!((e.phys_addr, e.len, e.pad), (MMIO16 + 0x10, 4, 0));
        assert_eq!(&e.data[..4], &0xcafe_f00du32.to_le_bytes());
    }
    f.done();
}

#[test]
fn coalesced_pio_rep_outs_goes_to_the_ring_element_by_element() {
    let f = Fix::new();
    let z = f.v.put(&kvm_coalesced_mmio_zone {
        addr: 0x70,
        size: 2,
        pad: 1,
    });
    assert_eq!(f.v.ioctl_fd(f.vm, KVM_REGISTER_COALESCED_MMIO, z), 0);
    f.real_mode(0, &[0xf3, 0x6e]);
    f.poke(0x3000, &[0xa, 0xb, 0xc]);
    let mut r = f.v.regs(f.cpu);
    r.rsi = 0x3000;
    r.rcx = 3;
    r.rdx = 0x70;
    f.v.set_regs(f.cpu, &r);
    f.script(&[
        Exit::IoString {
            port: 0x70,
            size: 1,
            out: true,
        },
        Exit::Hlt,
    ]);
    f.expect_hlt();
    let ring = f.v.mmap(f.cpu, 2) as *const u8;
    // SAFETY: ring page.
    unsafe {
        assert_eq!(*(ring.add(4) as *const u32), 3);
        for i in 0..3usize {
            let e =
                &*(ring.add(8 + i * size_of::<kvm_coalesced_mmio>()) as *const kvm_coalesced_mmio);
            assert_eq!(
                (e.phys_addr, e.len, e.pad, e.data[0]),
                (0x70, 1, 1, 0xa + i as u8)
            );
        }
    }
    f.done();
}

#[test]
fn read_only_slot_write_is_an_mmio_exit_and_reads_are_ram() {
    let f = Fix::new();
    let rom = f.v.add_slot(f.vm, 1, 0x10_0000, 0x1000, KVM_MEM_READONLY);
    f.v.host.user_write(rom + 0x20, &0x0100u16.to_le_bytes());
    // add [0x20], ax with DS = 0xffff (base 0xffff0: 0xffff0 + 0x30 = 0x100020, A20 on)
    f.real_mode(0xffff, &[0x01, 0x06, 0x30, 0x00]);
    let mut r = f.v.regs(f.cpu);
    r.rax = 0x0023;
    f.v.set_regs(f.cpu, &r);
    f.script(&[f.fault(0x10_0020, true), Exit::Hlt]);
    assert_eq!(f.kvm_run(), 0);
    // Read from the ROM (RAM for reads), result written as MMIO.
    f.expect_mmio(0x10_0020, 2, Some(&0x0123u16.to_le_bytes()));
    f.expect_hlt();
    assert_eq!(
        f.v.host.user_read(rom + 0x20, 2),
        0x0100u16.to_le_bytes(),
        "ROM unchanged"
    );
    assert_eq!(f.v.regs(f.cpu).rip, CODE + 4);
    f.done();
}

#[test]
fn unsupported_instruction_reports_its_bytes() {
    let f = Fix::new();
    // fld dword [0x10] on MMIO: not emulated. It ends a page, so exactly its 4 bytes are
    // fetched (the emulator, like Linux's, prefetches up to 15 bytes within the page).
    let insn = [0xd9, 0x06, 0x10, 0x00];
    let at = 0x1ffc;
    f.real_mode_at(0xd000, at, &insn);
    f.script(&[f.fault(MMIO16 + 0x10, false)]);
    assert_eq!(f.kvm_run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_INTERNAL_ERROR);
    let ef = *f.r().u.emulation_failure();
    assert_eq!(ef.suberror, KVM_INTERNAL_ERROR_EMULATION);
    assert_eq!(ef.ndata, 3);
    assert_eq!(
        ef.flags,
        KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES
    );
    assert_eq!(ef.insn_size, 4);
    assert_eq!(&ef.insn_bytes[..4], &insn);
    assert!(ef.insn_bytes[4..].iter().all(|&b| b == 0x90), "NOP padding");
    assert_eq!(f.v.regs(f.cpu).rip, at, "never skipped");
    // Without KVM_CAP_EXIT_ON_EMULATION_FAILURE, Linux also queues #UD (CPL 0 exits too).
    let ev_at = f.v.buf(size_of::<kvm_vcpu_events>());
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_GET_VCPU_EVENTS, ev_at), 0);
    let ev: kvm_vcpu_events = f.v.get(ev_at);
    assert_eq!((ev.exception.injected, ev.exception.nr), (1, 6));
    f.done();
}

#[test]
fn emulation_failure_at_cpl3_follows_exit_on_emulation_failure() {
    let f = Fix::new();
    assert_eq!(
        f.v.ioctl_fd(
            f.vm,
            KVM_CHECK_EXTENSION,
            u64::from(KVM_CAP_EXIT_ON_EMULATION_FAILURE)
        ),
        1
    );
    // fld dword [rbx] at CPL 3 on user pages.
    f.long_mode(&[0xd9, 0x03], true);
    let mut s = f.sregs();
    s.cs.dpl = 3;
    s.ss.dpl = 3;
    f.set_sregs(&s);
    let mut r = f.v.regs(f.cpu);
    r.rbx = 0x20_0000;
    f.v.set_regs(f.cpu, &r);
    // Without the capability: the guest gets #UD, userspace sees nothing.
    f.script(&[f.fault(MMIO, false), Exit::Hlt]);
    f.expect_hlt();
    assert_eq!(f.soft(|s| (s.exceptions, s.last_exception.nr)), (1, 6));
    // With it: an exit with the bytes, and no #UD.
    let cap = |args0: u64, flags: u32| {
        let c = kvm_enable_cap {
            cap: KVM_CAP_EXIT_ON_EMULATION_FAILURE,
            flags,
            args: [args0, 0, 0, 0],
            pad: [0; 64],
        };
        let a = f.v.put(&c);
        f.v.ioctl_fd(f.vm, KVM_ENABLE_CAP, a)
    };
    assert_eq!(cap(2, 0), e(crate::errno::EINVAL));
    assert_eq!(cap(1, 1), e(crate::errno::EINVAL));
    assert_eq!(cap(1, 0), 0);
    f.script(&[f.fault(MMIO, false), Exit::Hlt]);
    assert_eq!(f.kvm_run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_INTERNAL_ERROR);
    let ef = *f.r().u.emulation_failure();
    assert_eq!((ef.suberror, ef.flags), (1, 1));
    assert!(ef.insn_size >= 2);
    assert_eq!(&ef.insn_bytes[..2], &[0xd9, 0x03]);
    f.expect_hlt();
    assert_eq!(f.soft(|s| s.exceptions), 1, "no second #UD");
    f.done();
}

#[test]
fn signal_with_a_pending_mmio_read_completes_it_before_eintr() {
    let f = Fix::new();
    // mov al, [0x40]; then another MMIO read never reached.
    f.real_mode(0xd000, &[0x8a, 0x06, 0x40, 0x00]);
    f.script(&[f.fault(MMIO16 + 0x40, false), Exit::Hlt]);
    assert_eq!(f.kvm_run(), 0);
    f.expect_mmio(MMIO16 + 0x40, 1, None);
    f.r().u.mmio_mut().data[0] = 0x5a;
    f.v.host
        .signal
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(f.kvm_run(), e(EINTR));
    assert_eq!(f.r().exit_reason, KVM_EXIT_INTR);
    let r = f.v.regs(f.cpu);
    assert_eq!(
        (r.rax & 0xff, r.rip),
        (0x5a, CODE + 4),
        "read completed first"
    );
    f.v.host
        .signal
        .store(false, std::sync::atomic::Ordering::SeqCst);
    f.expect_hlt();
    f.done();
}

#[test]
fn immediate_exit_still_completes_and_can_yield_the_next_batch() {
    // Linux: complete_userspace_io runs before immediate_exit; a further REP batch exits again.
    let f = Fix::new();
    f.real_mode(0, &[0xf3, 0x6e]);
    let mut r = f.v.regs(f.cpu);
    r.rsi = 0x2ffe;
    r.rcx = 4;
    r.rdx = 0x80;
    f.v.set_regs(f.cpu, &r);
    f.script(&[
        Exit::IoString {
            port: 0x80,
            size: 1,
            out: true,
        },
        Exit::Hlt,
    ]);
    assert_eq!(f.kvm_run(), 0);
    assert_eq!(f.r().u.io().count, 2);
    f.r().immediate_exit = 1;
    assert_eq!(f.kvm_run(), 0, "the second batch");
    assert_eq!((f.r().exit_reason, f.r().u.io().count), (KVM_EXIT_IO, 2));
    assert_eq!(
        f.kvm_run(),
        e(EINTR),
        "instruction finished, then immediate_exit"
    );
    assert_eq!(f.v.regs(f.cpu).rip, CODE + 2);
    f.r().immediate_exit = 0;
    f.expect_hlt();
    f.done();
}

#[test]
fn mmio_during_event_delivery_is_refused_like_linux() {
    let f = Fix::new();
    f.real_mode(0xd000, &[0x89, 0x06, 0x10, 0x00]);
    // The backend reports an interrupt being re-injected (the fault hit its delivery).
    let v = f.v.h(f.cpu) as *const Vcpu<FakeHost, SoftBackend<FakeHost>>;
    f.script(&[f.fault(MMIO16 + 0x10, true)]);
    {
        // SAFETY: live vCPU handle; no concurrent ioctl.
        let mut g = unsafe { &*v }.st.lock();
        g.b.reinject = true;
        g.b.reinject_vector = 0x30;
    }
    assert_eq!(f.kvm_run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_INTERNAL_ERROR);
    let i = *f.r().u.internal();
    assert_eq!(i.suberror, KVM_INTERNAL_ERROR_DELIVERY_EV);
    assert_eq!(
        (i.ndata, i.data[0] & 0xff, i.data[3]),
        (5, 0x30, MMIO16 + 0x10)
    );
    assert_eq!(f.v.regs(f.cpu).rip, CODE, "not emulated");
    f.done();
}

#[test]
fn single_step_rf_and_interrupt_shadow_after_an_emulated_instruction() {
    let f = Fix::new();
    f.real_mode(0xd000, &[0x89, 0x06, 0x10, 0x00]);
    let mut r = f.v.regs(f.cpu);
    r.rflags |= (1 << 8) | (1 << 16); // TF, RF
    f.v.set_regs(f.cpu, &r);
    // The instruction follows an STI: its interrupt shadow is active.
    let ev_at = f.v.buf(size_of::<kvm_vcpu_events>());
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_GET_VCPU_EVENTS, ev_at), 0);
    let mut ev: kvm_vcpu_events = f.v.get(ev_at);
    ev.flags = KVM_VCPUEVENT_VALID_SHADOW;
    ev.interrupt.shadow = 1;
    let a = f.v.put(&ev);
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_SET_VCPU_EVENTS, a), 0);
    f.script(&[f.fault(MMIO16 + 0x10, true), Exit::Hlt]);
    assert_eq!(f.kvm_run(), 0);
    f.expect_mmio(MMIO16 + 0x10, 2, Some(&[0, 0]));
    f.expect_hlt();
    assert_eq!(
        f.soft(|s| (s.exceptions, s.last_exception.nr)),
        (1, 1),
        "#DB"
    );
    let dr_at = f.v.buf(size_of::<kvm_debugregs>());
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_GET_DEBUGREGS, dr_at), 0);
    let dr: kvm_debugregs = f.v.get(dr_at);
    assert_ne!(dr.dr6 & (1 << 14), 0, "DR6.BS");
    let r = f.v.regs(f.cpu);
    assert_eq!((r.rip, r.rflags & (1 << 16)), (CODE + 4, 0), "RF cleared");
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_GET_VCPU_EVENTS, ev_at), 0);
    let ev: kvm_vcpu_events = f.v.get(ev_at);
    assert_eq!(
        ev.interrupt.shadow, 0,
        "the shadow ended with the instruction"
    );
    f.done();
}

#[test]
fn sse_moves_split_into_8_byte_mmio_and_use_the_xmm_registers() {
    let f = Fix::new();
    // movdqu [rbx], xmm1 ; movdqu xmm2, [rbx]
    f.long_mode(&[0xf3, 0x0f, 0x7f, 0x0b, 0xf3, 0x0f, 0x6f, 0x13], false);
    let mut r = f.v.regs(f.cpu);
    r.rbx = 0x20_0020;
    f.v.set_regs(f.cpu, &r);
    let fpu_at = f.v.buf(size_of::<kvm_fpu>());
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_GET_FPU, fpu_at), 0);
    let mut fpu: kvm_fpu = f.v.get(fpu_at);
    let x1: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
    fpu.xmm[1] = x1;
    let a = f.v.put(&fpu);
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_SET_FPU, a), 0);
    f.script(&[
        f.fault(MMIO + 0x20, true),
        f.fault(MMIO + 0x20, false),
        Exit::Hlt,
    ]);
    assert_eq!(f.kvm_run(), 0);
    f.expect_mmio(MMIO + 0x20, 8, Some(&x1[..8]));
    assert_eq!(f.kvm_run(), 0);
    f.expect_mmio(MMIO + 0x28, 8, Some(&x1[8..]));
    assert_eq!(f.kvm_run(), 0);
    f.expect_mmio(MMIO + 0x20, 8, None);
    f.r().u.mmio_mut().data = [0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7];
    assert_eq!(f.kvm_run(), 0);
    f.expect_mmio(MMIO + 0x28, 8, None);
    f.r().u.mmio_mut().data = [0xb0, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7];
    f.expect_hlt();
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_GET_FPU, fpu_at), 0);
    let fpu: kvm_fpu = f.v.get(fpu_at);
    assert_eq!(
        fpu.xmm[2][..8],
        [0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7]
    );
    assert_eq!(
        fpu.xmm[2][8..],
        [0xb0, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7]
    );
    assert_eq!(fpu.xmm[1], x1, "source untouched");
    assert_eq!(f.v.regs(f.cpu).rip, CODE + 8);
    f.done();
}

#[test]
fn hostile_userspace_cannot_change_the_completion_length() {
    let f = Fix::new();
    // mov ax, [0x20]: a 2-byte read; userspace rewrites len/phys_addr before completing.
    f.real_mode(0xd000, &[0x8b, 0x06, 0x20, 0x00]);
    f.script(&[f.fault(MMIO16 + 0x20, false), Exit::Hlt]);
    assert_eq!(f.kvm_run(), 0);
    f.expect_mmio(MMIO16 + 0x20, 2, None);
    let m = f.r().u.mmio_mut();
    m.len = 0xffff_ffff;
    m.phys_addr = 0;
    m.data = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
    f.expect_hlt();
    let r = f.v.regs(f.cpu);
    assert_eq!(
        (r.rax & 0xffff_ffff, r.rip),
        (0x2211, CODE + 4),
        "only the 2 bytes asked for"
    );
    f.done();
}

#[test]
fn set_regs_moving_rip_abandons_the_pending_instruction() {
    let f = Fix::new();
    f.real_mode(0xd000, &[0x8b, 0x06, 0x20, 0x00]);
    f.script(&[f.fault(MMIO16 + 0x20, false), Exit::Hlt]);
    assert_eq!(f.kvm_run(), 0);
    f.expect_mmio(MMIO16 + 0x20, 2, None);
    // Same RIP (QEMU syncing state): the read still completes.
    let r = f.v.regs(f.cpu);
    f.v.set_regs(f.cpu, &r);
    f.r().u.mmio_mut().data[0] = 0x42;
    f.expect_hlt();
    assert_eq!(f.v.regs(f.cpu).rax & 0xff, 0x42);
    // A different RIP: the half-done read is dropped, the guest runs from the new RIP.
    let mut r = f.v.regs(f.cpu);
    r.rip = CODE;
    r.rax = 0;
    f.v.set_regs(f.cpu, &r);
    f.script(&[f.fault(MMIO16 + 0x20, false)]);
    assert_eq!(f.kvm_run(), 0);
    f.expect_mmio(MMIO16 + 0x20, 2, None);
    let mut r = f.v.regs(f.cpu);
    r.rip = 0x2000;
    f.v.set_regs(f.cpu, &r);
    f.script(&[Exit::Hlt]);
    f.r().u.mmio_mut().data[0] = 0x99;
    f.expect_hlt();
    let r = f.v.regs(f.cpu);
    assert_eq!(
        (r.rax, r.rip),
        (0, 0x2000),
        "nothing completed into the new context"
    );
    f.done();
}

#[test]
fn memslot_memory_the_process_made_read_only_fails_kvm_run_with_efault() {
    let f = Fix::new();
    // mov [0x3000], ax with DS = 0: a RAM write that copyout cannot do.
    f.real_mode(0, &[0x89, 0x06, 0x00, 0x30]);
    f.v.host.user_protect(f.ram, false);
    f.script(&[f.fault(MMIO16, true)]);
    assert_eq!(f.kvm_run(), e(crate::errno::EFAULT));
    assert_eq!(f.v.regs(f.cpu).rip, CODE, "nothing committed");
    f.v.host.user_protect(f.ram, true);
    f.done();
}

#[test]
fn split_irqchip_apic_page_accesses_stay_in_the_kernel() {
    // A VM with the in-kernel local APIC: the emulated MOVs to and from its page (a second-level
    // fault outside memslots, like any MMIO) are served by the APIC, without an MMIO exit.
    let v = Vmm::new();
    let vm = v.create_vm();
    let mut c: kvm_enable_cap = crate::fake::vmm::zeroed();
    c.cap = KVM_CAP_SPLIT_IRQCHIP;
    c.args[0] = 24;
    let a = v.put(&c);
    assert_eq!(v.ioctl_fd(vm, KVM_ENABLE_CAP, a), 0);
    let cpu = v.create_vcpu(vm, 0);
    let run = v.run_page(cpu);
    let ram = v.add_slot(vm, 0, 0, RAM, KVM_MEM_LOG_DIRTY_PAGES);
    let f = Fix {
        v,
        vm,
        cpu,
        run,
        ram,
    };
    // mov dword [0x2000f0], 0x1ff ; mov eax, [0x2000f0]   (linear 0x200000 → the APIC page)
    f.long_mode(
        &[
            0xc7, 0x04, 0x25, 0xf0, 0x00, 0x20, 0x00, 0xff, 0x01, 0x00, 0x00, 0x8b, 0x04, 0x25,
            0xf0, 0x00, 0x20, 0x00,
        ],
        false,
    );
    f.script(&[
        f.fault(MMIO + 0xf0, true),
        f.fault(MMIO + 0xf0, false),
        Exit::Io {
            port: 0x80,
            size: 1,
            out: true,
            data: 0,
        },
    ]);
    assert_eq!(f.kvm_run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_IO);
    let r = f.v.regs(f.cpu);
    assert_eq!((r.rax, r.rip), (0x1ff, CODE + 18));
    let la = f.v.buf(1024);
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_GET_LAPIC, la), 0);
    assert_eq!(f.v.host.user_read(la + 0xf0, 4), vec![0xff, 0x01, 0, 0]);
    f.done();
}

#[test]
fn full_irqchip_ioapic_accesses_stay_in_the_kernel() {
    // A VM with the full in-kernel irqchip: emulated MOVs to the IOAPIC window (a second-level
    // fault outside memslots) reach the in-kernel IOAPIC without an MMIO exit.
    let v = Vmm::new();
    let vm = v.create_vm();
    assert_eq!(v.ioctl_fd(vm, KVM_CREATE_IRQCHIP, 0), 0);
    let cpu = v.create_vcpu(vm, 0);
    let run = v.run_page(cpu);
    let ram = v.add_slot(vm, 0, 0, RAM, KVM_MEM_LOG_DIRTY_PAGES);
    let f = Fix {
        v,
        vm,
        cpu,
        run,
        ram,
    };
    // mov dword [0x200000], 1 ; mov eax, [0x200010]   (linear 0x200000 → 0xfec00000)
    f.long_mode(
        &[
            0xc7, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00, 0x01, 0x00, 0x00, 0x00, 0x8b, 0x04, 0x25,
            0x10, 0x00, 0x20, 0x00,
        ],
        false,
    );
    const IOAPIC: u64 = 0xfec0_0000;
    f.poke(0x14000, &(IOAPIC | 3).to_le_bytes());
    f.script(&[
        f.fault(IOAPIC, true),
        f.fault(IOAPIC + 0x10, false),
        Exit::Io {
            port: 0x80,
            size: 1,
            out: true,
            data: 0,
        },
    ]);
    assert_eq!(f.kvm_run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_IO);
    let r = f.v.regs(f.cpu);
    assert_eq!((r.rax, r.rip), (0x0017_0011, CODE + 18), "IOAPIC version");
    f.done();
}

fn ioeventfd(f: &Fix, fd: i32, addr: u64, len: u32, flags: u32, datamatch: u64) -> i64 {
    let a = f.v.put(&kvm_ioeventfd {
        datamatch,
        addr,
        len,
        fd,
        flags,
        ..crate::fake::vmm::zeroed()
    });
    f.v.ioctl_fd(f.vm, KVM_IOEVENTFD, a)
}

#[test]
fn emulated_mmio_write_that_hits_an_ioeventfd_completes_in_the_kernel() {
    let f = Fix::new();
    let n = f.v.host.eventfd_create();
    assert_eq!(
        ioeventfd(
            &f,
            n,
            MMIO16 + 0x10,
            2,
            KVM_IOEVENTFD_FLAG_DATAMATCH,
            0x1234
        ),
        0
    );
    // mov [0x10], ax (hit) ; mov [0x10], cx (datamatch miss: MMIO exit)   (DS = 0xd000)
    f.real_mode(0xd000, &[0x89, 0x06, 0x10, 0x00, 0x89, 0x0e, 0x10, 0x00]);
    let mut r = f.v.regs(f.cpu);
    r.rax = 0x1234;
    r.rcx = 0x5678;
    f.v.set_regs(f.cpu, &r);
    f.script(&[f.fault(MMIO16 + 0x10, true), f.fault(MMIO16 + 0x10, true)]);
    assert_eq!(f.kvm_run(), 0);
    f.expect_mmio(MMIO16 + 0x10, 2, Some(&[0x78, 0x56]));
    // The first store completed without an exit; the second is the posted MMIO write that
    // exits (RIP already past it, as with any emulated MMIO write).
    assert_eq!(f.v.regs(f.cpu).rip, CODE + 8);
    assert_eq!(f.v.host.eventfd_read(n), 1);
    let host = f.v.host;
    f.done();
    host.eventfd_close(n);
}

#[test]
fn rep_outsw_signals_only_when_every_element_hits() {
    let f = Fix::new();
    let host = f.v.host;
    let (n, m) = (host.eventfd_create(), host.eventfd_create());
    // Wildcard 2-byte ioeventfd on port 0xc050: REP OUTSW of 3 words completes in the kernel.
    assert_eq!(ioeventfd(&f, n, 0xc050, 2, KVM_IOEVENTFD_FLAG_PIO, 0), 0);
    f.real_mode(0, &[0xf3, 0x6f]);
    f.poke(0x3000, &[1, 0, 2, 0, 9, 0]);
    let rep = |f: &Fix| {
        let mut r = f.v.regs(f.cpu);
        r.rip = CODE;
        r.rsi = 0x3000;
        r.rcx = 3;
        r.rdx = 0xc050;
        f.v.set_regs(f.cpu, &r);
    };
    rep(&f);
    let outs = Exit::IoString {
        port: 0xc050,
        size: 2,
        out: true,
    };
    f.script(&[outs, Exit::Hlt]);
    f.expect_hlt();
    assert_eq!(host.eventfd_read(n), 3, "three words, three signals");
    let r = f.v.regs(f.cpu);
    assert_eq!((r.rcx, r.rip), (0, CODE + 2));
    // Datamatch 1 and 2 only: the third word (9) misses, so the whole batch goes to
    // userspace and nothing is signaled.
    let pio_dm = KVM_IOEVENTFD_FLAG_PIO | KVM_IOEVENTFD_FLAG_DATAMATCH;
    assert_eq!(
        ioeventfd(
            &f,
            n,
            0xc050,
            2,
            KVM_IOEVENTFD_FLAG_PIO | KVM_IOEVENTFD_FLAG_DEASSIGN,
            0
        ),
        0
    );
    assert_eq!(ioeventfd(&f, n, 0xc050, 2, pio_dm, 1), 0);
    assert_eq!(ioeventfd(&f, m, 0xc050, 2, pio_dm, 2), 0);
    rep(&f);
    f.script(&[outs]);
    assert_eq!(f.kvm_run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_IO);
    let io = *f.r().u.io();
    assert_eq!((io.port, io.size, io.count), (0xc050, 2, 3));
    assert_eq!((host.eventfd_read(n), host.eventfd_read(m)), (0, 0));
    f.done();
    host.eventfd_close(n);
    host.eventfd_close(m);
}
