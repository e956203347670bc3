//! Proof 3: guest-level cases in the style of NetBSD's h_mem_assist / h_io_assist. Each case puts
//! an instruction at RIP, points it at an MMIO page (or a port) in real, 16-bit protected, 32-bit
//! and 64-bit mode, runs it through the exit/resume protocol with the device model of
//! `common`, and checks registers, memory, the device's access log and faults.

mod common;
use common::{run, run_until, Access_ as A, Mode, TestCpu, MMIO};
use emulate::flags::{CF, DF, OF, SF, ZF};
use emulate::{Emulator, Exception, Exit, Outcome, Seg};

const MODES: [Mode; 4] = [Mode::Real, Mode::Prot16, Mode::Prot32, Mode::Long64];

fn is16(mode: Mode) -> bool {
    matches!(mode, Mode::Real | Mode::Prot16)
}

/// A vCPU whose BX/EBX/RBX + `off` reaches MMIO + `off` through DS.
fn setup(mode: Mode, off: u64) -> TestCpu {
    let mut cpu = TestCpu::new(mode);
    match mode {
        Mode::Real => {
            let ds = &mut cpu.segs[Seg::Ds as usize];
            ds.selector = 0x1fff;
            ds.base = 0x1fff0;
            cpu.gpr[3] = 0x10 + off;
        }
        Mode::Prot16 => {
            cpu.segs[Seg::Ds as usize].base = MMIO;
            cpu.segs[Seg::Es as usize].base = MMIO;
            cpu.gpr[3] = off;
        }
        _ => cpu.gpr[3] = MMIO + off,
    }
    cpu
}

/// ModRM r/m for [bx] / [ebx] / [rbx].
fn rm_bx(mode: Mode) -> u8 {
    if is16(mode) {
        7
    } else {
        3
    }
}

/// Prefixes selecting operand size `size` in `mode`.
fn osz(mode: Mode, size: u8) -> Vec<u8> {
    match (is16(mode), size) {
        (true, 4) | (false, 2) => vec![0x66],
        (false, 8) => vec![0x48],
        _ => vec![],
    }
}

fn sizes(mode: Mode) -> Vec<u8> {
    if mode == Mode::Long64 {
        vec![1, 2, 4, 8]
    } else {
        vec![1, 2, 4]
    }
}

fn exec(cpu: &mut TestCpu, code: &[u8]) -> Outcome {
    cpu.code(code);
    let mut emu = Emulator::new();
    run(&mut emu, cpu)
}

fn mask(size: u8) -> u64 {
    if size == 8 {
        u64::MAX
    } else {
        (1 << (size * 8)) - 1
    }
}

#[test]
fn mov_store_and_load_every_size_every_mode() {
    for mode in MODES {
        for size in sizes(mode) {
            // mov [bx], cl/cx/ecx/rcx
            let mut cpu = setup(mode, 0x40);
            cpu.gpr[1] = 0x1122_3344_5566_7788;
            let mut code = osz(mode, size);
            code.extend([if size == 1 { 0x88 } else { 0x89 }, 0x08 | rm_bx(mode)]);
            assert_eq!(exec(&mut cpu, &code), Outcome::Done, "{mode:?} {size}");
            assert_eq!(
                cpu.mmio_u64(0x40) & mask(size),
                0x1122_3344_5566_7788 & mask(size)
            );
            assert_eq!(
                cpu.log,
                vec![A::MmioWrite(
                    MMIO + 0x40,
                    0x1122_3344_5566_7788u64.to_le_bytes()[..size as usize].to_vec()
                )]
            );
            assert_eq!(cpu.rip, 0x1000 + code.len() as u64);
            assert_eq!(cpu.exits, 1);

            // mov dl/dx/edx/rdx, [bx]
            let mut cpu = setup(mode, 0x80);
            cpu.gpr[2] = 0xffff_ffff_ffff_ffff;
            let mut code = osz(mode, size);
            code.extend([if size == 1 { 0x8a } else { 0x8b }, 0x10 | rm_bx(mode)]);
            assert_eq!(exec(&mut cpu, &code), Outcome::Done);
            let v = cpu.mmio_u64(0x80) & mask(size);
            let expect = match size {
                4 => v, // 32-bit writes zero-extend (as Linux's emulator does in every mode)
                8 => v,
                _ => !mask(size) | v,
            };
            assert_eq!(cpu.gpr[2], expect, "{mode:?} load {size}");
            assert_eq!(cpu.log.len(), 1);
        }
    }
}

