//! Checks of the OpenBSD glue and patches that need no OpenBSD machine (issue 9's CI proof):
//! - the glue (`openbsd_glue/*.c`, and the test-only Linux glue in `tests/nested/linux_glue/`)
//!   defines every host service `okvm.h` declares, defines no
//!   host service it does not declare, and calls only entry points `okvm.h` declares;
//! - every undefined symbol of `target/okvm.o` is a host service the glue defines or a symbol the
//!   OpenBSD/amd64 kernel provides (its libkern `mem*`/`bcmp` and its one retpoline thunk,
//!   `__x86_indirect_thunk_r11`, see `openbsd_glue/NOTES.md`);
//! - the patches are well-formed unified diffs that touch exactly the files they should.
//!
//! The compile check of the glue against real OpenBSD headers needs an OpenBSD `sys/` tree, which
//! CI does not have; it is the manual check described in `openbsd_glue/NOTES.md`.

use crate::lint::{parse_header, HeaderAbi, KERNEL_PROVIDED};
use crate::util::root;
use object::{Object, ObjectSymbol};
use std::collections::BTreeSet;
use std::path::Path;

/// Files the kernel patch must touch, relative to /usr/src.
pub const KERNEL_PATCH_FILES: &[&str] = &[
    "sys/arch/amd64/amd64/conf.c",
    "sys/arch/amd64/amd64/vmm_machdep.c",
    "sys/arch/amd64/conf/GENERIC",
    "sys/arch/amd64/conf/files.amd64",
    "sys/dev/vmm/vmm.c",
    "sys/dev/vmm/vmm.h",
    "sys/kern/sys_generic.c",
    "sys/kern/sys_pipe.c",
    "sys/sys/pipe.h",
];

/// QEMU port patches (name, the one file it touches relative to WRKSRC).
pub const QEMU_PATCHES: &[(&str, &str)] = &[
    ("patch-okvm-configure", "configure"),
    ("patch-okvm-meson_build", "meson.build"),
    ("patch-okvm-target_i386_kvm_kvm_c", "target/i386/kvm/kvm.c"),
    ("patch-okvm-linux-headers_openbsd_linux_types_h", "linux-headers/openbsd/linux/types.h"),
    ("patch-okvm-linux-headers_openbsd_linux_ioctl_h", "linux-headers/openbsd/linux/ioctl.h"),
];

/// What the glue's C sources define and call among the `okvm_*` names.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GlueSymbols {
    /// `okvm_host_*` functions defined (KNF: the name starts a line, followed by `(`).
    pub defined: BTreeSet<String>,
    /// `okvm_*` entry points called.
    pub called: BTreeSet<String>,
}

/// Reads the `okvm_*` definitions and calls of C source text (comments ignored).
pub fn parse_glue(text: &str) -> GlueSymbols {
    let code = strip_comments(text);
    let mut out = GlueSymbols::default();
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for line in code.lines() {
        let mut rest = line;
        let mut at_line_start = true;
        while let Some(pos) = rest.find("okvm_") {
            let before_ok = pos == 0 || !rest[..pos].chars().next_back().is_some_and(is_ident);
            let tail = &rest[pos..];
            let len = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
            let name = &tail[..len];
            let after = tail[len..].trim_start();
            if before_ok && after.starts_with('(') {
                if at_line_start && pos == 0 && name.starts_with("okvm_host_") {
                    out.defined.insert(name.to_string());
                } else if !name.starts_with("okvm_host_") {
                    out.called.insert(name.to_string());
                }
            }
            at_line_start = false;
            rest = &tail[len..];
        }
    }
    out
}

fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("*/") {
            Some(end) => {
                // Keep line structure so that "starts a line" still holds.
                out.extend(after[..end].chars().filter(|&c| c == '\n'));
                rest = &after[end + 2..];
            }
            None => rest = "",
        }
    }
    out.push_str(rest);
    out
}

