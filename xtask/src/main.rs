//! `cargo xtask`: project automation. See README.md for the commands.

mod glue_check;
mod kobj;
mod lint;
mod nested;
mod testcmd;
mod util;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command>
  test [--quick]   everything CI runs: unit and differential tests, kernel object build + lint
                   (--quick: skip the slow suites: fuzzing and the nested-VM tests)
  kobj             build target/okvm.o with the kernel recipe and run the object lint on it
  lint OBJ         run the object lint on any relocatable object
  nested CMD       nested-VM tests under emulated SVM/VMX (`cargo xtask nested help`)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or(&[]);
    let result = match args.first().map(String::as_str) {
        Some("test") => testcmd::run(rest),
        Some("kobj") => kobj::run(rest),
        Some("lint") => lint::run_cli(rest),
        Some("nested") => nested::main(rest),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