#[test]
fn mov_moffs_and_immediate() {
    // 64-bit: mov rax, [moffs64] ; 32-bit: mov [moffs32], eax ; 16-bit: mov al, [moffs16].
    let mut cpu = TestCpu::new(Mode::Long64);
    let mut code = vec![0x48, 0xa1];
    code.extend((MMIO + 0x10).to_le_bytes());
    assert_eq!(exec(&mut cpu, &code), Outcome::Done);
    assert_eq!(cpu.gpr[0], cpu.mmio_u64(0x10));
    assert_eq!(cpu.rip, 0x100a);

    let mut cpu = TestCpu::new(Mode::Prot32);
    cpu.gpr[0] = 0xdead_beef;
    let mut code = vec![0xa3];
    code.extend(((MMIO + 0x20) as u32).to_le_bytes());
    assert_eq!(exec(&mut cpu, &code), Outcome::Done);
    assert_eq!(cpu.mmio_u64(0x20) as u32, 0xdead_beef);

    let mut cpu = setup(Mode::Prot16, 0);
    assert_eq!(exec(&mut cpu, &[0xa0, 0x34, 0x01]), Outcome::Done);
    assert_eq!(cpu.gpr[0] & 0xff, u64::from(cpu.mmio[0x134]));

    // mov dword [ebx+4], imm32 / mov word [bx], imm16 / mov qword [rbx], simm32
    let mut cpu = setup(Mode::Prot32, 0x200);
    assert_eq!(
        exec(&mut cpu, &[0xc7, 0x43, 0x04, 0x78, 0x56, 0x34, 0x12]),
        Outcome::Done
    );
    assert_eq!(cpu.mmio_u64(0x204) as u32, 0x1234_5678);
    let mut cpu = setup(Mode::Real, 0x200);
    assert_eq!(exec(&mut cpu, &[0xc7, 0x07, 0xcd, 0xab]), Outcome::Done);
    assert_eq!(cpu.mmio_u64(0x200) as u16, 0xabcd);
    let mut cpu = setup(Mode::Long64, 0x200);
    assert_eq!(
        exec(&mut cpu, &[0x48, 0xc7, 0x03, 0x00, 0x00, 0x00, 0x80]),
        Outcome::Done
    );
    assert_eq!(cpu.mmio_u64(0x200), 0xffff_ffff_8000_0000);
}

#[test]
fn movzx_movsx_movsxd_movbe() {
    for mode in MODES {
        let mut cpu = setup(mode, 0x300);
        cpu.mmio[0x300] = 0x80;
        cpu.mmio[0x301] = 0xff;
        // movzx ax/eax, byte [bx]; movsx cx/ecx, word [bx]
        let code_zx = [
            &osz(mode, if is16(mode) { 2 } else { 4 })[..],
            &[0x0f, 0xb6, rm_bx(mode)],
        ]
        .concat();
        assert_eq!(exec(&mut cpu, &code_zx), Outcome::Done);
        assert_eq!(cpu.gpr[0] & 0xffff, 0x80, "{mode:?}");
        let mut cpu2 = setup(mode, 0x300);
        cpu2.mmio[0x300] = 0x80;
        cpu2.mmio[0x301] = 0xff;
        let code_sx = [0x0f, 0xbf, 0x08 | rm_bx(mode)];
        assert_eq!(exec(&mut cpu2, &code_sx), Outcome::Done);
        let expect = if is16(mode) { 0xff80 } else { 0xffff_ff80 };
        assert_eq!(cpu2.gpr[1], expect, "{mode:?}");
    }
    // movsxd rax, dword [rbx]
    let mut cpu = setup(Mode::Long64, 0x400);
    cpu.mmio[0x400..0x404].copy_from_slice(&0x8000_0001u32.to_le_bytes());
    assert_eq!(exec(&mut cpu, &[0x48, 0x63, 0x03]), Outcome::Done);
    assert_eq!(cpu.gpr[0], 0xffff_ffff_8000_0001);
    // movbe [rbx], ecx ; movbe eax, [rbx]
    let mut cpu = setup(Mode::Long64, 0x410);
    cpu.gpr[1] = 0x1122_3344;
    assert_eq!(exec(&mut cpu, &[0x0f, 0x38, 0xf1, 0x0b]), Outcome::Done);
    assert_eq!(&cpu.mmio[0x410..0x414], &[0x11, 0x22, 0x33, 0x44]);
    let mut emu = Emulator::new();
    cpu.rip = 0x1000;
    cpu.code(&[0x0f, 0x38, 0xf0, 0x03]);
    assert_eq!(run(&mut emu, &mut cpu), Outcome::Done);
    assert_eq!(cpu.gpr[0], 0x1122_3344);
}

#[test]
fn alu_read_modify_write_on_mmio() {
    for mode in MODES {
        for size in sizes(mode) {
            // or [bx], imm8 (83 /1 ib, sign-extended; 80 /1 for bytes)
            let mut cpu = setup(mode, 0x500);
            cpu.mmio[0x500..0x508].fill(0);
            let mut code = osz(mode, size);
            code.extend([
                if size == 1 { 0x80 } else { 0x83 },
                0x08 | rm_bx(mode),
                0x81,
            ]);
            assert_eq!(exec(&mut cpu, &code), Outcome::Done);
            let expect = if size == 1 { 0x81 } else { mask(size) & !0x7e };
            assert_eq!(
                cpu.mmio_u64(0x500) & mask(size),
                expect,
                "{mode:?} or size {size}"
            );
            assert_eq!(cpu.rflags & (SF | ZF | CF | OF), SF);
            // Exactly one read then one write: no double device access on re-execution.
            assert!(
                matches!(&cpu.log[..], [A::MmioRead(..), A::MmioWrite(..)]),
                "{:?}",
                cpu.log
            );
            assert_eq!(cpu.exits, 2);
        }
    }
}

#[test]
fn cmp_sub_test_flags_on_mmio() {
    let mut cpu = setup(Mode::Prot32, 0x510);
    cpu.mmio[0x510] = 5;
    cpu.gpr[0] = 6;
    assert_eq!(exec(&mut cpu, &[0x38, 0x03]), Outcome::Done); // cmp [ebx], al
    assert_eq!(cpu.rflags & (CF | ZF | SF | OF), CF | SF);
    assert_eq!(cpu.mmio[0x510], 5);
    assert_eq!(cpu.log.len(), 1);
    let mut cpu = setup(Mode::Long64, 0x520);
    cpu.mmio[0x520..0x528].copy_from_slice(&0x8000_0000_0000_0000u64.to_le_bytes());
    cpu.gpr[1] = 1;
    assert_eq!(exec(&mut cpu, &[0x48, 0x29, 0x0b]), Outcome::Done); // sub [rbx], rcx
    assert_eq!(cpu.mmio_u64(0x520), 0x7fff_ffff_ffff_ffff);
    assert_eq!(cpu.rflags & (CF | ZF | SF | OF), OF);
    let mut cpu = setup(Mode::Real, 0x530);
    cpu.mmio[0x530] = 0xf0;
    assert_eq!(exec(&mut cpu, &[0xf6, 0x07, 0x0f]), Outcome::Done); // test byte [bx], 0x0f
    assert_eq!(cpu.rflags & ZF, ZF);
}