/// Problems between the glue and the header; empty when they agree.
pub fn check_glue_against_header(glue: &GlueSymbols, abi: &HeaderAbi) -> Vec<String> {
    let mut errors = Vec::new();
    for s in abi.host_services.difference(&glue.defined) {
        errors.push(format!("host service {s} declared in okvm.h is not defined by the glue"));
    }
    for s in glue.defined.difference(&abi.host_services) {
        errors.push(format!("glue defines {s}, which okvm.h does not declare"));
    }
    for s in glue.called.difference(&abi.entry_points) {
        errors.push(format!("glue calls {s}, which okvm.h does not declare as an entry point"));
    }
    errors
}

/// Undefined symbols of an object that neither the glue nor the OpenBSD kernel provides.
pub fn unresolved_object_symbols(obj: &[u8], glue: &GlueSymbols) -> Result<Vec<String>, String> {
    let file = object::File::parse(obj).map_err(|e| format!("not an object: {e}"))?;
    Ok(file
        .symbols()
        .filter(|s| s.is_undefined())
        .filter_map(|s| s.name().ok().map(str::to_string))
        .filter(|n| !n.is_empty())
        .filter(|n| !glue.defined.contains(n) && !KERNEL_PROVIDED.contains(&n.as_str()))
        .collect())
}

/// One file section of a unified diff.
#[derive(Debug, PartialEq, Eq)]
pub struct DiffFile {
    /// The `+++` path.
    pub path: String,
    /// Number of hunks.
    pub hunks: usize,
}

/// Parses a unified diff strictly: every hunk's line counts must match its header.
pub fn parse_unified_diff(text: &str) -> Result<Vec<DiffFile>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut files = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.starts_with("Index: ") || line.starts_with("diff ") || line.is_empty() {
            i += 1;
            continue;
        }
        let old = line.strip_prefix("--- ").ok_or(format!("line {}: expected ---", i + 1))?;
        let new = lines
            .get(i + 1)
            .and_then(|l| l.strip_prefix("+++ "))
            .ok_or(format!("line {}: expected +++ after --- {old}", i + 2))?;
        let path = new.split('\t').next().unwrap_or(new).trim().to_string();
        i += 2;
        let mut hunks = 0;
        while let Some(h) = lines.get(i).filter(|l| l.starts_with("@@ ")) {
            let (mut old_n, mut new_n) = hunk_counts(h).ok_or(format!("line {}: bad hunk", i + 1))?;
            i += 1;
            while old_n > 0 || new_n > 0 {
                let l = lines.get(i).ok_or(format!("{path}: hunk ends early"))?;
                match l.chars().next() {
                    Some(' ') | None => {
                        old_n = old_n.checked_sub(1).ok_or(format!("{path}: hunk too long"))?;
                        new_n = new_n.checked_sub(1).ok_or(format!("{path}: hunk too long"))?;
                    }
                    Some('-') => old_n = old_n.checked_sub(1).ok_or(format!("{path}: bad -"))?,
                    Some('+') => new_n = new_n.checked_sub(1).ok_or(format!("{path}: bad +"))?,
                    Some('\\') => {}
                    _ => return Err(format!("{path}: line {}: not a hunk line", i + 1)),
                }
                i += 1;
            }
            while lines.get(i).is_some_and(|l| l.starts_with('\\')) {
                i += 1;
            }
            hunks += 1;
        }
        if hunks == 0 {
            return Err(format!("{path}: no hunks"));
        }
        files.push(DiffFile { path, hunks });
    }
    Ok(files)
}

/// `(old_count, new_count)` of a `@@ -a,b +c,d @@` header.
fn hunk_counts(h: &str) -> Option<(usize, usize)> {
    let mut parts = h.split_whitespace();
    let _ = parts.next()?;
    let count = |s: &str| -> Option<usize> {
        let mut it = s[1..].split(',');
        let _start: usize = it.next()?.parse().ok()?;
        Some(it.next().map_or(Some(1), |c| c.parse().ok())?)
    };
    Some((count(parts.next()?)?, count(parts.next()?)?))
}

