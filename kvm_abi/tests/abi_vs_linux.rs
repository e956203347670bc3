//! Differential ABI test: everything `kvm_abi` declares (its manifest) against the C compiler's
//! view of `<linux/kvm.h>`.
//!
//! The test writes a C program with one `printf` per item (`sizeof`, `_Alignof`, `offsetof` and
//! member `sizeof` for every structure and field, every constant, every ioctl number), compiles it
//! with `cc` against the oracle header, runs it and compares each value with the Rust one.
//!
//! Oracle header, first found:
//! 1. `$KVM_ABI_LINUX_HEADERS` (a directory holding `linux/kvm.h`),
//! 2. `<workspace>/target/kvm-abi-oracle/usr/include`, the Debian bookworm-backports
//!    linux-libc-dev (Linux 6.12) unpacked by `kvm_abi/tests/fetch-oracle-headers.sh`,
//! 3. the system headers (Debian 12: Linux 6.1).
//!
//! An item the oracle lacks is reported by name; the test fails unless it is listed in
//! `newer_than_6_12.txt` (items of newer Linux releases, checked by hand against QEMU's
//! `linux-headers/`, and against kvm-bindings by the unit tests where it has them). A missing C
//! compiler or header fails the test.

use kvm_abi::manifest::{CType, StructLayout};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Size,
    Align,
    Offset,
    MemberSize,
    Const,
    Ioctl,
}

struct Item {
    kind: Kind,
    /// Human name, e.g. `offsetof(kvm_run, io.port)`.
    name: String,
    /// Name of the Linux item for the allowlist (struct name, constant or ioctl name).
    key: String,
    /// C expression.
    expr: String,
    expected: u64,
}

fn c_type(parent: &str, path: &str) -> String {
    format!("__typeof__(((struct {parent} *)0)->{path})")
}

fn struct_items(s: &StructLayout, out: &mut Vec<Item>) {
    let key = match s.c {
        CType::Struct(n) => n.to_string(),
        CType::Member { parent, .. } | CType::Unnamed { parent, .. } => parent.to_string(),
    };
    // C expression for the type (None: the anonymous union has no C name).
    let ty = match s.c {
        CType::Struct(n) => Some(format!("struct {n}")),
        CType::Member { parent, path } => Some(c_type(parent, path)),
        CType::Unnamed { .. } => None,
    };
    if let Some(ty) = &ty {
        out.push(Item {
            kind: Kind::Size,
            name: format!("sizeof({})", s.name),
            key: key.clone(),
            expr: format!("sizeof({ty})"),
            expected: s.size as u64,
        });
        out.push(Item {
            kind: Kind::Align,
            name: format!("_Alignof({})", s.name),
            key: key.clone(),
            expr: format!("_Alignof({ty})"),
            expected: s.align as u64,
        });
    }
    for f in s.fields {
        if f.path.is_empty() {
            continue; // explicit Rust padding for implicit C padding
        }
        let (off, member) = match (&s.c, &ty) {
            (CType::Unnamed { parent, anchor }, _) => (
                format!(
                    "(offsetof(struct {parent}, {}) - offsetof(struct {parent}, {anchor}))",
                    f.path
                ),
                format!("sizeof(((struct {parent} *)0)->{})", f.path),
            ),
            (_, Some(ty)) => (
                format!("offsetof({ty}, {})", f.path),
                format!("sizeof((({ty} *)0)->{})", f.path),
            ),
            (_, None) => unreachable!(),
        };
        out.push(Item {
            kind: Kind::Offset,
            name: format!("offsetof({}, {})", s.name, f.path),
            key: key.clone(),
            expr: off,
            expected: f.offset as u64,
        });
        if f.size != 0 {
            // Size 0: a flexible array member (sizeof is invalid in C).
            out.push(Item {
                kind: Kind::MemberSize,
                name: format!("sizeof({}.{})", s.name, f.path),
                key: key.clone(),
                expr: member,
                expected: f.size as u64,
            });
        }
    }
}

