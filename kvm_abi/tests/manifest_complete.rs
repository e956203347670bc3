//! Fails if the source declares a public structure, union or constant that the manifest
//! (`STRUCTS`, `CONSTS`, `INTERNAL_CONSTS`, `IOCTLS`) does not list, so the differential tests
//! cannot silently miss an item.

use std::collections::BTreeSet;

/// Public items that describe the manifest itself rather than the Linux ABI.
const INFRASTRUCTURE: &[&str] = &[
    "StructLayout",
    "FieldLayout",
    "ConstInfo",
    "IoctlInfo",
    "CType",
    "FlexError",
    "STRUCTS",
    "CONSTS",
    "INTERNAL_CONSTS",
    "IOCTLS",
    "FD_SYSTEM",
    "FD_VM",
    "FD_VCPU",
    "FD_DEVICE",
];

fn ident_after<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = line.trim_start().strip_prefix(prefix)?;
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

#[test]
fn every_public_item_is_in_the_manifest() {
    let mut known: BTreeSet<&str> = kvm_abi::STRUCTS.iter().map(|s| s.name).collect();
    known.extend(kvm_abi::CONSTS.iter().map(|c| c.name));
    known.extend(kvm_abi::INTERNAL_CONSTS.iter().map(|c| c.name));
    known.extend(kvm_abi::IOCTLS.iter().map(|i| i.name));
    known.extend(INFRASTRUCTURE);

    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut seen = 0;
    let mut escaped = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        // Inside `abi_consts!` / `abi_ioctls!` invocations, items are `NAME: T = v;` and
        // `NAME = kind(...) for ...;` lines.
        let mut in_list = false;
        for line in text.lines() {
            let t = line.trim_start();
            if t.starts_with("abi_consts! {") || t.starts_with("abi_ioctls! {") {
                in_list = true;
                continue;
            }
            if in_list && t == "}" {
                in_list = false;
                continue;
            }
            let mut names = Vec::new();
            for p in [
                "pub struct ",
                "pub union ",
                "pub enum ",
                "pub const ",
                "pub static ",
                "list ",
            ] {
                if let Some(n) = ident_after(t, p) {
                    // `list NAME` declares a manifest slice, itself manifest infrastructure.
                    if p != "list " {
                        names.push(n);
                    }
                }
            }
            if in_list && !t.starts_with("///") && !t.starts_with("list ") {
                if let Some(n) = ident_after(t, "") {
                    if t[n.len()..].trim_start().starts_with(':')
                        || t[n.len()..].trim_start().starts_with('=')
                    {
                        names.push(n);
                    }
                }
            }
            for n in names {
                // `pub const fn` and macro metavariables are not items.
                if n == "fn" || n.starts_with('$') {
                    continue;
                }
                seen += 1;
                if !known.contains(n) {
                    escaped.push(format!("{file}: {n}"));
                }
            }
        }
    }
    println!("{seen} public item declarations checked against the manifest");
    assert!(
        seen > 700,
        "scanner found too few items ({seen}): is it still reading the source?"
    );
    assert!(
        escaped.is_empty(),
        "public items missing from the manifest:\n{}",
        escaped.join("\n")
    );
}