#[test]
fn exchange_family_on_mmio() {
    // xchg [rbx], eax
    let mut cpu = setup(Mode::Long64, 0x600);
    cpu.mmio[0x600..0x604].copy_from_slice(&7u32.to_le_bytes());
    cpu.gpr[0] = 0xffff_ffff_0000_0009;
    assert_eq!(exec(&mut cpu, &[0x87, 0x03]), Outcome::Done);
    assert_eq!(cpu.gpr[0], 7);
    assert_eq!(cpu.mmio_u64(0x600) as u32, 9);
    // lock cmpxchg [ebx], ecx (equal) in 32-bit mode
    let mut cpu = setup(Mode::Prot32, 0x610);
    cpu.mmio[0x610..0x614].copy_from_slice(&42u32.to_le_bytes());
    cpu.gpr[0] = 42;
    cpu.gpr[1] = 99;
    assert_eq!(exec(&mut cpu, &[0xf0, 0x0f, 0xb1, 0x0b]), Outcome::Done);
    assert_eq!(cpu.mmio_u64(0x610) as u32, 99);
    assert_eq!(cpu.rflags & ZF, ZF);
    // xadd word [bx], cx in real mode
    let mut cpu = setup(Mode::Real, 0x620);
    cpu.mmio[0x620..0x622].copy_from_slice(&0xfffeu16.to_le_bytes());
    cpu.gpr[1] = 3;
    assert_eq!(exec(&mut cpu, &[0x0f, 0xc1, 0x0f]), Outcome::Done);
    assert_eq!(cpu.mmio_u64(0x620) as u16, 1);
    assert_eq!(cpu.gpr[1], 0xfffe);
    assert_eq!(cpu.rflags & CF, CF);
    // cmpxchg8b [ebx] unequal: EDX:EAX <- m64, memory written back unchanged
    let mut cpu = setup(Mode::Prot32, 0x630);
    let m = cpu.mmio_u64(0x630);
    assert_eq!(exec(&mut cpu, &[0x0f, 0xc7, 0x0b]), Outcome::Done);
    assert_eq!(cpu.gpr[0], m & 0xffff_ffff);
    assert_eq!(cpu.gpr[2], m >> 32);
    assert_eq!(cpu.rflags & ZF, 0);
    assert_eq!(cpu.mmio_u64(0x630), m);
    // cmpxchg16b [rbx] equal: 16 bytes = 2 MMIO reads and 2 MMIO writes of 8
    let mut cpu = setup(Mode::Long64, 0x640);
    cpu.gpr[0] = cpu.mmio_u64(0x640);
    cpu.gpr[2] = cpu.mmio_u64(0x648);
    cpu.gpr[3] = MMIO + 0x640;
    cpu.gpr[1] = 0x2222;
    let rbx = cpu.gpr[3];
    assert_eq!(exec(&mut cpu, &[0x48, 0x0f, 0xc7, 0x0b]), Outcome::Done);
    assert_eq!(cpu.mmio_u64(0x640), rbx);
    assert_eq!(cpu.mmio_u64(0x648), 0x2222);
    assert_eq!(cpu.rflags & ZF, ZF);
    assert_eq!(cpu.log.len(), 4);
    // misaligned cmpxchg16b: #GP(0)
    let mut cpu = setup(Mode::Long64, 0x648 + 4);
    assert_eq!(
        exec(&mut cpu, &[0x48, 0x0f, 0xc7, 0x0b]),
        Outcome::Exception(Exception::gp0())
    );
}

#[test]
fn setcc_push_pop_movnti_clflush() {
    // sete [rbx]
    let mut cpu = setup(Mode::Long64, 0x700);
    cpu.rflags |= ZF;
    assert_eq!(exec(&mut cpu, &[0x0f, 0x94, 0x03]), Outcome::Done);
    assert_eq!(cpu.mmio[0x700], 1);
    // push dword [ebx] in 32-bit mode
    let mut cpu = setup(Mode::Prot32, 0x710);
    cpu.gpr[4] = 0x9000;
    assert_eq!(exec(&mut cpu, &[0xff, 0x33]), Outcome::Done);
    assert_eq!(cpu.gpr[4], 0x8ffc);
    assert_eq!(cpu.ram_u64(0x8ffc) as u32, cpu.mmio_u64(0x710) as u32);
    // pop qword [rbx] in 64-bit mode
    let mut cpu = setup(Mode::Long64, 0x720);
    cpu.gpr[4] = 0x9000;
    cpu.ram[0x9000..0x9008].copy_from_slice(&0x0123_4567_89ab_cdefu64.to_le_bytes());
    assert_eq!(exec(&mut cpu, &[0x8f, 0x03]), Outcome::Done);
    assert_eq!(cpu.gpr[4], 0x9008);
    assert_eq!(cpu.mmio_u64(0x720), 0x0123_4567_89ab_cdef);
    // movnti [rbx], rax
    let mut cpu = setup(Mode::Long64, 0x730);
    cpu.gpr[0] = 0x5a5a_5a5a_5a5a_5a5a;
    assert_eq!(exec(&mut cpu, &[0x48, 0x0f, 0xc3, 0x03]), Outcome::Done);
    assert_eq!(cpu.mmio_u64(0x730), 0x5a5a_5a5a_5a5a_5a5a);
    // clflush [rbx]: no device access
    let mut cpu = setup(Mode::Long64, 0x740);
    assert_eq!(exec(&mut cpu, &[0x0f, 0xae, 0x3b]), Outcome::Done);
    assert!(cpu.log.is_empty());
    assert_eq!(cpu.rip, 0x1003);
}

