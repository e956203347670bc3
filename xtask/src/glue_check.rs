//! Checks of the OpenBSD glue and patches that need no OpenBSD machine (issue 9's CI proof):
//! - the glue (`openbsd_glue/*.c`, and the test-only Linux glue in `tests/nested/linux_glue/`)
//!   defines every host service `okvm.h` declares, defines no
//!   host service it does not declare, and calls only entry points `okvm.h` declares;
//! - every undefined symbol of `target/okvm.o` is a host service the glue defines or a symbol the
//!   OpenBSD/amd64 kernel provides (its libkern `mem*`/`bcmp` and its one retpoline thunk,
//!   `__x86_indirect_thunk_r11`, see `openbsd_glue/NOTES.md`);
//! - the patches are well-formed unified diffs that touch exactly the files they should; the
//!   kernel patch's MAKEDEV entry uses the major its `conf.c` hunk gives kvm(4) and makes only the
//!   minor-0 node; every QEMU port patch is named `patch-okvm-<file>` after the one file it
//!   touches, so it cannot take the name of a patch of the port itself.
//!
//! The compile check of the glue against real OpenBSD headers needs an OpenBSD `sys/` tree, which
//! CI does not have; it is the manual check described in `openbsd_glue/NOTES.md`.

use crate::lint::{parse_header, HeaderAbi, KERNEL_PROVIDED};
use crate::util::root;
use object::{Object, ObjectSymbol};
use std::collections::BTreeSet;
use std::path::Path;

/// Files the kernel patch must touch, relative to /usr/src (the etc/ ones come last in the diff).
pub const KERNEL_PATCH_FILES: &[&str] = &[
    "etc/MAKEDEV.common",
    "etc/etc.amd64/MAKEDEV.md",
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
    ("patch-okvm-accel_kvm_kvm-all_c", "accel/kvm/kvm-all.c"),
    ("patch-okvm-include_qemu_osdep_h", "include/qemu/osdep.h"),
    ("patch-okvm-hw_i386_Kconfig", "hw/i386/Kconfig"),
    ("patch-okvm-linux-headers_openbsd_linux_types_h", "linux-headers/openbsd/linux/types.h"),
    ("patch-okvm-linux-headers_openbsd_linux_ioctl_h", "linux-headers/openbsd/linux/ioctl.h"),
];

/// The ports name of our patch for `file`: `patch-okvm-` and the path with `/` and `.` as `_`
/// (the port's own `make update-patches` names its patches `patch-<path>`, never `patch-okvm-`).
pub fn qemu_patch_name(file: &str) -> String {
    format!("patch-okvm-{}", file.replace(&['/', '.'][..], "_"))
}

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
    /// The lines the diff adds, without their `+`.
    pub added: Vec<String>,
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
        let mut added = Vec::new();
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
                    Some('+') => {
                        new_n = new_n.checked_sub(1).ok_or(format!("{path}: bad +"))?;
                        added.push(l.get(1..).unwrap_or_default().to_string());
                    }
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
        files.push(DiffFile { path, hunks, added });
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

/// The number after `prefix` at the start of `s` (`prefix` followed by decimal digits).
fn number_after(s: &str, prefix: &str) -> Option<u32> {
    let rest = s.trim_start().strip_prefix(prefix)?;
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest.get(..end)?.parse().ok()
}