fn all_items() -> Vec<Item> {
    let mut items = Vec::new();
    for s in kvm_abi::STRUCTS.iter() {
        struct_items(s, &mut items);
    }
    for c in kvm_abi::CONSTS.iter() {
        items.push(Item {
            kind: Kind::Const,
            name: c.name.to_string(),
            key: c.name.to_string(),
            expr: format!("(unsigned long long)({})", c.name),
            expected: c.value,
        });
    }
    for i in kvm_abi::IOCTLS.iter() {
        items.push(Item {
            kind: Kind::Ioctl,
            name: i.name.to_string(),
            key: i.name.to_string(),
            expr: format!("(unsigned long long)(unsigned int)({})", i.name),
            expected: u64::from(i.value),
        });
    }
    items
}

/// Writes the C program for the items not in `skip`; returns the source and the line of each
/// item's statement.
fn c_program(items: &[Item], skip: &BTreeSet<usize>) -> (String, BTreeMap<usize, usize>) {
    let mut src = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/version.h>\n#include <linux/kvm.h>\n\
         int main(void)\n{\n\tprintf(\"version %llu\\n\", (unsigned long long)LINUX_VERSION_CODE);\n",
    );
    let mut lines = BTreeMap::new();
    let mut line = src.lines().count() + 1;
    for (i, it) in items.iter().enumerate() {
        if skip.contains(&i) {
            continue;
        }
        writeln!(
            src,
            "\tprintf(\"{i} %llu\\n\", (unsigned long long)({}));",
            it.expr
        )
        .unwrap();
        lines.insert(line, i);
        line += 1;
    }
    src.push_str("\treturn 0;\n}\n");
    (src, lines)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The oracle's include directories and a description.
fn oracle() -> (Vec<PathBuf>, String) {
    if let Some(dir) = std::env::var_os("KVM_ABI_LINUX_HEADERS") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("linux/kvm.h").is_file(),
            "KVM_ABI_LINUX_HEADERS={} has no linux/kvm.h",
            dir.display()
        );
        let multiarch = dir.join("x86_64-linux-gnu");
        return (
            vec![dir.clone(), multiarch],
            format!("$KVM_ABI_LINUX_HEADERS ({})", dir.display()),
        );
    }
    let cache = workspace_root().join("target/kvm-abi-oracle/usr/include");
    if cache.join("linux/kvm.h").is_file() {
        let multiarch = cache.join("x86_64-linux-gnu");
        return (
            vec![cache.clone(), multiarch],
            format!("cached oracle ({})", cache.display()),
        );
    }
    eprintln!(
        "NOTE: no cached oracle header at {}; falling back to the system headers. Prepare it with \
         kvm_abi/tests/fetch-oracle-headers.sh.",
        cache.display()
    );
    (Vec::new(), "system headers (/usr/include)".to_string())
}

