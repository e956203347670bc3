//! `cargo xtask nested`: regression tests in a nested VM (see `tests/nested/README.md`).
//!
//! An L1 Linux (Debian's kernel) boots under an emulator that provides SVM (QEMU TCG) or VMX
//! (Bochs); in it, Linux KVM (the reference) and okvm (through the test-only Linux host glue)
//! are loaded in turn and the same workloads run on each. This module drives the scripts under
//! `tests/nested/`, runs the emulator with a time limit, and judges the console protocol.

mod cases;
mod emulator;
mod report;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cases::{Case, Platform, CASES};
use report::{Outcome, Status};

const USAGE: &str = "usage: cargo xtask nested <command>
  setup                 install the host packages (apt-get; root)
  build                 fetch packages, build images (cached) and okvm.ko when target/okvm.o exists
  list                  list the cases
  run CASE... [opts]    run cases; one PASS/FAIL line per result, non-zero exit on failure
  bench [opts]          Linux KVM vs okvm side by side (case `bench`)
  ci                    setup, then run the CI cases (CI_CASES in xtask/src/nested.rs)
options: -n EXITS (timed suite loops, default 20000), --tests a,b (kvmsuite subset),
         -v (echo the whole console), --no-okvm (do not build okvm.ko)
env: OKVM_NESTED_CACHE (default /var/tmp/okvm-nested), OKVM_O (default target/okvm.o, built with
     the `cargo xtask kobj` recipe when missing)";

/// The cases `.ci/run` runs (through `cargo xtask nested ci`).
pub const CI_CASES: &[&str] = &["svm", "svm-shadow", "svm-okvm", "svm-okvm-l2", "svm-okvm-split", "svm-ev", "vmx"];

/// Entry point of `cargo xtask nested ARGS`.
pub fn main(args: &[String]) -> Result<(), String> {
    let opts = Opts::parse(args)?;
    let h = Harness::new(opts.clone())?;
    match opts.positional.first().map(String::as_str) {
        Some("setup") => h.script("setup-host.sh", &[], &[]),
        Some("build") => {
            let ko = h.build_okvm_ko();
            h.build_images(&ko, None)?;
            if let Err(e) = &ko {
                println!("[nested] okvm.ko not built: {e}");
            }
            Ok(())
        }
        Some("list") => {
            for c in CASES {
                println!("{:<11} {:<30} {}", c.name, c.platform.describe(), c.about);
            }
            Ok(())
        }
        Some("run") => {
            let names = &opts.positional[1..];
            if names.is_empty() {
                return Err(format!("run needs a case name\n{USAGE}"));
            }
            let mut cases = Vec::new();
            for n in names {
                cases.push(cases::find(n).ok_or_else(|| format!("no case {n:?} (see `cargo xtask nested list`)"))?);
            }
            let (mut passed, mut failed) = (0, 0);
            for c in cases {
                let outcomes = h.run_case(c)?;
                passed += outcomes.iter().filter(|o| o.ok()).count();
                failed += outcomes.iter().filter(|o| !o.ok()).count();
            }
            println!("nested: {passed} passed, {failed} failed");
            if failed > 0 {
                return Err(format!("{failed} nested result(s) failed"));
            }
            Ok(())
        }
        Some("bench") => h.bench(),
        Some("ci") => {
            h.script("setup-host.sh", &[], &[])?;
            let mut args = vec!["run".to_string()];
            args.extend(CI_CASES.iter().map(|s| s.to_string()));
            main(&args)
        }
        _ => Err(USAGE.to_string()),
    }
}

#[derive(Clone, Debug, Default)]
struct Opts {
    positional: Vec<String>,
    exits: Option<u64>,
    tests: Option<String>,
    verbose: bool,
    no_okvm: bool,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut o = Opts::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "-n" => {
                    let v = it.next().ok_or("-n needs a number")?;
                    o.exits = Some(v.parse().map_err(|_| format!("bad -n {v}"))?);
                }
                "--tests" => o.tests = Some(it.next().ok_or("--tests needs a list")?.clone()),
                "-v" => o.verbose = true,
                "--no-okvm" => o.no_okvm = true,
                "-h" | "--help" => return Err(USAGE.to_string()),
                s if s.starts_with('-') => return Err(format!("unknown option {s}\n{USAGE}")),
                _ => o.positional.push(a.clone()),
            }
        }
        Ok(o)
    }
}

