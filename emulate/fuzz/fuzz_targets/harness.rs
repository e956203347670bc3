//! The decode+execute harness shared by the fuzz target and `tests/random_execute.rs`: a guest
//! whose memory, MMIO map, faults and device answers all come from the input bytes. The emulator
//! must never panic and must do bounded work per `step`.
#![allow(dead_code)]

use emulate::{Access, Cpu, Emulator, Exit, Mem, Outcome, PageFault, Seg, Segment};

const MEM: usize = 1 << 16;

struct FuzzCpu {
    gpr: [u64; 16],
    rip: u64,
    rflags: u64,
    segs: [Segment; 7],
    cr0: u64,
    cr4: u64,
    efer: u64,
    cpl: u8,
    xmm: [[u8; 16]; 16],
    mem: Vec<u8>,
    /// Bit n: page n (of the 16 pages in the 64 KiB window, by linear address bits 12..16) is MMIO.
    mmio_pages: u16,
    /// Bit n: page n faults.
    fault_pages: u16,
    in_kernel: bool,
    entropy: Vec<u8>,
    pos: usize,
    /// Memory/device callbacks made during the current `step`.
    calls: u32,
}

impl FuzzCpu {
    fn byte(&mut self) -> u8 {
        let b = self.entropy.get(self.pos).copied().unwrap_or(0x5a);
        self.pos = self.pos.wrapping_add(1);
        b
    }
    fn page(la: u64) -> u16 {
        1 << ((la >> 12) & 15)
    }
    fn check(&mut self, la: u64, fetch: bool) -> Result<Option<u64>, PageFault> {
        self.calls += 1;
        if self.fault_pages & Self::page(la) != 0 {
            return Err(PageFault {
                error_code: if fetch { 0x10 } else { 2 },
                address: la,
            });
        }
        if self.mmio_pages & Self::page(la) != 0 {
            return Ok(Some(la & 0xffff_ffff));
        }
        Ok(None)
    }
}

impl Cpu for FuzzCpu {
    fn gpr(&self, n: usize) -> u64 {
        self.gpr[n]
    }
    fn set_gpr(&mut self, n: usize, v: u64) {
        self.gpr[n] = v
    }
    fn rip(&self) -> u64 {
        self.rip
    }
    fn set_rip(&mut self, v: u64) {
        self.rip = v
    }
    fn rflags(&self) -> u64 {
        self.rflags
    }
    fn set_rflags(&mut self, v: u64) {
        self.rflags = v
    }
    fn segment(&self, s: Seg) -> Segment {
        self.segs[s as usize]
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
    fn set_xmm(&mut self, n: usize, v: [u8; 16]) {
        self.xmm[n] = v
    }
    fn read_linear(&mut self, la: u64, buf: &mut [u8], a: Access) -> Result<Mem, PageFault> {
        assert!(buf.len() <= 4096 && (buf.is_empty() || (la & 0xfff) as usize + buf.len() <= 4096));
        match self.check(la, a == Access::Fetch)? {
            Some(gpa) => Ok(Mem::Mmio(gpa)),
            None => {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = self.mem[(la as usize).wrapping_add(i) % MEM];
                }
                Ok(Mem::Ram)
            }
        }
    }
    fn write_linear(&mut self, la: u64, data: &[u8]) -> Result<Mem, PageFault> {
        assert!(
            data.len() <= 4096 && (data.is_empty() || (la & 0xfff) as usize + data.len() <= 4096)
        );
        match self.check(la, false)? {
            Some(gpa) => Ok(Mem::Mmio(gpa)),
            None => {
                for (i, b) in data.iter().enumerate() {
                    self.mem[(la as usize).wrapping_add(i) % MEM] = *b;
                }
                Ok(Mem::Ram)
            }
        }
    }
    fn mmio_read(&mut self, _gpa: u64, buf: &mut [u8]) -> bool {
        self.calls += 1;
        assert!((1..=8).contains(&buf.len()));
        if self.in_kernel {
            for b in buf.iter_mut() {
                *b = self.byte();
            }
        }
        self.in_kernel
    }
    fn mmio_write(&mut self, _gpa: u64, data: &[u8]) -> bool {
        self.calls += 1;
        assert!((1..=8).contains(&data.len()));
        self.in_kernel
    }
    fn pio_in(&mut self, _port: u16, size: u8, buf: &mut [u8]) -> bool {
        self.calls += 1;
        assert!(
            matches!(size, 1 | 2 | 4)
                && buf.len().is_multiple_of(size as usize)
                && buf.len() <= 1024
        );
        if self.in_kernel {
            for b in buf.iter_mut() {
                *b = self.byte();
            }
        }
        self.in_kernel
    }
    fn pio_out(&mut self, _port: u16, size: u8, data: &[u8]) -> bool {
        self.calls += 1;
        assert!(
            matches!(size, 1 | 2 | 4)
                && data.len().is_multiple_of(size as usize)
                && data.len() <= 1024
        );
        self.in_kernel
    }
}

