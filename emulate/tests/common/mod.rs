//! A test vCPU: registers, an identity-mapped RAM, an MMIO window backed by a register file that
//! logs every access, port I/O devices, and "page tables" with not-present and read-only pages.
#![allow(dead_code)]

use emulate::{Access, Cpu, Emulator, Exit, Mem, Outcome, PageFault, Seg, Segment};
use std::collections::HashSet;

pub const RAM_SIZE: usize = 0x2_0000;
/// Two MMIO pages: linear = physical.
pub const MMIO: u64 = 0x2_0000;
pub const MMIO_LEN: u64 = 0x2000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Real,
    Prot16,
    Prot32,
    Long64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access_ {
    MmioRead(u64, Vec<u8>),
    MmioWrite(u64, Vec<u8>),
    PioIn(u16, u8, u32),
    PioOut(u16, u8, Vec<u8>),
}

pub struct TestCpu {
    pub gpr: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    pub segs: [Segment; 7],
    pub cr0: u64,
    pub cr4: u64,
    pub efer: u64,
    pub cpl: u8,
    pub xmm: [[u8; 16]; 16],
    pub ram: Vec<u8>,
    pub mmio: Vec<u8>,
    pub not_present: HashSet<u64>,
    pub read_only: HashSet<u64>,
    /// MMIO and PIO handled "in the kernel" (callbacks return true) instead of exiting.
    pub in_kernel: bool,
    /// Device-side log of accesses, in the order the device saw them.
    pub log: Vec<Access_>,
    /// Value returned by port input: successive bytes of this counter.
    pub port_counter: u8,
    pub exits: u32,
}

fn seg(base: u64, limit: u32, typ: u8, db: bool, l: bool) -> Segment {
    Segment {
        selector: (base >> 4) as u16,
        base,
        limit,
        typ,
        s: true,
        dpl: 0,
        present: true,
        avl: false,
        l,
        db,
        g: limit > 0xfffff,
        unusable: false,
    }
}

impl TestCpu {
    pub fn new(mode: Mode) -> TestCpu {
        let (cr0, efer, cs, data) = match mode {
            Mode::Real => (
                0,
                0,
                seg(0, 0xffff, 0xb, false, false),
                seg(0, 0xffff, 3, false, false),
            ),
            Mode::Prot16 => (
                1,
                0,
                seg(0, 0xfffff, 0xb, false, false),
                seg(0, 0xffff_ffff, 3, false, false),
            ),
            Mode::Prot32 => (
                1,
                0,
                seg(0, 0xffff_ffff, 0xb, true, false),
                seg(0, 0xffff_ffff, 3, true, false),
            ),
            Mode::Long64 => (
                0x8000_0001,
                0x500,
                seg(0, 0xffff_ffff, 0xb, false, true),
                seg(0, 0xffff_ffff, 3, true, false),
            ),
        };
        let mut tr = seg(0x8000, 0x2067, 11, false, false);
        tr.s = false;
        let mut segs = [data; 7];
        segs[Seg::Cs as usize] = cs;
        segs[Seg::Tr as usize] = tr;
        let mut cpu = TestCpu {
            gpr: [0; 16],
            rip: 0x1000,
            rflags: 2,
            segs,
            cr0,
            cr4: 1 << 9,
            efer,
            cpl: 0,
            xmm: [[0; 16]; 16],
            ram: vec![0; RAM_SIZE],
            mmio: (0..MMIO_LEN)
                .map(|i| (i as u8).wrapping_mul(7).wrapping_add(1))
                .collect(),
            not_present: HashSet::new(),
            read_only: HashSet::new(),
            in_kernel: false,
            log: Vec::new(),
            port_counter: 0,
            exits: 0,
        };
        // TSS I/O map base at 0x68: bitmap at 0x8068, all ports allowed.
        cpu.ram[0x8066] = 0x68;
        cpu
    }

    /// Places code at RIP.
    pub fn code(&mut self, bytes: &[u8]) {
        let at = self.rip as usize + self.segs[Seg::Cs as usize].base as usize;
        self.ram[at..at + bytes.len()].copy_from_slice(bytes);
    }

    pub fn mmio_u64(&self, off: u64) -> u64 {
        u64::from_le_bytes(
            self.mmio[off as usize..off as usize + 8]
                .try_into()
                .unwrap(),
        )
    }

    pub fn ram_u64(&self, at: u64) -> u64 {
        u64::from_le_bytes(self.ram[at as usize..at as usize + 8].try_into().unwrap())
    }

    fn translate(&self, la: u64, write: bool, fetch: bool) -> Result<Option<u64>, PageFault> {
        let page = la & !0xfff;
        let mut ec = 0u32;
        if write {
            ec |= 2;
        }
        if self.cpl == 3 {
            ec |= 4;
        }
        if fetch {
            ec |= 16;
        }
        if self.not_present.contains(&page) {
            return Err(PageFault {
                error_code: ec,
                address: la,
            });
        }
        if write && self.read_only.contains(&page) {
            return Err(PageFault {
                error_code: ec | 1,
                address: la,
            });
        }
        if (MMIO..MMIO + MMIO_LEN).contains(&la) {
            return Ok(Some(la));
        }
        assert!(
            (la as usize) < RAM_SIZE,
            "test RAM access out of range: {la:#x}"
        );
        Ok(None)
    }

    fn mmio_off(gpa: u64, len: usize) -> usize {
        assert!(
            gpa >= MMIO && gpa + len as u64 <= MMIO + MMIO_LEN,
            "MMIO {gpa:#x}+{len}"
        );
        (gpa - MMIO) as usize
    }