/// Checks that the kernel patch's MAKEDEV entry and its `conf.c` cdevsw entry agree: `_DEV(kvm, N)`
/// names the major that `conf.c` gives `cdev_kvm_init`, the `kvm` target makes exactly one node,
/// `/dev/kvm` of minor 0 (nodes for minors 1 and 2 would alias VM/vCPU clones, see NOTES.md), and
/// the etc/ sections come last in the diff (other work appends sys/ sections before them).
pub fn check_makedev(files: &[DiffFile]) -> Vec<String> {
    let mut errors = Vec::new();
    fn added<'a>(files: &'a [DiffFile], path: &'a str) -> impl Iterator<Item = &'a String> {
        files.iter().filter(move |f| f.path == path).flat_map(|f| f.added.iter())
    }
    let conf_major: Vec<u32> = added(files, "sys/arch/amd64/amd64/conf.c")
        .filter(|l| l.contains("cdev_kvm_init("))
        .filter_map(|l| l.split("/*").nth(1).and_then(|c| number_after(c, "")))
        .collect();
    let md_major: Vec<u32> =
        added(files, "etc/etc.amd64/MAKEDEV.md").filter_map(|l| number_after(l, "_DEV(kvm, ")).collect();
    match (conf_major.as_slice(), md_major.as_slice()) {
        ([c], [m]) if c == m => {}
        (c, m) => errors.push(format!(
            "kvm major: conf.c cdevsw entry {c:?} and MAKEDEV.md _DEV(kvm, ...) {m:?} must be one and the same"
        )),
    }
    if !added(files, "etc/etc.amd64/MAKEDEV.md").any(|l| l.trim() == "target(all, kvm)dnl") {
        errors.push("MAKEDEV.md: kvm is not in the all target".into());
    }
    // Every added line that makes a kvm node: exactly one, the one-line `_mkdev(kvm, ...)` body.
    let makers: Vec<&String> = files
        .iter()
        .filter(|f| f.path.starts_with("etc/"))
        .flat_map(|f| f.added.iter())
        .filter(|l| l.contains("major_kvm_c") || l.contains("kvm_vm") || l.contains("kvm_vcpu"))
        .collect();
    let body = |l: &str| -> Option<String> {
        let rest = l.strip_prefix("_mkdev(kvm, kvm, {-")?.strip_suffix("-})dnl")?;
        Some(rest.trim().to_string())
    };
    match makers.as_slice() {
        [l] if body(l).is_some_and(|b| {
            b.starts_with("M kvm c major_kvm_c 0 ") && b.matches("M ").count() == 1
        }) => {}
        other => errors.push(format!(
            "MAKEDEV: the kvm target must make exactly `M kvm c major_kvm_c 0 <mode>`, found {other:?}"
        )),
    }
    if !added(files, "etc/MAKEDEV.common").any(|l| l.starts_with("__devitem(kvm, kvm,")) {
        errors.push("MAKEDEV.common: no __devitem for kvm".into());
    }
    if let Some(first_etc) = files.iter().position(|f| f.path.starts_with("etc/")) {
        if files.iter().skip(first_etc).any(|f| !f.path.starts_with("etc/")) {
            errors.push("kernel patch: the etc/ sections must come after every sys/ section".into());
        }
    }
    errors
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
            errors.extend(check_makedev(&files));
        }
        Err(e) => errors.push(format!("kernel patch: {e}")),
    }
    for (name, file) in QEMU_PATCHES {
        if qemu_patch_name(file) != *name {
            errors.push(format!("{name}: a patch of {file} must be named {}", qemu_patch_name(file)));
        }
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
        assert_eq!(
            parse_unified_diff(good).unwrap(),
            [DiffFile { path: "a".into(), hunks: 1, added: vec!["z".into(), "w".into()] }]
        );
        let short = "--- a.orig\n+++ a\n@@ -1,3 +1,3 @@\n x\n-y\n+z\n";
        assert!(parse_unified_diff(short).is_err());
        let garbage = "--- a.orig\n+++ a\n@@ -1,1 +1,1 @@\n?x\n";
        assert!(parse_unified_diff(garbage).is_err());
        let new_file = "--- f.orig\n+++ f\n@@ -0,0 +1,2 @@\n+a\n+b\n";
        assert_eq!(parse_unified_diff(new_file).unwrap().len(), 1);
    }

    fn makedev_diff(conf_major: u32, md_major: u32, mkdev_body: &str) -> String {
        format!(
            "--- sys/arch/amd64/amd64/conf.c.orig\n+++ sys/arch/amd64/amd64/conf.c\n@@ -1,1 +1,1 @@\n\
             -\tcdev_notdef(),\t\t\t/* 97: was switch(4) */\n\
             +\tcdev_kvm_init(NKVM,kvm),\t/* {conf_major}: kvm(4), was switch(4) */\n\
             --- etc/MAKEDEV.common.orig\n+++ etc/MAKEDEV.common\n@@ -1,1 +1,3 @@\n x\n\
             +__devitem(kvm, kvm, Linux KVM compatible hypervisor)dnl\n\
             +_mkdev(kvm, kvm, {{-{mkdev_body}-}})dnl\n\
             --- etc/etc.amd64/MAKEDEV.md.orig\n+++ etc/etc.amd64/MAKEDEV.md\n@@ -1,1 +1,3 @@\n x\n\
             +_DEV(kvm, {md_major})\n+target(all, kvm)dnl\n"
        )
    }

    #[test]
    fn makedev_entry_must_match_conf_c_and_make_only_minor_0() {
        let ok = parse_unified_diff(&makedev_diff(97, 97, "M kvm c major_kvm_c 0 660")).unwrap();
        assert!(check_makedev(&ok).is_empty(), "{:?}", check_makedev(&ok));
        let wrong_major = parse_unified_diff(&makedev_diff(97, 98, "M kvm c major_kvm_c 0 660")).unwrap();
        assert_eq!(check_makedev(&wrong_major).len(), 1);
        let vm_node = parse_unified_diff(&makedev_diff(97, 97, "M kvm_vm c major_kvm_c 1 660")).unwrap();
        assert_eq!(check_makedev(&vm_node).len(), 1);
        // etc/ must come last: move the conf.c section behind the etc/ ones.
        let text = makedev_diff(97, 97, "M kvm c major_kvm_c 0 660");
        let split = text.find("--- etc/").unwrap();
        let reordered = format!("{}{}", &text[split..], &text[..split]);
        assert_eq!(check_makedev(&parse_unified_diff(&reordered).unwrap()).len(), 1);
    }

    #[test]
    fn qemu_patch_names_follow_their_file() {
        assert_eq!(qemu_patch_name("accel/kvm/kvm-all.c"), "patch-okvm-accel_kvm_kvm-all_c");
        assert_eq!(qemu_patch_name("meson.build"), "patch-okvm-meson_build");
        for (name, file) in QEMU_PATCHES {
            assert_eq!(qemu_patch_name(file), *name);
        }
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