/// Checks the patches in `patches/`; every problem found.
pub fn check_patches(dir: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    match read(&dir.join("openbsd-kernel.diff")).and_then(|t| parse_unified_diff(&t)) {
        Ok(files) => {
            let got: BTreeSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
            let want: BTreeSet<&str> = KERNEL_PATCH_FILES.iter().copied().collect();
            if got != want {
                errors.push(format!("kernel patch touches {got:?}, expected {want:?}"));
            }
        }
        Err(e) => errors.push(format!("kernel patch: {e}")),
    }
    for (name, file) in QEMU_PATCHES {
        match read(&dir.join("qemu").join(name)).and_then(|t| parse_unified_diff(&t)) {
            Ok(files) if files.len() == 1 && files.first().is_some_and(|f| f.path == *file) => {}
            Ok(files) => errors.push(format!("{name}: touches {files:?}, expected only {file}")),
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir.join("qemu")) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if !QEMU_PATCHES.iter().any(|(p, _)| *p == n) {
                errors.push(format!("unexpected file patches/qemu/{n}"));
            }
        }
    }
    errors
}

/// A glue's symbols from every `.c` file in `dir` (`openbsd_glue/`, or the Linux test glue).
pub fn glue_symbols(dir: &Path) -> Result<GlueSymbols, String> {
    let mut all = GlueSymbols::default();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "c") {
            let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            let s = parse_glue(&text);
            all.defined.extend(s.defined);
            all.called.extend(s.called);
        }
    }
    Ok(all)
}