#[test]
fn sse_moves_split_into_8_byte_accesses() {
    // movdqu [rbx], xmm1 -> two 8-byte MMIO writes
    let mut cpu = setup(Mode::Long64, 0x800);
    cpu.xmm[1] = core::array::from_fn(|i| i as u8 + 0xa0);
    assert_eq!(exec(&mut cpu, &[0xf3, 0x0f, 0x7f, 0x0b]), Outcome::Done);
    assert_eq!(&cpu.mmio[0x800..0x810], &cpu.xmm[1]);
    assert_eq!(cpu.log.len(), 2);
    assert_eq!(cpu.exits, 2);
    // movdqa xmm2, [ebx] in 32-bit mode
    let mut cpu = setup(Mode::Prot32, 0x810);
    assert_eq!(exec(&mut cpu, &[0x66, 0x0f, 0x6f, 0x13]), Outcome::Done);
    assert_eq!(&cpu.xmm[2][..], &cpu.mmio[0x810..0x820]);
    // movdqa misaligned: #GP(0); CR0.TS: #NM; no OSFXSR: #UD
    let mut cpu = setup(Mode::Long64, 0x808);
    assert_eq!(
        exec(&mut cpu, &[0x66, 0x0f, 0x6f, 0x13]),
        Outcome::Exception(Exception::gp0())
    );
    let mut cpu = setup(Mode::Long64, 0x800);
    cpu.cr0 |= 8;
    assert_eq!(
        exec(&mut cpu, &[0x66, 0x0f, 0x6f, 0x13]),
        Outcome::Exception(Exception::nm())
    );
    let mut cpu = setup(Mode::Long64, 0x800);
    cpu.cr4 = 0;
    assert_eq!(
        exec(&mut cpu, &[0x0f, 0x28, 0x13]),
        Outcome::Exception(Exception::ud())
    );
    // movd eax... movq xmm0, [rbx] zero-extends; movd [rbx], xmm0 writes 4 bytes
    let mut cpu = setup(Mode::Long64, 0x840);
    cpu.xmm[0] = [0xff; 16];
    assert_eq!(exec(&mut cpu, &[0xf3, 0x0f, 0x7e, 0x03]), Outcome::Done);
    assert_eq!(&cpu.xmm[0][..8], &cpu.mmio[0x840..0x848]);
    assert_eq!(&cpu.xmm[0][8..], &[0; 8]);
    let mut cpu = setup(Mode::Long64, 0x850);
    cpu.xmm[0] = [0x11; 16];
    assert_eq!(exec(&mut cpu, &[0x66, 0x0f, 0x7e, 0x03]), Outcome::Done);
    assert_eq!(cpu.log, vec![A::MmioWrite(MMIO + 0x850, vec![0x11; 4])]);
}

#[test]
fn rep_movs_stos_lods_in_every_mode_both_directions() {
    for mode in MODES {
        for df in [false, true] {
            // rep movsb: 10 bytes from RAM (DS:SI) to MMIO (ES:DI).
            let mut cpu = setup(mode, 0);
            let (src, dst) = if is16(mode) {
                // DS/ES bases: real mode DS = 0x1fff0 (MMIO - 0x10); use ES = DS there.
                cpu.segs[Seg::Es as usize] = cpu.segs[Seg::Ds as usize];
                let bias = if mode == Mode::Real { 0x10 } else { 0 };
                (bias + 0x1800u64, bias + 0x900u64) // SI in the second MMIO page? keep RAM below
            } else {
                (0x5000u64, MMIO + 0x900)
            };
            // For 16-bit modes the source is MMIO too (DS covers only the MMIO window region).
            let count = 10u64;
            let (s0, d0) = if df {
                (src + count - 1, dst + count - 1)
            } else {
                (src, dst)
            };
            cpu.gpr[6] = s0;
            cpu.gpr[7] = d0;
            cpu.gpr[1] = count;
            if df {
                cpu.rflags |= DF;
            }
            for i in 0..count {
                let b = 0x30 + i as u8;
                if is16(mode) {
                    let off = (src - if mode == Mode::Real { 0x10 } else { 0 } + i) as usize;
                    cpu.mmio[off] = b;
                } else {
                    cpu.ram[(src + i) as usize] = b;
                }
            }
            let code = [0xf3, 0xa4];
            cpu.code(&code);
            let mut emu = Emulator::new();
            assert_eq!(
                run_until(&mut emu, &mut cpu, 0x1002),
                Outcome::Done,
                "{mode:?}"
            );
            let doff = (dst
                - if is16(mode) {
                    if mode == Mode::Real {
                        0x10
                    } else {
                        0
                    }
                } else {
                    MMIO
                }) as usize;
            let got = &cpu.mmio[doff..doff + count as usize];
            let want: Vec<u8> = (0..count).map(|i| 0x30 + i as u8).collect();
            assert_eq!(got, &want[..], "{mode:?} df={df}");
            assert_eq!(cpu.gpr[1], 0);
            let (s1, d1) = if df {
                (src.wrapping_sub(1), dst.wrapping_sub(1))
            } else {
                (src + count, dst + count)
            };
            let am = if is16(mode) { 0xffff } else { u64::MAX };
            assert_eq!(cpu.gpr[6] & am, s1 & am);
            assert_eq!(cpu.gpr[7] & am, d1 & am);
            assert_eq!(cpu.rip, 0x1002);
        }
    }
    // rep stosd into MMIO (64-bit, 32-bit address size via 67)
    let mut cpu = setup(Mode::Long64, 0);
    cpu.gpr[7] = MMIO + 0xa00;
    cpu.gpr[1] = 4;
    cpu.gpr[0] = 0xcafe_f00d;
    cpu.code(&[0x67, 0xf3, 0xab]);
    let mut emu = Emulator::new();
    assert_eq!(run_until(&mut emu, &mut cpu, 0x1003), Outcome::Done);
    for i in 0..4 {
        assert_eq!(cpu.mmio_u64(0xa00 + 4 * i) as u32, 0xcafe_f00d);
    }
    assert_eq!(cpu.gpr[7], MMIO + 0xa10);
    // lodsw from MMIO (no REP)
    let mut cpu = setup(Mode::Prot32, 0);
    cpu.gpr[6] = MMIO + 0xb00;
    assert_eq!(exec(&mut cpu, &[0x66, 0xad]), Outcome::Done);
    assert_eq!(cpu.gpr[0] & 0xffff, cpu.mmio_u64(0xb00) & 0xffff);
    assert_eq!(cpu.gpr[6], MMIO + 0xb02);
}

