//! Decode+execute of random instructions in every mode against a guest built from random bytes
//! (the fuzz harness, run deterministically): no panic, bounded work per `step`. The libFuzzer
//! target in `fuzz/` explores the same harness with coverage feedback.

#[path = "../fuzz/fuzz_targets/harness.rs"]
mod harness;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Opcode bytes of the supported set, to make most random instructions executable.
const OPS: &[u8] = &[
    0x01, 0x03, 0x09, 0x11, 0x19, 0x21, 0x29, 0x31, 0x39, 0x63, 0x6c, 0x6d, 0x6e, 0x6f, 0x80, 0x81,
    0x83, 0x85, 0x87, 0x88, 0x89, 0x8a, 0x8b, 0x8c, 0x8f, 0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6,
    0xa7, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf, 0xc6, 0xc7, 0xe4, 0xe5, 0xe6, 0xe7, 0xec, 0xed, 0xee,
    0xef, 0xf6, 0xf7, 0xfe, 0xff, 0x0f,
];
const PREFIXES: &[u8] = &[0xf3, 0xf2, 0xf0, 0x66, 0x67, 0x26, 0x64, 0x65, 0x48, 0x41];

#[test]
fn random_instructions_in_random_guests() {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    let mut data = vec![0u8; 160];
    for i in 0..60_000u32 {
        for b in data.iter_mut() {
            *b = rng.next() as u8;
        }
        // Code lives at RIP = hdr[2] << 8 within the repeated memory image: write a plausible
        // instruction at every 256-byte boundary of the image pattern (offset 0 of `rest`).
        let rest = 64;
        let mut p = rest;
        for _ in 0..(rng.next() % 3) {
            data[p] = PREFIXES[(rng.next() % PREFIXES.len() as u64) as usize];
            p += 1;
        }
        data[p] = OPS[(rng.next() % OPS.len() as u64) as usize];
        // Point RIP at the start of `rest` in the repeated image (image period is 96 bytes).
        data[2] = 0;
        // Keep most runs out of fault-everything territory.
        if i % 4 != 0 {
            data[7] = 0;
        }
        harness::run_one(&data);
    }
}