fn newer_allowlist() -> BTreeSet<String> {
    include_str!("newer_than_6_12.txt")
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn abi_matches_linux_headers() {
    let items = all_items();
    let (includes, oracle_desc) = oracle();
    let dir = std::env::temp_dir().join(format!("kvm_abi_oracle_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c_file = dir.join("abi.c");
    let exe = dir.join("abi");

    // Compile; items the header lacks make their own line fail: drop them and retry.
    let mut absent = BTreeSet::new();
    let mut attempts = 0;
    let output = loop {
        attempts += 1;
        assert!(
            attempts <= 6,
            "C program still fails to compile after {attempts} attempts"
        );
        let (src, lines) = c_program(&items, &absent);
        std::fs::write(&c_file, &src).unwrap();
        let mut cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
        cc.arg("-std=gnu11").arg("-w").arg("-fmax-errors=0");
        for inc in &includes {
            cc.arg("-I").arg(inc);
        }
        cc.arg(&c_file).arg("-o").arg(&exe);
        let out = cc
            .output()
            .unwrap_or_else(|e| panic!("cannot run the C compiler `cc`: {e} (install gcc)"));
        if out.status.success() {
            break Command::new(&exe)
                .output()
                .expect("run the generated program");
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut new = 0;
        for l in stderr.lines() {
            let Some(rest) = l.strip_prefix(&format!("{}:", c_file.display())) else {
                continue;
            };
            if !l.contains("error") {
                continue;
            }
            let line: usize = rest
                .split(':')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            match lines.get(&line) {
                Some(&i) => new += usize::from(absent.insert(i)),
                None => panic!("C compile error outside any item (header missing?):\n{stderr}"),
            }
        }
        assert!(new > 0, "C compile failed without item errors:\n{stderr}");
    };
    assert!(output.status.success(), "generated program failed");
    let stdout = String::from_utf8(output.stdout).unwrap();

    let mut version = 0u64;
    let mut got = BTreeMap::new();
    for l in stdout.lines() {
        let (k, v) = l.split_once(' ').unwrap();
        let v: u64 = v.parse().unwrap();
        if k == "version" {
            version = v;
        } else {
            got.insert(k.parse::<usize>().unwrap(), v);
        }
    }
    let ver = format!(
        "{}.{}.{}",
        version >> 16,
        (version >> 8) & 0xff,
        version & 0xff
    );

    let mut diffs = Vec::new();
    let mut counts: BTreeMap<Kind, usize> = BTreeMap::new();
    for (i, it) in items.iter().enumerate() {
        if let Some(&v) = got.get(&i) {
            *counts.entry(it.kind).or_default() += 1;
            if v != it.expected {
                diffs.push(format!(
                    "{}: kvm_abi {} (0x{:x}), C {} (0x{:x})",
                    it.name, it.expected, it.expected, v, v
                ));
            }
        }
    }
    let total: usize = counts.values().sum();
    println!("oracle: {oracle_desc}, <linux/version.h> {ver}");
    println!(
        "compared {total} items: {} sizeof, {} _Alignof, {} offsetof, {} member sizeof, {} constants, {} ioctl numbers",
        counts.get(&Kind::Size).unwrap_or(&0),
        counts.get(&Kind::Align).unwrap_or(&0),
        counts.get(&Kind::Offset).unwrap_or(&0),
        counts.get(&Kind::MemberSize).unwrap_or(&0),
        counts.get(&Kind::Const).unwrap_or(&0),
        counts.get(&Kind::Ioctl).unwrap_or(&0),
    );
    let implied = kvm_abi::STRUCTS
        .iter()
        .filter(|s| matches!(s.c, CType::Unnamed { .. }))
        .count();
    println!("({implied} anonymous union(s) without a C name: size/alignment covered by the parent's offsets)");
    println!(
        "not compared here: {} Linux-internal limits (kvm_abi::INTERNAL_CONSTS: {})",
        kvm_abi::INTERNAL_CONSTS.len(),
        kvm_abi::INTERNAL_CONSTS
            .iter()
            .map(|c| c.name)
            .collect::<Vec<_>>()
            .join(" ")
    );

    let allow = newer_allowlist();
    let absent_keys: BTreeSet<&str> = absent.iter().map(|&i| items[i].key.as_str()).collect();
    println!(
        "{} items absent from this header ({} names):",
        absent.len(),
        absent_keys.len()
    );
    for &i in &absent {
        println!("  absent: {}", items[i].name);
    }
    let unexpected: Vec<&str> = absent_keys
        .iter()
        .copied()
        .filter(|k| !allow.contains(*k))
        .collect();
    let mut failures = Vec::new();
    if !diffs.is_empty() {
        failures.push(format!(
            "{} differences from <linux/kvm.h>:\n{}",
            diffs.len(),
            diffs.join("\n")
        ));
    }
    if !unexpected.is_empty() {
        failures.push(format!(
            "items absent from the oracle header ({oracle_desc}, Linux {ver}) and not known to be \
             newer than Linux 6.12: {unexpected:?}\n(misspelt name? or an older header: run \
             kvm_abi/tests/fetch-oracle-headers.sh)"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every struct, field, constant and ioctl was either compared or explicitly allowed.
    assert_eq!(total + absent.len(), items.len());
    let _ = std::fs::remove_dir_all(&dir);
}