#[test]
fn rep_cmps_scas_terminate_on_condition() {
    // repe cmpsb: MMIO vs RAM, differing at index 3
    let mut cpu = setup(Mode::Long64, 0);
    cpu.gpr[6] = MMIO + 0xc00;
    cpu.gpr[7] = 0x6000;
    cpu.gpr[1] = 8;
    for i in 0..8 {
        cpu.ram[0x6000 + i] = cpu.mmio[0xc00 + i];
    }
    cpu.ram[0x6003] ^= 1;
    cpu.code(&[0xf3, 0xa6]);
    let mut emu = Emulator::new();
    assert_eq!(run_until(&mut emu, &mut cpu, 0x1002), Outcome::Done);
    assert_eq!(cpu.gpr[1], 4);
    assert_eq!(cpu.gpr[6], MMIO + 0xc04);
    assert_eq!(cpu.rflags & ZF, 0);
    assert_eq!(cpu.rip, 0x1002);
    // Exactly 4 device reads: each iteration's read happened once.
    assert_eq!(cpu.log.len(), 4);
    // repne scasb: find AL in MMIO
    let mut cpu = setup(Mode::Prot32, 0);
    cpu.gpr[7] = MMIO + 0xd00;
    cpu.gpr[1] = 100;
    cpu.gpr[0] = u64::from(cpu.mmio[0xd05]);
    for i in 0..5 {
        if cpu.mmio[0xd00 + i] == cpu.mmio[0xd05] {
            cpu.mmio[0xd00 + i] ^= 0x80;
        }
    }
    cpu.code(&[0xf2, 0xae]);
    let mut emu = Emulator::new();
    assert_eq!(run_until(&mut emu, &mut cpu, 0x1002), Outcome::Done);
    assert_eq!(cpu.gpr[1], 94);
    assert_eq!(cpu.gpr[7], MMIO + 0xd06);
    assert_eq!(cpu.rflags & ZF, ZF);
}

#[test]
fn rep_ins_outs_batch_per_exit() {
    for mode in MODES {
        // rep insb of 100 bytes to RAM: one userspace exit with count 100.
        let mut cpu = TestCpu::new(mode);
        cpu.gpr[2] = 0x60;
        cpu.gpr[7] = 0x7000;
        cpu.gpr[1] = 100;
        cpu.code(&[0xf3, 0x6c]);
        let mut emu = Emulator::new();
        assert_eq!(
            emu.step(&mut cpu),
            Outcome::NeedsUserspace(Exit::PioIn {
                port: 0x60,
                size: 1,
                count: 100
            })
        );
        let data: Vec<u8> = (0..100).collect();
        assert!(emu.complete_read(&data));
        assert_eq!(emu.step(&mut cpu), Outcome::Done);
        assert_eq!(&cpu.ram[0x7000..0x7064], &data[..]);
        assert_eq!(
            (cpu.gpr[1], cpu.gpr[7] & 0xffff, cpu.rip),
            (0, 0x7064, 0x1002),
            "{mode:?}"
        );

        // rep outsw of 50 words ending 20 bytes before a page end: batches stop at the page.
        let mut cpu = TestCpu::new(mode);
        cpu.gpr[2] = 0x3f8;
        cpu.gpr[6] = 0x7fec;
        cpu.gpr[1] = 50;
        for i in 0..100 {
            cpu.ram[0x7fec + i] = i as u8;
        }
        let code: Vec<u8> = if is16(mode) {
            vec![0xf3, 0x6f]
        } else {
            vec![0x66, 0xf3, 0x6f]
        };
        cpu.code(&code);
        let mut emu = Emulator::new();
        assert_eq!(
            emu.step(&mut cpu),
            Outcome::NeedsUserspace(Exit::PioOut {
                port: 0x3f8,
                size: 2,
                count: 10
            }),
            "{mode:?}"
        );
        assert_eq!(emu.pio_data(), &(0..20).collect::<Vec<u8>>()[..]);
        assert_eq!(cpu.gpr[1], 40);
        let end = 0x1000 + code.len() as u64;
        let out = run_until(&mut emu, &mut cpu, end);
        assert_eq!(out, Outcome::Done);
        assert_eq!(cpu.gpr[1], 0);
        assert_eq!(cpu.gpr[6] & 0xffff, 0x7fec + 100);
        let sent: Vec<u8> = cpu
            .log
            .iter()
            .flat_map(|a| match a {
                A::PioOut(_, _, d) => d.clone(),
                _ => vec![],
            })
            .collect();
        assert_eq!(sent, (20..100).collect::<Vec<u8>>());
    }
    // DF=1: one element per exit, descending.
    let mut cpu = TestCpu::new(Mode::Prot32);
    cpu.rflags |= DF;
    cpu.gpr[2] = 0x60;
    cpu.gpr[7] = 0x7003;
    cpu.gpr[1] = 4;
    cpu.code(&[0xf3, 0x6c]);
    let mut emu = Emulator::new();
    assert_eq!(run_until(&mut emu, &mut cpu, 0x1002), Outcome::Done);
    assert_eq!(cpu.exits, 4);
    assert_eq!(&cpu.ram[0x7000..0x7004], &[3, 2, 1, 0]);
    assert_eq!(cpu.gpr[7], 0x6fff);
}

