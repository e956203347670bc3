//! `cargo xtask kobj`: builds the core as one relocatable kernel object, `target/okvm.o`.
//!
//! The recipe is `../shared/DESIGN.md` §3: `core` and `compiler_builtins` rebuilt (build-std) with
//! IBT landing pads (`-Zcf-protection=branch`), external retpoline thunks, no jump tables and the
//! static relocation model on `x86_64-unknown-none` (soft-float, no red zone, kernel code model).
//! The staticlib is flattened with `ld -r --whole-archive --gc-sections`, keeping only what the
//! exported `okvm_*` entry points reach, and the lint runs on the result.
//!
//! One flag beyond DESIGN §3: `-Zplt=yes`. Rust otherwise calls external functions through the GOT
//! (`call *sym@GOTPCREL(%rip)`, which retpolines turn into a GOT load plus a thunk call); with it,
//! calls are `R_X86_64_PLT32`, which the kernel's static link resolves to direct calls.

use crate::lint;
use crate::util::{cargo, root, run as run_cmd};
use std::path::PathBuf;
use std::process::Command;

/// The Rust flags of the kernel recipe (DESIGN §3), plus stack-size records for the lint.
pub const KERNEL_RUSTFLAGS: &str = "-Crelocation-model=static -Zcf-protection=branch \
-Cjump-tables=no -Zretpoline-external-thunk -Zplt=yes -Zemit-stack-sizes";

/// Builds `target/okvm.o` and lints it; returns the object's path.
pub fn build() -> Result<PathBuf, String> {
    let root = root();
    let target_dir = root.join("target/kobj");
    run_cmd(cargo()
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTFLAGS", KERNEL_RUSTFLAGS)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args(["rustc", "--quiet", "-p", "okvm", "--release", "--target", "x86_64-unknown-none"])
        .args(["-Zbuild-std=core,compiler_builtins", "--crate-type", "staticlib"])
        .arg("--target-dir")
        .arg(&target_dir))?;
    let lib = target_dir.join("x86_64-unknown-none/release/libokvm.a");
    // First flatten everything to find the exported entry points, then link again keeping only
    // what they reach. The garbage collection must see the archive members: once `ld -r` has
    // merged every `.stack_sizes` record into one section, that section keeps all code alive.
    let full = root.join("target/okvm-full.o");
    run_cmd(Command::new("ld").arg("-r").arg("--whole-archive").arg(&lib).arg("-o").arg(&full))?;
    let data = std::fs::read(&full).map_err(|e| format!("{}: {e}", full.display()))?;
    let entries = lint::exported_entry_points(&data)?;
    let out = root.join("target/okvm.o");
    if entries.is_empty() {
        return Err("the core exports no okvm_* entry point: nothing to link".into());
    }
    let mut ld = Command::new("ld");
    ld.args(["-r", "--whole-archive", "--gc-sections"]);
    for e in &entries {
        ld.arg("-u").arg(e);
    }
    run_cmd(ld.arg(&lib).arg("-o").arg(&out))?;
    Ok(out)
}

/// `cargo xtask kobj`.
pub fn run(args: &[String]) -> Result<(), String> {
    if !args.is_empty() {
        return Err("kobj takes no arguments".into());
    }
    let obj = build()?;
    let header = root().join("kernel/include/okvm.h");
    let report = lint::lint_file(&obj, &header)?;
    print!("{report}");
    if report.violations.is_empty() {
        println!("kobj: {} is clean", obj.display());
        Ok(())
    } else {
        Err(format!("{} lint violation(s) in {}", report.violations.len(), obj.display()))
    }
}
