//! `cargo xtask test`: everything CI runs, in order, with one closing count.
//!
//! Phases: the workspace's unit, property and differential tests (`cargo test --workspace`), the
//! kernel object build and lint (`kobj`), the OpenBSD glue and patch checks, and (not with
//! `--quick`) a bounded fuzzing run of the emulator and the nested-VM cases of `nested::CI_CASES`. Counts from every `cargo test` result line are summed
//! into the closing `tests: N passed, N failed` line; a failing phase fails the command.

use crate::util::cargo;
use std::io::{BufRead, BufReader};
use std::process::Stdio;

/// Sums of cargo test's `test result:` lines.
#[derive(Default, Debug, PartialEq, Eq)]
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Counts {
    /// Adds the counts from one `test result: ok. 3 passed; 0 failed; 1 ignored; ...` line.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else { return };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(n)) = (words.next(), words.next()) else { continue };
            let Ok(n) = n.parse::<u64>() else { continue };
            match label {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Runs `cargo test` with `args`, echoing its output and adding its result lines to `counts`.
fn cargo_test(args: &[&str], counts: &mut Counts) -> Result<(), String> {
    let mut cmd = cargo();
    cmd.arg("test").args(args).stdout(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run cargo test: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| e.to_string())?;
        println!("{line}");
        counts.add_line(&line);
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo test {} failed: {status}", args.join(" ")))
    }
}

/// How long CI fuzzes the emulator's decode+execute path.
const FUZZ_SECONDS: u32 = 60;

/// Runs the emulator's libFuzzer target for a bounded time (`emulate/fuzz`, needs `cargo fuzz`).
fn fuzz_emulator(seconds: u32) -> Result<(), String> {
    let dir = crate::util::root().join("emulate/fuzz");
    let mut cmd = cargo();
    cmd.current_dir(&dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "run", "decode_execute", "--sanitizer", "none", "--"])
        .arg(format!("-max_total_time={seconds}"));
    crate::util::run(&mut cmd)
        .map_err(|e| format!("{e} (is cargo-fuzz installed? `cargo install cargo-fuzz --locked`)"))
}

/// `cargo xtask test [--quick]`.
pub fn run(args: &[String]) -> Result<(), String> {
    let quick = match args {
        [] => false,
        [a] if a == "--quick" => true,
        _ => return Err("usage: cargo xtask test [--quick]".into()),
    };
    let mut counts = Counts::default();
    let mut failures: Vec<String> = Vec::new();
    let mut phase = |name: &str, result: Result<(), String>, counts: &mut Counts| {
        match result {
            Ok(()) => println!("xtask test: phase {name}: ok"),
            Err(e) => {
                println!("xtask test: phase {name}: FAILED: {e}");
                failures.push(name.to_string());
                counts.failed += 1;
            }
        }
    };

    let r = cargo_test(&["--workspace"], &mut counts);
    phase("workspace tests", r, &mut counts);
    let r = crate::kobj::run(&[]);
    match r {
        Ok(()) => counts.passed += 1,
        Err(_) => {}
    }
    phase("kernel object build + lint", r, &mut counts);
    // --- openbsd glue hook (issue 9): glue vs okvm.h, okvm.o vs glue + kernel, patches ---
    let r = crate::glue_check::run();
    if r.is_ok() {
        counts.passed += 1;
    }
    phase("openbsd glue + patches", r, &mut counts);
    // --- end of openbsd glue hook ---
    if !quick {
        let r = fuzz_emulator(FUZZ_SECONDS);
        if r.is_ok() {
            counts.passed += 1;
        }
        phase("emulator fuzzing", r, &mut counts);
        // The nested-VM cases CI runs (host packages: tests/nested/setup-host.sh).
        let mut args = vec!["run".to_string()];
        args.extend(crate::nested::CI_CASES.iter().map(|s| s.to_string()));
        let r = crate::nested::main(&args);
        if r.is_ok() {
            counts.passed += 1;
        }
        phase("nested VMs", r, &mut counts);
    }

    println!("tests: {} passed, {} failed", counts.passed, counts.failed);
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("failed phases: {}", failures.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_are_summed() {
        let mut c = Counts::default();
        c.add_line("test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        c.add_line("test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out");
        c.add_line("running 5 tests");
        assert_eq!(c, Counts { passed: 15, failed: 2, ignored: 1 });
    }
}