#[test]
fn in_out_and_io_permissions() {
    // in al, dx ; out 0x80, eax (in-kernel)
    let mut cpu = TestCpu::new(Mode::Prot32);
    cpu.gpr[2] = 0x71;
    cpu.port_counter = 0x42;
    cpu.gpr[0] = 0xffff_ffff;
    assert_eq!(exec(&mut cpu, &[0xec]), Outcome::Done);
    assert_eq!(cpu.gpr[0], 0xffff_ff42);
    let mut cpu = TestCpu::new(Mode::Long64);
    cpu.in_kernel = true;
    cpu.gpr[0] = 0x1234_5678;
    assert_eq!(exec(&mut cpu, &[0xe7, 0x80]), Outcome::Done);
    assert_eq!(
        cpu.log,
        vec![A::PioOut(0x80, 4, vec![0x78, 0x56, 0x34, 0x12])]
    );
    assert_eq!(cpu.exits, 0);
    // CPL 3, IOPL 0: the TSS bitmap decides.
    for (port, blocked) in [(0x70u16, false), (0x71, true)] {
        let mut cpu = TestCpu::new(Mode::Prot32);
        cpu.cpl = 3;
        cpu.ram[0x8068 + 0x71 / 8] = 1 << (0x71 % 8);
        cpu.gpr[2] = u64::from(port);
        let out = exec(&mut cpu, &[0xee]);
        if blocked {
            assert_eq!(out, Outcome::Exception(Exception::gp0()));
            assert!(cpu.log.is_empty());
        } else {
            assert_eq!(out, Outcome::Done);
        }
    }
    // A 2-byte access to port 0x70 overlaps the blocked 0x71.
    let mut cpu = TestCpu::new(Mode::Prot32);
    cpu.cpl = 3;
    cpu.ram[0x8068 + 0x71 / 8] = 1 << (0x71 % 8);
    cpu.gpr[2] = 0x70;
    assert_eq!(
        exec(&mut cpu, &[0x66, 0xef]),
        Outcome::Exception(Exception::gp0())
    );
    // IOPL 3 at CPL 3: allowed without the bitmap.
    let mut cpu = TestCpu::new(Mode::Prot32);
    cpu.cpl = 3;
    cpu.rflags |= 3 << 12;
    cpu.ram[0x8068 + 0x71 / 8] = 0xff;
    cpu.gpr[2] = 0x71;
    assert_eq!(exec(&mut cpu, &[0xee]), Outcome::Done);
    // Virtual-8086: the bitmap applies whatever IOPL is.
    let mut cpu = TestCpu::new(Mode::Prot16);
    cpu.rflags |= (3 << 12) | (1 << 17);
    cpu.ram[0x8068 + 0x71 / 8] = 0xff;
    cpu.gpr[2] = 0x71;
    assert_eq!(
        exec(&mut cpu, &[0xec]),
        Outcome::Exception(Exception::gp0())
    );
}

#[test]
fn page_crossing_accesses_are_split() {
    // 4-byte write crossing the two MMIO pages: 2 + 2 bytes.
    let mut cpu = setup(Mode::Prot32, 0xffe);
    cpu.gpr[0] = 0x4433_2211;
    assert_eq!(exec(&mut cpu, &[0x89, 0x03]), Outcome::Done);
    assert_eq!(
        cpu.log,
        vec![
            A::MmioWrite(MMIO + 0xffe, vec![0x11, 0x22]),
            A::MmioWrite(MMIO + 0x1000, vec![0x33, 0x44])
        ]
    );
    // 8-byte read from RAM into MMIO: 6 bytes RAM, 2 bytes MMIO.
    let mut cpu = TestCpu::new(Mode::Long64);
    cpu.gpr[3] = MMIO - 6;
    cpu.ram[(MMIO - 6) as usize..MMIO as usize].copy_from_slice(&[1, 2, 3, 4, 5, 6]);
    assert_eq!(exec(&mut cpu, &[0x48, 0x8b, 0x03]), Outcome::Done);
    let mut want = [1, 2, 3, 4, 5, 6, 0, 0];
    want[6..].copy_from_slice(&cpu.mmio[0..2]);
    assert_eq!(cpu.gpr[0], u64::from_le_bytes(want));
    assert_eq!(cpu.log, vec![A::MmioRead(MMIO, cpu.mmio[0..2].to_vec())]);
}