/// `cargo xtask test` phase: glue vs header, okvm.o vs glue + kernel, patches.
pub fn run() -> Result<(), String> {
    let root = root();
    let header = std::fs::read_to_string(root.join("kernel/include/okvm.h"))
        .map_err(|e| format!("okvm.h: {e}"))?;
    let abi = parse_header(&header);
    if abi.entry_points.is_empty() {
        return Err("okvm.h declares no entry points: the core (issue 5) is not merged".into());
    }
    let glue = glue_symbols(&root.join("openbsd_glue"))?;
    let mut errors = check_glue_against_header(&glue, &abi);
    let obj = root.join("target/okvm.o");
    let data = std::fs::read(&obj).map_err(|e| format!("{}: {e} (run kobj first)", obj.display()))?;
    for s in unresolved_object_symbols(&data, &glue)? {
        errors.push(format!("okvm.o needs {s}, which neither the glue nor OpenBSD provides"));
    }
    // The test-only Linux glue (tests/nested) links the same okvm.o: it must match okvm.h too,
    // or okvm.ko fails to load in the nested VM.
    let linux = glue_symbols(&root.join("tests/nested/linux_glue"))?;
    errors.extend(
        check_glue_against_header(&linux, &abi).into_iter().map(|e| format!("linux test glue: {e}")),
    );
    errors.extend(check_patches(&root.join("patches")));
    if errors.is_empty() {
        println!(
            "glue: {} host services defined, {} entry points called (OpenBSD; the Linux test glue \
             matches too), patches well-formed",
            glue.defined.len(),
            glue.called.len()
        );
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GLUE: &str = "/* okvm_host_fake(void) in a comment */\nint32_t\nokvm_host_copyin(void *d)\n{\n\treturn (okvm_ioctl(h, 1, 2) + okvm_host_copyout(0));\n}\nvoid\nokvm_host_panic(void)\n{\n}\n";

    fn abi(text: &str) -> HeaderAbi {
        parse_header(text)
    }

    #[test]
    fn glue_definitions_and_calls_are_found() {
        let g = parse_glue(GLUE);
        assert_eq!(
            g.defined.iter().map(String::as_str).collect::<Vec<_>>(),
            ["okvm_host_copyin", "okvm_host_panic"]
        );
        assert_eq!(g.called.iter().map(String::as_str).collect::<Vec<_>>(), ["okvm_ioctl"]);
    }

    #[test]
    fn missing_extra_and_undeclared_symbols_are_reported() {
        let h = abi("int32_t okvm_host_copyin(void *);\nint32_t okvm_host_copyout(uint64_t);\n\
                     int64_t okvm_ioctl(void *, uint32_t, uint64_t);\n");
        let mut g = parse_glue(GLUE);
        let errors = check_glue_against_header(&g, &h);
        assert_eq!(errors.len(), 2, "{errors:?}"); // copyout missing, panic undeclared
        g.called.insert("okvm_frobnicate".into());
        assert_eq!(check_glue_against_header(&g, &h).len(), 3);
        let ok = abi("int32_t okvm_host_copyin(void *);\nvoid okvm_host_panic(void);\n\
                      int64_t okvm_ioctl(void *, uint32_t, uint64_t);\n");
        assert!(check_glue_against_header(&parse_glue(GLUE), &ok).is_empty());
    }

    #[test]
    fn real_glue_matches_real_header() {
        let root = root();
        let header = std::fs::read_to_string(root.join("kernel/include/okvm.h")).unwrap();
        let abi = parse_header(&header);
        if abi.entry_points.is_empty() {
            // The placeholder okvm.h from before the core (issue 5) declares no entry point.
            eprintln!("okvm.h declares no entry points yet: glue/header check not applicable");
            return;
        }
        let glue = glue_symbols(&root.join("openbsd_glue")).unwrap();
        let errors = check_glue_against_header(&glue, &abi);
        assert!(errors.is_empty(), "{}", errors.join("\n"));
    }

    #[test]
    fn unified_diffs_are_checked_strictly() {
        let good = "Index: a\n--- a.orig\n+++ a\n@@ -1,2 +1,3 @@\n x\n-y\n+z\n+w\n";
        assert_eq!(parse_unified_diff(good).unwrap(), [DiffFile { path: "a".into(), hunks: 1 }]);
        let short = "--- a.orig\n+++ a\n@@ -1,3 +1,3 @@\n x\n-y\n+z\n";
        assert!(parse_unified_diff(short).is_err());
        let garbage = "--- a.orig\n+++ a\n@@ -1,1 +1,1 @@\n?x\n";
        assert!(parse_unified_diff(garbage).is_err());
        let new_file = "--- f.orig\n+++ f\n@@ -0,0 +1,2 @@\n+a\n+b\n";
        assert_eq!(parse_unified_diff(new_file).unwrap().len(), 1);
    }

    #[test]
    fn real_patches_are_well_formed_and_scoped() {
        let errors = check_patches(&root().join("patches"));
        assert!(errors.is_empty(), "{}", errors.join("\n"));
    }

    #[test]
    fn object_symbols_outside_glue_and_kernel_are_reported() {
        // An object needing memcpy, the r11 thunk, a host service and something unknown.
        let mut obj = object::write::Object::new(
            object::BinaryFormat::Elf,
            object::Architecture::X86_64,
            object::Endianness::Little,
        );
        for name in ["memcpy", "__x86_indirect_thunk_r11", "okvm_host_copyin", "__x86_indirect_thunk_rax", "strlen"] {
            obj.add_symbol(object::write::Symbol {
                name: name.as_bytes().to_vec(),
                value: 0,
                size: 0,
                kind: object::SymbolKind::Text,
                scope: object::SymbolScope::Dynamic,
                weak: false,
                section: object::write::SymbolSection::Undefined,
                flags: object::SymbolFlags::None,
            });
        }
        let bytes = obj.write().unwrap();
        let mut missing = unresolved_object_symbols(&bytes, &parse_glue(GLUE)).unwrap();
        missing.sort();
        assert_eq!(missing, ["__x86_indirect_thunk_rax", "strlen"]);
    }
}
