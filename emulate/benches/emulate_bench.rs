//! Benchmark (not a test): ns per decode+execute of a 4-byte MOV to MMIO and of a REP MOVSB batch,
//! beside iced-x86's decode-only time for the same bytes. Run: `cargo bench -p emulate`.

use emulate::decode::{decode, CodeSize};
use emulate::{Access, Cpu, Emulator, Exit, Mem, Outcome, PageFault, Seg, Segment};
use iced_x86::{Decoder, DecoderOptions, Instruction};
use std::hint::black_box;
use std::time::Instant;

const MMIO: u64 = 0x10000;

/// A lean vCPU: 64 KiB identity-mapped RAM, one MMIO page handled "in the kernel" unless
/// `exit_to_user` is set.
struct BenchCpu {
    gpr: [u64; 16],
    rip: u64,
    rflags: u64,
    cs: Segment,
    data: Segment,
    ram: Vec<u8>,
    mmio: [u8; 4096],
    exit_to_user: bool,
}

impl Cpu for BenchCpu {
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
        if s == Seg::Cs {
            self.cs
        } else {
            self.data
        }
    }
    fn cr0(&self) -> u64 {
        0x8000_0001
    }
    fn cr4(&self) -> u64 {
        1 << 9
    }
    fn efer(&self) -> u64 {
        0x500
    }
    fn cpl(&self) -> u8 {
        0
    }
    fn xmm(&self, _n: usize) -> [u8; 16] {
        [0; 16]
    }
    fn set_xmm(&mut self, _n: usize, _v: [u8; 16]) {}
    fn read_linear(&mut self, la: u64, buf: &mut [u8], _a: Access) -> Result<Mem, PageFault> {
        if la & !0xfff == MMIO {
            return Ok(Mem::Mmio(la));
        }
        let at = la as usize;
        buf.copy_from_slice(&self.ram[at..at + buf.len()]);
        Ok(Mem::Ram)
    }
    fn write_linear(&mut self, la: u64, data: &[u8]) -> Result<Mem, PageFault> {
        if la & !0xfff == MMIO {
            return Ok(Mem::Mmio(la));
        }
        let at = la as usize;
        self.ram[at..at + data.len()].copy_from_slice(data);
        Ok(Mem::Ram)
    }
    fn mmio_read(&mut self, gpa: u64, buf: &mut [u8]) -> bool {
        let at = (gpa - MMIO) as usize;
        buf.copy_from_slice(&self.mmio[at..at + buf.len()]);
        !self.exit_to_user
    }
    fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> bool {
        let at = (gpa - MMIO) as usize;
        self.mmio[at..at + data.len()].copy_from_slice(data);
        !self.exit_to_user
    }
    fn pio_in(&mut self, _p: u16, _s: u8, _b: &mut [u8]) -> bool {
        true
    }
    fn pio_out(&mut self, _p: u16, _s: u8, _d: &[u8]) -> bool {
        true
    }
}

fn cpu(code: &[u8]) -> BenchCpu {
    let flat = Segment {
        selector: 0x10,
        base: 0,
        limit: 0xffff_ffff,
        typ: 3,
        s: true,
        dpl: 0,
        present: true,
        avl: false,
        l: false,
        db: true,
        g: true,
        unusable: false,
    };
    let mut c = BenchCpu {
        gpr: [0; 16],
        rip: 0x1000,
        rflags: 2,
        cs: Segment {
            typ: 0xb,
            l: true,
            db: false,
            ..flat
        },
        data: flat,
        ram: vec![0; 0x10000],
        mmio: [0; 4096],
        exit_to_user: false,
    };
    c.ram[0x1000..0x1000 + code.len()].copy_from_slice(code);
    c
}

fn time<F: FnMut()>(iters: u32, mut f: F) -> f64 {
    for _ in 0..iters / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(iters)
}

fn iced_decode_ns(code: &[u8], iters: u32) -> f64 {
    let mut dec = Decoder::with_ip(64, code, 0x1000, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    time(iters, || {
        dec.set_position(0).unwrap();
        dec.set_ip(0x1000);
        dec.decode_out(&mut insn);
        black_box(&insn);
    })
}

fn main() {
    let iters = 2_000_000;
    // mov [r13+0x14], eax: a 4-byte instruction doing a 4-byte MMIO write.
    let mov: &[u8] = &[0x41, 0x89, 0x45, 0x14];
    let mut c = cpu(mov);
    c.gpr[13] = MMIO + 0x100;
    let mut emu = Emulator::new();
    let ours_mov = time(iters, || {
        c.rip = 0x1000;
        c.gpr[0] = c.gpr[0].wrapping_add(1);
        let o = emu.step(black_box(&mut c));
        debug_assert_eq!(o, Outcome::Done);
        black_box(o);
    });
    assert_eq!(c.mmio[0x114..0x118], (c.gpr[0] as u32).to_le_bytes());
    // The same through a userspace exit: step -> MmioWrite -> step -> Done.
    let mut cu = cpu(mov);
    cu.gpr[13] = MMIO + 0x100;
    cu.exit_to_user = true;
    let ours_mov_exit = time(iters, || {
        cu.rip = 0x1000;
        let o = emu.step(black_box(&mut cu));
        assert!(matches!(o, Outcome::NeedsUserspace(Exit::MmioWrite { .. })));
        black_box(emu.step(&mut cu));
    });
    let our_decode_mov = time(iters, || {
        black_box(decode(black_box(mov), CodeSize::Bits64).ok());
    });
    let iced_mov = iced_decode_ns(mov, iters);

    // rep movsb of 256 bytes RAM -> MMIO (in-kernel device): one step call.
    let rep: &[u8] = &[0xf3, 0xa4];
    let n = 256u64;
    let mut c = cpu(rep);
    let rep_iters = 100_000;
    let ours_rep = time(rep_iters, || {
        c.rip = 0x1000;
        c.gpr[1] = n;
        c.gpr[6] = 0x4000;
        c.gpr[7] = MMIO + 0x200;
        let o = emu.step(black_box(&mut c));
        debug_assert_eq!(o, Outcome::Done);
        black_box(o);
    });
    assert_eq!(c.gpr[1], 0);
    assert_eq!(c.rip, 0x1002);
    let iced_rep = iced_decode_ns(rep, iters);

    println!("emulate benchmark (ns per operation; ratio = ours / iced-x86 decode-only)");
    println!(
        "  MOV [r13+0x14],eax to MMIO (in-kernel):   ours decode+execute {ours_mov:8.1} ns | iced decode {iced_mov:6.1} ns | ratio {:6.1}",
        ours_mov / iced_mov
    );
    println!(
        "  same, with the userspace write exit:       ours 2 steps        {ours_mov_exit:8.1} ns | iced decode {iced_mov:6.1} ns | ratio {:6.1}",
        ours_mov_exit / iced_mov
    );
    println!(
        "  MOV decode only:                           ours decode          {our_decode_mov:8.1} ns | iced decode {iced_mov:6.1} ns | ratio {:6.1}",
        our_decode_mov / iced_mov
    );
    println!(
        "  REP MOVSB x{n} RAM->MMIO (one batch):     ours decode+execute {ours_rep:8.1} ns ({:.1} ns/byte) | iced decode {iced_rep:6.1} ns | ratio {:6.1}",
        ours_rep / n as f64,
        ours_rep / iced_rep
    );
}