#[test]
fn page_faults_report_error_code_and_cr2() {
    // A write crossing into a not-present page: #PF at the second page, nothing written.
    let mut cpu = setup(Mode::Long64, 0x1ffc);
    cpu.not_present.insert(MMIO + 0x2000);
    cpu.gpr[0] = u64::MAX;
    let before = cpu.mmio.clone();
    assert_eq!(
        exec(&mut cpu, &[0x48, 0x89, 0x03]),
        Outcome::Exception(Exception::pf(2, MMIO + 0x2000))
    );
    assert_eq!(cpu.mmio, before);
    assert!(cpu.log.is_empty());
    assert_eq!(cpu.rip, 0x1000);
    // Read-only page at CPL 3: P|W|U.
    let mut cpu = setup(Mode::Prot32, 0x10);
    cpu.cpl = 3;
    cpu.read_only.insert(MMIO);
    assert_eq!(
        exec(&mut cpu, &[0x83, 0x03, 0x01]),
        Outcome::Exception(Exception::pf(7, MMIO + 0x10))
    );
    assert!(
        cpu.log.is_empty(),
        "a faulting RMW must not read the device first"
    );
    // Instruction fetch crossing into a not-present page: I/D bit.
    let mut cpu = setup(Mode::Long64, 0);
    cpu.rip = 0x1fff;
    cpu.ram[0x1fff] = 0x8b;
    cpu.not_present.insert(0x2000);
    let mut emu = Emulator::new();
    assert_eq!(
        emu.step(&mut cpu),
        Outcome::Exception(Exception::pf(0x10, 0x2000))
    );
}

#[test]
fn segment_limit_and_canonical_faults() {
    // 32-bit: DS limit MMIO+0xfff; a dword at offset MMIO+0xffe exceeds it: #GP(0).
    let mut cpu = setup(Mode::Prot32, 0xffe);
    cpu.segs[Seg::Ds as usize].limit = (MMIO + 0xfff) as u32;
    assert_eq!(
        exec(&mut cpu, &[0x8b, 0x03]),
        Outcome::Exception(Exception::gp0())
    );
    assert!(cpu.log.is_empty());
    // Same access through SS ([ebp]): #SS(0).
    let mut cpu = setup(Mode::Prot32, 0xffe);
    cpu.gpr[5] = cpu.gpr[3];
    cpu.segs[Seg::Ss as usize].limit = (MMIO + 0xfff) as u32;
    assert_eq!(
        exec(&mut cpu, &[0x8b, 0x45, 0x00]),
        Outcome::Exception(Exception::ss0())
    );
    // Real mode: a word at offset 0xffff crosses the 64 KiB limit: #GP(0).
    let mut cpu = setup(Mode::Real, 0);
    cpu.gpr[3] = 0xffff;
    assert_eq!(
        exec(&mut cpu, &[0x8b, 0x07]),
        Outcome::Exception(Exception::gp0())
    );
    // Expand-down data segment (limit 0xfff, 16-bit): offsets <= limit fault, above are fine.
    let mut cpu = setup(Mode::Prot16, 0x800);
    cpu.segs[Seg::Ds as usize].typ = 0x7;
    cpu.segs[Seg::Ds as usize].limit = 0xfff;
    assert_eq!(
        exec(&mut cpu, &[0x8b, 0x07]),
        Outcome::Exception(Exception::gp0())
    );
    let mut cpu = setup(Mode::Prot16, 0x1800);
    cpu.segs[Seg::Ds as usize].typ = 0x7;
    cpu.segs[Seg::Ds as usize].limit = 0xfff;
    assert_eq!(exec(&mut cpu, &[0x8b, 0x07]), Outcome::Done);
    // Write to a read-only data segment: #GP(0).
    let mut cpu = setup(Mode::Prot32, 0);
    cpu.segs[Seg::Ds as usize].typ = 0x1;
    assert_eq!(
        exec(&mut cpu, &[0x89, 0x03]),
        Outcome::Exception(Exception::gp0())
    );
    // Null (unusable) DS in protected mode: #GP(0).
    let mut cpu = setup(Mode::Prot32, 0);
    cpu.segs[Seg::Ds as usize].unusable = true;
    assert_eq!(
        exec(&mut cpu, &[0x8b, 0x03]),
        Outcome::Exception(Exception::gp0())
    );
    // 64-bit: non-canonical address: #GP(0); through RSP: #SS(0).
    let mut cpu = setup(Mode::Long64, 0);
    cpu.gpr[3] = 0x0000_8000_0000_0000;
    assert_eq!(
        exec(&mut cpu, &[0x8b, 0x03]),
        Outcome::Exception(Exception::gp0())
    );
    let mut cpu = setup(Mode::Long64, 0);
    cpu.gpr[4] = 0x0000_8000_0000_0000;
    assert_eq!(
        exec(&mut cpu, &[0x8b, 0x04, 0x24]),
        Outcome::Exception(Exception::ss0())
    );
    // A REP MOVSB stopping at a segment limit: completed iterations stay, then #GP.
    let mut cpu = setup(Mode::Prot32, 0);
    cpu.segs[Seg::Es as usize].limit = (MMIO + 0x103) as u32;
    cpu.gpr[6] = 0x5000;
    cpu.gpr[7] = MMIO + 0x100;
    cpu.gpr[1] = 8;
    cpu.code(&[0xf3, 0xa4]);
    let mut emu = Emulator::new();
    assert_eq!(
        run_until(&mut emu, &mut cpu, 0x1002),
        Outcome::Exception(Exception::gp0())
    );
    assert_eq!((cpu.gpr[1], cpu.gpr[7], cpu.rip), (4, MMIO + 0x104, 0x1000));
}

