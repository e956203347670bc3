//! okvm.h vs the Rust side: a C program generated from the Rust signatures (ffi.rs, ffi_host.rs)
//! is compiled against okvm.h with -Werror (a type mismatch fails), and the sets of `okvm_*`
//! functions and `OKVM_E*` errno values must be equal on both sides.

use std::collections::BTreeSet;
use std::process::Command;

const HEADER: &str = include_str!("../../include/okvm.h");
const FFI: &str = include_str!("../ffi.rs");
const FFI_HOST: &str = include_str!("../ffi_host.rs");

fn c_type(rust: &str) -> String {
    let t = rust.trim();
    let map = [
        ("i32", "int32_t"),
        ("u32", "uint32_t"),
        ("i64", "int64_t"),
        ("u64", "uint64_t"),
        ("usize", "size_t"),
        ("*mut c_void", "void *"),
        ("*const c_void", "const void *"),
        ("*mut *mut c_void", "void **"),
        ("*mut u64", "uint64_t *"),
        ("*const c_char", "const char *"),
        ("OkvmHandle", "okvm_handle_t"),
        ("*mut OkvmHandle", "okvm_handle_t *"),
        ("OkvmLock", "okvm_lock_t"),
        ("OkvmMm", "okvm_mm_t"),
        ("OkvmTimer", "okvm_timer_t"),
        ("OkvmFn", "okvm_fn_t"),
        ("OkvmCpuFn", "okvm_cpu_fn_t"),
        ("OkvmEventFd", "okvm_eventfd_t"),
        ("*mut OkvmEventFd", "okvm_eventfd_t *"),
        ("OkvmEventFdWatch", "okvm_eventfd_watch_t"),
        ("*mut OkvmEventFdWatch", "okvm_eventfd_watch_t *"),
        ("!", "void"),
        ("", "void"),
    ];
    map.iter()
        .find(|(r, _)| *r == t)
        .map(|(_, c)| c.to_string())
        .unwrap_or_else(|| panic!("no C type for Rust type `{t}`: extend the map"))
}

/// (name, C return type, C parameter types) of every `fn okvm_*` in a Rust source.
fn rust_fns(src: &str) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find("fn okvm_") {
        rest = &rest[i + 3..];
        let open = rest.find('(').unwrap();
        let name = rest[..open].trim().to_string();
        let close = rest.find(')').unwrap();
        let params = &rest[open + 1..close];
        let after = &rest[close + 1..];
        let end = after.find(['{', ';']).unwrap();
        let ret = after[..end].trim().trim_start_matches("->").trim();
        let ptypes = params
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| c_type(p.split_once(':').unwrap().1))
            .collect();
        out.push((name, c_type(ret), ptypes));
    }
    out
}

fn header_fns() -> BTreeSet<String> {
    let mut s = BTreeSet::new();
    for line in HEADER.lines() {
        let l = line.trim_start();
        if l.starts_with("typedef")
            || l.starts_with("/*")
            || l.starts_with('*')
            || l.starts_with("#")
        {
            continue;
        }
        let mut from = 0;
        while let Some(j) = l[from..].find("okvm_") {
            let i = from + j;
            let name: String = l[i..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if l[i + name.len()..].trim_start().starts_with('(') {
                s.insert(name.clone());
            }
            from = i + name.len();
        }
    }
    s
}

#[test]
fn rust_and_c_agree() {
    let mut fns = rust_fns(FFI);
    fns.extend(rust_fns(FFI_HOST));
    let rust: BTreeSet<String> = fns.iter().map(|f| f.0.clone()).collect();
    assert_eq!(
        rust,
        header_fns(),
        "function sets differ between ffi.rs/ffi_host.rs and okvm.h"
    );
    assert!(rust.len() > 40, "parsed only {} functions", rust.len());

    let mut c = String::from("#include \"okvm.h\"\n");
    for (name, ret, params) in &fns {
        let p = if params.is_empty() {
            "void".to_string()
        } else {
            params.join(", ")
        };
        c += &format!("{ret} (*const chk_{name})({p}) = {name};\n");
    }
    for (n, e) in crate::errno::ALL {
        c += &format!("_Static_assert(OKVM_{n} == {}, \"errno {n}\");\n", e.0);
    }
    let defined: BTreeSet<&str> = HEADER
        .lines()
        .filter_map(|l| l.strip_prefix("#define OKVM_E"))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    let ours: BTreeSet<&str> = crate::errno::ALL.iter().map(|(n, _)| &n[1..]).collect();
    assert_eq!(defined, ours, "OKVM_E* set differs from errno::ALL");

    let dir = std::env::temp_dir().join(format!("okvm-hdr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("check.c");
    std::fs::write(&file, &c).unwrap();
    let inc = concat!(env!("CARGO_MANIFEST_DIR"), "/include");
    let out = Command::new("cc")
        .args([
            "-std=c11",
            "-Wall",
            "-Werror",
            "-Wincompatible-pointer-types",
            "-c",
            "-o",
        ])
        .arg(dir.join("check.o"))
        .arg("-I")
        .arg(inc)
        .arg(&file)
        .output()
        .expect("cc not found (apt: gcc)");
    assert!(
        out.status.success(),
        "okvm.h disagrees with the Rust side:\n{}\n{c}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn mismatch_is_detected() {
    // The check must be able to fail: a wrong return type does not compile.
    let c = "#include \"okvm.h\"\nint64_t (*const chk)(void) = okvm_attach;\n";
    let dir = std::env::temp_dir().join(format!("okvm-hdr-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.c");
    std::fs::write(&file, c).unwrap();
    let out = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Werror", "-c", "-o"])
        .arg(dir.join("bad.o"))
        .arg("-I")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/include"))
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
}