    fn dev_read(&mut self, gpa: u64, buf: &mut [u8]) {
        let off = Self::mmio_off(gpa, buf.len());
        buf.copy_from_slice(&self.mmio[off..off + buf.len()]);
        self.log.push(Access_::MmioRead(gpa, buf.to_vec()));
    }

    fn dev_write(&mut self, gpa: u64, data: &[u8]) {
        let off = Self::mmio_off(gpa, data.len());
        self.mmio[off..off + data.len()].copy_from_slice(data);
        self.log.push(Access_::MmioWrite(gpa, data.to_vec()));
    }

    fn port_in(&mut self, port: u16, size: u8, buf: &mut [u8]) {
        for b in buf.iter_mut() {
            *b = self.port_counter;
            self.port_counter = self.port_counter.wrapping_add(1);
        }
        self.log.push(Access_::PioIn(
            port,
            size,
            (buf.len() / size as usize) as u32,
        ));
    }
}

impl Cpu for TestCpu {
    fn gpr(&self, n: usize) -> u64 {
        self.gpr[n]
    }
    fn set_gpr(&mut self, n: usize, value: u64) {
        self.gpr[n] = value;
    }
    fn rip(&self) -> u64 {
        self.rip
    }
    fn set_rip(&mut self, value: u64) {
        self.rip = value;
    }
    fn rflags(&self) -> u64 {
        self.rflags
    }
    fn set_rflags(&mut self, value: u64) {
        self.rflags = value;
    }
    fn segment(&self, seg: Seg) -> Segment {
        self.segs[seg as usize]
    }
    fn cr0(&self) -> u64 {
        self.cr0
    }
    fn cr4(&self) -> u64 {
        self.cr4
    }
    fn efer(&self) -> u64 {
        self.efer
    }
    fn cpl(&self) -> u8 {
        self.cpl
    }
    fn xmm(&self, n: usize) -> [u8; 16] {
        self.xmm[n]
    }
    fn set_xmm(&mut self, n: usize, value: [u8; 16]) {
        self.xmm[n] = value;
    }
    fn read_linear(&mut self, la: u64, buf: &mut [u8], access: Access) -> Result<Mem, PageFault> {
        assert!(
            buf.is_empty() || (la & 0xfff) + buf.len() as u64 <= 0x1000,
            "read crosses a page"
        );
        let write = access == Access::ReadForWrite;
        match self.translate(la, write, access == Access::Fetch)? {
            Some(gpa) => Ok(Mem::Mmio(gpa)),
            None => {
                buf.copy_from_slice(&self.ram[la as usize..la as usize + buf.len()]);
                Ok(Mem::Ram)
            }
        }
    }
    fn write_linear(&mut self, la: u64, data: &[u8]) -> Result<Mem, PageFault> {
        assert!(
            data.is_empty() || (la & 0xfff) + data.len() as u64 <= 0x1000,
            "write crosses a page"
        );
        match self.translate(la, true, false)? {
            Some(gpa) => Ok(Mem::Mmio(gpa)),
            None => {
                self.ram[la as usize..la as usize + data.len()].copy_from_slice(data);
                Ok(Mem::Ram)
            }
        }
    }
    fn mmio_read(&mut self, gpa: u64, buf: &mut [u8]) -> bool {
        assert!((1..=8).contains(&buf.len()));
        if self.in_kernel {
            self.dev_read(gpa, buf);
        }
        self.in_kernel
    }
    fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> bool {
        assert!((1..=8).contains(&data.len()));
        if self.in_kernel {
            self.dev_write(gpa, data);
        }
        self.in_kernel
    }
    fn pio_in(&mut self, port: u16, size: u8, buf: &mut [u8]) -> bool {
        if self.in_kernel {
            self.port_in(port, size, buf);
        }
        self.in_kernel
    }
    fn pio_out(&mut self, port: u16, size: u8, data: &[u8]) -> bool {
        if self.in_kernel {
            self.log.push(Access_::PioOut(port, size, data.to_vec()));
        }
        self.in_kernel
    }
}

/// Runs one instruction to completion the way the core and userspace would: every userspace
/// exit is served by the device model, then `step` is called again.
pub fn run(emu: &mut Emulator, cpu: &mut TestCpu) -> Outcome {
    for _ in 0..10_000 {
        match emu.step(cpu) {
            Outcome::NeedsUserspace(exit) => {
                cpu.exits += 1;
                match exit {
                    Exit::MmioRead { gpa, len } => {
                        let mut b = vec![0; len as usize];
                        cpu.dev_read(gpa, &mut b);
                        assert!(emu.complete_read(&b));
                    }
                    Exit::MmioWrite { gpa, len, data } => cpu.dev_write(gpa, &data[..len as usize]),
                    Exit::PioIn { port, size, count } => {
                        let mut b = vec![0; size as usize * count as usize];
                        cpu.port_in(port, size, &mut b);
                        assert!(emu.complete_read(&b));
                    }
                    Exit::PioOut { port, size, count } => {
                        let data = emu.pio_data().to_vec();
                        assert_eq!(data.len(), size as usize * count as usize);
                        cpu.log.push(Access_::PioOut(port, size, data));
                    }
                }
            }
            other => return other,
        }
    }
    panic!("instruction never completed");
}

/// Runs until RIP leaves `[start, end)` (REP instructions may take several `Done`s).
pub fn run_until(emu: &mut Emulator, cpu: &mut TestCpu, end: u64) -> Outcome {
    for _ in 0..100_000 {
        let o = run(emu, cpu);
        if o != Outcome::Done || cpu.rip >= end {
            return o;
        }
    }
    panic!("REP never finished");
}