#[test]
fn alignment_check_and_lock_rules() {
    let mut cpu = setup(Mode::Prot32, 0x101);
    cpu.cpl = 3;
    cpu.cr0 |= 1 << 18;
    cpu.rflags |= 1 << 18;
    assert_eq!(
        exec(&mut cpu, &[0x8b, 0x03]),
        Outcome::Exception(Exception::ac0())
    );
    // LOCK on a register destination, on MOV, and on CMP: #UD.
    for code in [
        &[0xf0, 0x01, 0xc0][..],
        &[0xf0, 0x89, 0x03],
        &[0xf0, 0x39, 0x03],
    ] {
        let mut cpu = setup(Mode::Long64, 0);
        assert_eq!(
            exec(&mut cpu, code),
            Outcome::Exception(Exception::ud()),
            "{code:02x?}"
        );
    }
    // Longer than 15 bytes: #GP(0).
    let mut cpu = setup(Mode::Long64, 0);
    let mut code = vec![0x66; 14];
    code.extend([0x89, 0x03]);
    assert_eq!(exec(&mut cpu, &code), Outcome::Exception(Exception::gp0()));
}

#[test]
fn unsupported_reports_the_bytes() {
    let mut cpu = setup(Mode::Long64, 0);
    // shl dword [rbx], 1 is outside the supported set.
    match exec(&mut cpu, &[0xd1, 0x23, 0x90]) {
        Outcome::Unsupported { bytes, len } => {
            assert_eq!(&bytes[..3], &[0xd1, 0x23, 0x90][..len.min(3) as usize])
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(cpu.rip, 0x1000);
}

#[test]
fn resumption_protocol_is_idempotent() {
    // add [rbx], eax to userspace MMIO: exit for the read, re-execution, exit for the write.
    let mut cpu = setup(Mode::Long64, 0x40);
    cpu.mmio[0x40..0x44].copy_from_slice(&10u32.to_le_bytes());
    cpu.gpr[0] = 5;
    cpu.code(&[0x01, 0x03]);
    let mut emu = Emulator::new();
    assert_eq!(
        emu.step(&mut cpu),
        Outcome::NeedsUserspace(Exit::MmioRead {
            gpa: MMIO + 0x40,
            len: 4
        })
    );
    assert_eq!(cpu.rip, 0x1000);
    assert!(emu.in_progress());
    // A wrong length is refused; calling step again without data repeats the request.
    assert!(!emu.complete_read(&[0; 2]));
    assert_eq!(
        emu.step(&mut cpu),
        Outcome::NeedsUserspace(Exit::MmioRead {
            gpa: MMIO + 0x40,
            len: 4
        })
    );
    assert!(emu.complete_read(&10u32.to_le_bytes()));
    let mut data = [0u8; 8];
    data[..4].copy_from_slice(&15u32.to_le_bytes());
    assert_eq!(
        emu.step(&mut cpu),
        Outcome::NeedsUserspace(Exit::MmioWrite {
            gpa: MMIO + 0x40,
            len: 4,
            data
        })
    );
    assert_eq!(
        cpu.rip, 0x1002,
        "the instruction is committed before its write exit"
    );
    assert_eq!(emu.step(&mut cpu), Outcome::Done);
    assert!(!emu.in_progress());
    assert_eq!(cpu.rip, 0x1002);
    // REP MOVSD RAM -> MMIO with userspace writes: every element written exactly once.
    let mut cpu = setup(Mode::Long64, 0);
    cpu.gpr[6] = 0x5000;
    cpu.gpr[7] = MMIO + 0x100;
    cpu.gpr[1] = 5;
    for i in 0..20 {
        cpu.ram[0x5000 + i] = i as u8;
    }
    cpu.code(&[0xf3, 0xa5]);
    let mut emu = Emulator::new();
    assert_eq!(run(&mut emu, &mut cpu), Outcome::Done);
    assert_eq!(cpu.rip, 0x1002);
    assert_eq!(cpu.exits, 5);
    assert_eq!(cpu.log.len(), 5);
    assert_eq!(&cpu.mmio[0x100..0x114], &(0..20).collect::<Vec<u8>>()[..]);
}

#[test]
fn sixteen_bit_addressing_forms() {
    // mov [bp+di+0x10], al uses SS; mov es:[si-2], ax uses the override.
    let mut cpu = setup(Mode::Prot16, 0);
    cpu.segs[Seg::Ss as usize].base = MMIO;
    cpu.gpr[5] = 0x100;
    cpu.gpr[7] = 0x20;
    cpu.gpr[0] = 0x77;
    assert_eq!(exec(&mut cpu, &[0x88, 0x43, 0x10]), Outcome::Done);
    assert_eq!(cpu.mmio[0x130], 0x77);
    let mut cpu = setup(Mode::Prot16, 0);
    cpu.segs[Seg::Es as usize].base = MMIO + 0x1000;
    cpu.gpr[6] = 0x12;
    cpu.gpr[0] = 0xbeef;
    assert_eq!(exec(&mut cpu, &[0x26, 0x89, 0x44, 0xfe]), Outcome::Done);
    assert_eq!(cpu.mmio_u64(0x1010) as u16, 0xbeef);
    // Address wrap at 64 KiB: [bx+si] with bx+si = 0x10010 -> 0x10.
    let mut cpu = setup(Mode::Prot16, 0);
    cpu.gpr[3] = 0xfff0;
    cpu.gpr[6] = 0x20;
    cpu.gpr[0] = 0x5a;
    assert_eq!(exec(&mut cpu, &[0x88, 0x00]), Outcome::Done);
    assert_eq!(cpu.mmio[0x10], 0x5a);
}