fn seg(b: &[u8]) -> Segment {
    let g = |i: usize| b.get(i).copied().unwrap_or(0);
    Segment {
        selector: u16::from_le_bytes([g(0), g(1)]),
        base: u64::from(g(2)) << 12 | u64::from(g(3)) << 4,
        limit: if g(4) & 1 != 0 {
            0xffff_ffff
        } else {
            u32::from_le_bytes([g(5), g(6), g(4) >> 4, 0])
        },
        typ: g(7) & 15,
        s: true,
        dpl: g(7) >> 4 & 3,
        present: true,
        avl: false,
        l: g(7) & 0x40 != 0,
        db: g(7) & 0x80 != 0,
        g: false,
        unusable: g(4) & 2 != 0,
    }
}

/// Runs up to four instructions described by `data` (64 header bytes, then code/memory bytes).
pub fn run_one(data: &[u8]) {
    if data.len() <= 64 {
        return;
    }
    let (hdr, rest) = data.split_at(64);
    let mode = hdr[0] & 3;
    let mut segs = [Segment::default(); 7];
    for (i, s) in segs.iter_mut().enumerate() {
        *s = seg(&hdr[8 + i * 8..]);
    }
    let mut cpu = FuzzCpu {
        gpr: core::array::from_fn(|i| {
            let b = rest.get(i * 2..i * 2 + 2).unwrap_or(&[0, 0]);
            let v = u64::from(u16::from_le_bytes([b[0], b[1]]));
            if hdr[1] & 1 != 0 {
                v.wrapping_neg()
            } else {
                v
            }
        }),
        rip: u64::from(hdr[2]) << 8,
        rflags: 2
            | (u64::from(hdr[3]) & 0xd5)
            | (u64::from(hdr[4] & 0x7) << 10)
            | (u64::from(hdr[4] >> 3 & 1) << 17)
            | (u64::from(hdr[4] >> 4 & 3) << 12)
            | (u64::from(hdr[4] >> 6 & 1) << 18),
        segs,
        cr0: match mode {
            0 => 0,
            _ => 1,
        } | (u64::from(hdr[5] & 0xe))
            | (u64::from(hdr[5] >> 4 & 1) << 18),
        cr4: u64::from(hdr[5] >> 5 & 1) << 9,
        efer: if mode == 3 { 0x500 } else { 0 },
        cpl: hdr[6] & 3,
        xmm: [[0x11; 16]; 16],
        mem: vec![0; MEM],
        mmio_pages: u16::from_le_bytes([hdr[62], hdr[63]]) & !1,
        fault_pages: u16::from(hdr[7]) << 8,
        in_kernel: hdr[1] & 2 != 0,
        entropy: rest.to_vec(),
        pos: 0,
        calls: 0,
    };
    if mode == 3 {
        cpu.segs[Seg::Cs as usize].l = true;
        cpu.segs[Seg::Cs as usize].db = false;
    }
    // Guest memory: the input repeated.
    for chunk in cpu.mem.chunks_mut(rest.len()) {
        chunk.copy_from_slice(&rest[..chunk.len()]);
    }
    let mut emu = Emulator::new();
    // Run a few instructions (a long REP to MMIO may need many exits: stop after a while).
    // Each `step` must do bounded work: at most a REP budget's worth of callbacks.
    for _ in 0..4 {
        for _ in 0..2_000 {
            cpu.calls = 0;
            let outcome = emu.step(&mut cpu);
            assert!(
                cpu.calls <= 10 * 1024 + 64,
                "unbounded work in one step: {} callbacks",
                cpu.calls
            );
            match outcome {
                Outcome::NeedsUserspace(exit) => match exit {
                    Exit::MmioRead { len, .. } => {
                        let d: Vec<u8> = (0..len).map(|_| cpu.byte()).collect();
                        assert!(emu.complete_read(&d));
                    }
                    Exit::PioIn { size, count, .. } => {
                        assert!(u32::from(size) * count <= 1024);
                        let d: Vec<u8> = (0..u32::from(size) * count).map(|_| cpu.byte()).collect();
                        assert!(emu.complete_read(&d));
                    }
                    Exit::MmioWrite { len, .. } => assert!((1..=8).contains(&len)),
                    Exit::PioOut { size, count, .. } => {
                        assert_eq!(emu.pio_data().len(), size as usize * count as usize)
                    }
                },
                Outcome::Done => break,
                Outcome::Exception(_) | Outcome::Unsupported { .. } => return,
            }
        }
        if emu.in_progress() {
            return;
        }
    }
}