struct Harness {
    opts: Opts,
    root: PathBuf,
    dir: PathBuf,
    cache: PathBuf,
}

/// Paths written by `tests/nested/build.sh` into `$CACHE/images.env`.
struct Images {
    kernel: PathBuf,
    initrd: PathBuf,
    suite: PathBuf,
    iso: Option<PathBuf>,
}

impl Harness {
    fn new(opts: Opts) -> Result<Harness, String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or("xtask has no parent directory")?
            .to_path_buf();
        let dir = root.join("tests/nested");
        let cache = std::env::var_os("OKVM_NESTED_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/okvm-nested"));
        Ok(Harness { opts, root, dir, cache })
    }

    /// Run `bash tests/nested/NAME ARGS` with extra environment; fail on non-zero exit.
    fn script(&self, name: &str, args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
        // flock: concurrent harness runs share the cache; builds take turns.
        std::fs::create_dir_all(&self.cache).map_err(|e| format!("{}: {e}", self.cache.display()))?;
        let mut cmd = Command::new("flock");
        cmd.arg(self.cache.join(".build.lock")).arg("bash");
        cmd.arg(self.dir.join(name)).args(args).env("OKVM_NESTED_CACHE", &self.cache);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let st = cmd.status().map_err(|e| format!("{name}: {e}"))?;
        if !st.success() {
            return Err(format!("tests/nested/{name} failed ({st})"));
        }
        Ok(())
    }

    /// Build the okvm Linux module from `okvm.o`; Err says why there is none.
    fn build_okvm_ko(&self) -> Result<PathBuf, String> {
        if self.opts.no_okvm {
            return Err("--no-okvm".into());
        }
        let obj = match std::env::var_os("OKVM_O") {
            Some(o) => PathBuf::from(o),
            None => {
                let obj = self.root.join("target/okvm.o");
                if !obj.exists() {
                    println!("[nested] {} is missing: building it (cargo xtask kobj recipe)", obj.display());
                    crate::kobj::build().map_err(|e| format!("building okvm.o: {e}"))?;
                }
                obj
            }
        };
        if !obj.exists() {
            return Err(format!("{} does not exist", obj.display()));
        }
        let glue = self.dir.join("linux_glue/build.sh");
        if !glue.exists() {
            return Err("tests/nested/linux_glue/build.sh is missing".into());
        }
        self.script("fetch.sh", &[], &[])?;
        let out = Command::new("flock")
            .arg(self.cache.join(".build.lock"))
            .arg("bash")
            .arg(&glue)
            .arg(&obj)
            .env("OKVM_NESTED_CACHE", &self.cache)
            .output()
            .map_err(|e| format!("linux_glue/build.sh: {e}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(25).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!("linux_glue/build.sh failed:\n{}", tail.join("\n")));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let ko = stdout.lines().last().unwrap_or("").trim();
        if ko.is_empty() || !Path::new(ko).exists() {
            return Err(format!("linux_glue/build.sh named no module: {stdout}"));
        }
        Ok(PathBuf::from(ko))
    }

    /// Fetch packages and build the images (and the ISO for `cmdline` when given).
    fn build_images(&self, ko: &Result<PathBuf, String>, iso_cmdline: Option<&str>) -> Result<Images, String> {
        self.script("fetch.sh", &[], &[])?;
        let ko = ko.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let mut env = vec![("OKVM_KO", ko.as_str())];
        let mut args = vec![];
        if let Some(c) = iso_cmdline {
            env.push(("OKVM_CMDLINE", c));
            args.push("iso");
        }
        self.script("build.sh", &args, &env)?;
        let text = std::fs::read_to_string(self.cache.join("images.env")).map_err(|e| format!("images.env: {e}"))?;
        let vars: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        let get = |k: &str| vars.get(k).map(PathBuf::from).ok_or(format!("images.env lacks {k}"));
        Ok(Images {
            kernel: get("L1_KERNEL")?,
            initrd: get("L1_INITRD")?,
            suite: get("SUITE")?,
            iso: get("L1_ISO").ok(),
        })
    }

    /// The kvmsuite tests a case plans (asking the host-built binary for the full list).
    fn suite_tests(&self, case: &Case, images: &Images) -> Result<Vec<String>, String> {
        if let Some(t) = &self.opts.tests {
            return Ok(t.split(',').filter(|s| !s.is_empty()).map(String::from).collect());
        }
        if !case.tests.is_empty() {
            return Ok(case.tests.iter().map(|s| s.to_string()).collect());
        }
        let out = Command::new(&images.suite)
            .arg("--list")
            .output()
            .map_err(|e| format!("kvmsuite --list: {e}"))?;
        Ok(String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect())
    }

    /// Expected status on okvm, from `tests/nested/expect-okvm.txt` (`name STATUS` lines; a
    /// name prefixed `svm:` or `vmx:` applies only on that platform).
    fn okvm_expectations(&self, platform: &Platform) -> BTreeMap<String, Status> {
        let tag = match platform {
            Platform::Qemu { .. } => "svm",
            Platform::Bochs { .. } => "vmx",
        };
        let text = std::fs::read_to_string(self.dir.join("expect-okvm.txt")).unwrap_or_default();
        text.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter_map(|l| l.split_once(char::is_whitespace))
            .filter_map(|(n, s)| match n.split_once(':') {
                Some((t, n)) if t == tag => Some((n, s)),
                Some(_) => None,
                None => Some((n, s)),
            })
            .map(|(n, s)| (n.to_string(), Status::parse(s.trim())))
            .collect()
    }

    /// Boot the case's L1 once and judge every planned result.
    fn run_case(&self, case: &Case) -> Result<Vec<Outcome>, String> {
        let ko = if case.hvs.contains(&"okvm") { self.build_okvm_ko() } else { Err("not needed".into()) };
        if case.hvs.contains(&"okvm") {
            if let Err(e) = &ko {
                println!("[nested] {}: okvm.ko not built: {e}", case.name);
            }
        }
        let exits = self.opts.exits.unwrap_or(20000);
        // A first build without the ISO gives the suite binary for the plan.
        let images = self.build_images(&ko, None)?;
        let tests = self.suite_tests(case, &images)?;
        let mut names: Vec<String> = Vec::new();
        for w in case.work {
            if *w == "suite" {
                names.extend(tests.iter().cloned());
            } else {
                names.push(w.to_string());
            }
        }
        let bochs = matches!(case.platform, Platform::Bochs { .. });
        // Under Bochs the TSC counts emulated instructions (ips = 100 M/s), while the kernel
        // would take 3.5 GHz from CPUID 0x15/0x16 and run its clock ~35x slow: tell it the rate.
        let mut cmdline = format!(
            "console=ttyS0{} panic=-1 quiet okvm.hv={} okvm.work={} okvm.n={exits} okvm.t={} okvm.l2t={}",
            if bochs { ",115200 tsc_early_khz=100000" } else { "" },
            case.hvs.join(","),
            case.work.join(","),
            // per-test limit in L1 seconds; Bochs's emulated clock runs slower than the host's
            if bochs { 30 } else { 60 },
            // per-L2-boot limit in L1 seconds: under QEMU TCG an L2 boot takes 5-15 s, so a hung
            // one (an expected failure on okvm) costs 2 min rather than the whole case budget
            if bochs { 600 } else { 120 }
        );
        if !case.tests.is_empty() || self.opts.tests.is_some() {
            cmdline.push_str(&format!(" okvm.tests={}", tests.join(",")));
        }
        let images = if bochs { self.build_images(&ko, Some(&cmdline))? } else { images };

        let run_dir = self.cache.join("runs").join(case.name);
        std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
        let _lock = RunLock::take(&run_dir)?;
        let (cmd, console) = match case.platform {
            Platform::Qemu { cpu } => {
                let mut c = Command::new("qemu-system-x86_64");
                c.args(["-accel", "tcg", "-cpu", cpu, "-m", "2048", "-smp", "1", "-nodefaults"])
                    .args(["-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot"])
                    .arg("-kernel")
                    .arg(&images.kernel)
                    .arg("-initrd")
                    .arg(&images.initrd)
                    .args(["-append", &cmdline]);
                (c, emulator::Console::Stdout)
            }
            Platform::Bochs { model } => {
                let iso = images.iso.as_ref().ok_or("build.sh made no ISO")?;
                let com1 = run_dir.join("com1.txt");
                let rc = run_dir.join("bochsrc");
                std::fs::write(&rc, bochsrc(model, iso, &com1, &run_dir.join("bochs.log")))
                    .map_err(|e| e.to_string())?;
                let dbg = run_dir.join("bochs-debugger-cmds");
                std::fs::write(&dbg, "c\n").map_err(|e| e.to_string())?;
                let mut c = Command::new("bochs-bin");
                c.arg("-q").arg("-f").arg(&rc).arg("-rc").arg(&dbg);
                (c, emulator::Console::File { path: com1, aside: run_dir.join("bochs-stdout.txt") })
            }
        };
        let header = format!("{:?}", cmd);
        let log_path = run_dir.join("console.log");
        println!("[nested] {}: {} ({} s limit), log {}", case.name, case.platform.describe(), case.timeout_s, log_path.display());
        let verbose = self.opts.verbose;
        let started = Instant::now();
        // The console log is written as lines come, so it survives a killed harness.
        let mut log = std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let _ = writeln!(log, "[host +   0.00] {header}");
        let mut echo = |l: &emulator::Line| {
            let _ = writeln!(log, "[host +{:7.2}] {}", l.t, l.text);
            if verbose || l.text.contains("@@ ") || l.text.contains("Kernel panic") || l.text.contains("Oops") {
                println!("  [{:7.2}] {}", l.t, l.text);
            }
        };
        let (lines, end) = emulator::run(
            cmd,
            console,
            &|s: &str| s.contains("@@ DONE"),
            Duration::from_secs(case.timeout_s),
            Duration::from_secs(if bochs { 3 } else { 10 }),
            &mut echo,
        )?;
        let wall = started.elapsed().as_secs_f64();
        let mut log = std::fs::OpenOptions::new().append(true).open(&log_path).map_err(|e| e.to_string())?;
        let _ = writeln!(log, "[host end {wall:.2}] {end:?}");
        let records: Vec<_> = lines.iter().filter_map(report::parse).collect();
        let tail = lines.iter().rev().find(|l| !l.text.trim().is_empty()).map(|l| l.text.clone()).unwrap_or_default();
        let tail = format!("{tail} ({end:?} after {wall:.1} s)");
        let expect_okvm = self.okvm_expectations(&case.platform);
        let expect = |hv: &str, name: &str| {
            if hv == "okvm" {
                expect_okvm.get(name).copied().unwrap_or(Status::Pass)
            } else {
                Status::Pass
            }
        };
        let outcomes = report::judge(&records, case.hvs, &names, case.linux_params, &expect, &tail);
        for o in &outcomes {
            println!("{}", report::format_outcome(case.name, o));
        }
        let l1 = records.iter().find(|r| r.kind == "L1").map(|r| format!("{:.1}", r.t)).unwrap_or("-".into());
        println!(
            "[nested] {}: {} passed, {} failed; L1 /init at {l1} s, emulator ran {wall:.1} s ({end:?})",
            case.name,
            outcomes.iter().filter(|o| o.ok()).count(),
            outcomes.iter().filter(|o| !o.ok()).count()
        );
        Ok(outcomes)
    }

    /// `nested bench`: run case `bench` and print Linux KVM vs okvm per measure.
    fn bench(&self) -> Result<(), String> {
        let case = cases::find("bench").ok_or("no bench case")?;
        let outcomes = self.run_case(case)?;
        let get = |hv: &str, name: &str| outcomes.iter().find(|o| o.hv == hv && o.name == name);
        let load_err = |hv: &str| {
            get(hv, "load")
                .filter(|o| o.status != Status::Pass)
                .map(|o| format!("not loaded: {}", o.fields.get("msg").map(String::as_str).unwrap_or("?")))
        };
        // (label, result name, metric: None = host seconds BEGIN..RESULT, unit)
        let rows: [(&str, &str, Option<&str>, &str); 6] = [
            ("PIO exit (long mode out)", "pio_long", Some("us_per_exit"), "us"),
            ("MMIO exit (write)", "mmio", Some("us_per_exit"), "us"),
            ("CPUID exit (in kernel)", "cpuid", Some("us_per_exit"), "us"),
            ("L2 boot to marker, QEMU 7.2", "l2_qemu72", None, "s"),
            ("L2 boot to marker, QEMU 10.0", "l2_qemu10", None, "s"),
            ("L2 boot, 10.0 split + virtio", "l2_qemu10_split_virtio", None, "s"),
        ];
        let cell = |hv: &str, name: &str, metric: Option<&str>| -> Result<f64, String> {
            if let Some(e) = load_err(hv) {
                return Err(e);
            }
            let o = get(hv, name).ok_or("no result")?;
            if o.status != Status::Pass {
                return Err(o.fields.get("msg").cloned().unwrap_or_else(|| format!("{:?}", o.status)));
            }
            match metric {
                Some(m) => o.fields.get(m).and_then(|v| v.parse().ok()).ok_or(format!("no {m}")),
                None => o.host_secs.ok_or("no host time".into()),
            }
        };
        println!();
        println!("nested bench (QEMU TCG -cpu EPYC, L1 Debian kernel, exits timed in L1, L2 boots timed on the host)");
        println!("{:<30} {:>12} {:>10}  okvm", "measure", "Linux KVM", "okvm/Linux");
        for (label, name, metric, unit) in rows {
            let l = cell("linux", name, metric);
            let k = cell("okvm", name, metric);
            let linux = match &l {
                Ok(v) => format!("{v:.2} {unit}"),
                Err(e) => format!("FAILED: {}", short(e)),
            };
            let okvm = match &k {
                Ok(v) => format!("{v:.2} {unit}"),
                Err(e) => short(e),
            };
            let ratio = match (&l, &k) {
                (Ok(a), Ok(b)) if *a > 0.0 => format!("{:.2}", b / a),
                _ => "-".into(),
            };
            println!("{label:<30} {linux:>12} {ratio:>10}  {okvm}");
        }
        let linux_ok = rows.iter().all(|(_, n, m, _)| cell("linux", n, *m).is_ok());
        if !linux_ok {
            return Err("the Linux KVM reference column is incomplete".into());
        }
        Ok(())
    }
}

/// Marks a case's run directory as in use by this process (a second harness running the same
/// case would share its console file); removed on drop. A lock whose process is gone is stale.
struct RunLock(PathBuf);

impl RunLock {
    fn take(dir: &Path) -> Result<RunLock, String> {
        let path = dir.join("lock");
        if let Ok(pid) = std::fs::read_to_string(&path) {
            let pid = pid.trim();
            // alive and still an xtask (not a reused pid)
            let cmdline = std::fs::read(Path::new("/proc").join(pid).join("cmdline")).unwrap_or_default();
            let xtask = String::from_utf8_lossy(&cmdline).contains("xtask");
            if !pid.is_empty() && xtask && pid != std::process::id().to_string() {
                return Err(format!("{} is in use by process {pid}", dir.display()));
            }
        }
        std::fs::write(&path, std::process::id().to_string()).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(RunLock(path))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn short(s: &str) -> String {
    let s = s.split(" (line ").next().unwrap_or(s);
    if s.chars().count() > 110 {
        format!("{}...", s.chars().take(110).collect::<String>())
    } else {
        s.to_string()
    }
}

/// Bochs configuration: headless (VNC display that nobody needs to attach), no sound, COM1 to
/// a file, guest clock not synced to the host (Bochs time is virtual), noisy logs off.
fn bochsrc(model: &str, iso: &Path, com1: &Path, log: &Path) -> String {
    format!(
        "config_interface: textconfig
display_library: rfb, options=\"timeout=0\"
memory: guest=1024, host=1024
cpu: model={model}, count=1, ips=100000000, reset_on_triple_fault=0, ignore_bad_msrs=1
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/bochs/VGABIOS-lgpl-latest
pci: enabled=1, chipset=i440fx
ata0: enabled=1, ioaddr1=0x1f0, ioaddr2=0x3f0, irq=14
ata0-master: type=cdrom, path={iso}, status=inserted
boot: cdrom
clock: sync=none, time0=local
com1: enabled=1, mode=file, dev={com1}
mouse: enabled=0
sound: driver=dummy
speaker: enabled=0
log: {log}
panic: action=fatal
error: action=ignore
info: action=ignore
debug: action=ignore
",
        iso = iso.display(),
        com1 = com1.display(),
        log = log.display()
    )
}
