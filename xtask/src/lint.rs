//! The kernel-object lint: is this relocatable object safe to link into the OpenBSD kernel?
//!
//! Checks (DESIGN §3), each reported as a [`Violation`]:
//! - no instruction touches x87, MMX, SSE, AVX or mask/tile state (the kernel does not save it);
//! - IBT: every function that can be reached indirectly starts with `endbr64`. That is every global
//!   function and every local one whose address is taken (referenced other than as the target of a
//!   direct `call`/`jmp`/`jcc`); LLVM omits the landing pad only on local functions that are called
//!   directly, exactly as clang does for the rest of the kernel;
//! - no indirect `call`/`jmp`: those must go through the kernel's `__x86_indirect_thunk_*` retpolines;
//! - no GOT, PLT, TLS, dynamic or constructor sections, and only relocations the kernel code model
//!   links (64, PC32, PLT32, 32S, PC64) in loaded sections;
//! - undefined symbols only from `okvm.h`'s host services (`okvm_host_*`) and the kernel's
//!   `mem*`/`bcmp`/retpoline thunks; every exported `okvm_*` entry point is declared in `okvm.h`
//!   and every entry point `okvm.h` declares is exported;
//! - no stack frame larger than [`MAX_FRAME`] bytes (from `-Zemit-stack-sizes` records).

use iced_x86::{
    Decoder, DecoderOptions, FastFormatter, FlowControl, Instruction,
    InstructionInfoFactory, Mnemonic, OpKind,
};
use object::{
    Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget, SectionIndex,
    SymbolKind,
};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::path::Path;

/// Largest stack frame allowed, in bytes: OpenBSD builds its kernel with `-Wframe-larger-than=2047`.
pub const MAX_FRAME: u64 = 2047;

/// Symbols the OpenBSD/amd64 kernel provides to any object linked into it: libkern's `mem*` and
/// `bcmp`, and locore.S's one retpoline thunk (r11 is the only register LLVM uses on x86-64).
/// See `openbsd_glue/NOTES.md`.
pub const KERNEL_PROVIDED: &[&str] =
    &["memcpy", "memset", "memmove", "memcmp", "bcmp", "__x86_indirect_thunk_r11"];

/// ELF x86-64 relocation types that the kernel code model links statically.
const ALLOWED_RELOCS: &[(u32, &str)] = &[
    (1, "R_X86_64_64"),
    (2, "R_X86_64_PC32"),
    (4, "R_X86_64_PLT32"),
    (11, "R_X86_64_32S"),
    (24, "R_X86_64_PC64"),
];

const SHF_ALLOC: u64 = 0x2;
const SHF_EXECINSTR: u64 = 0x4;
const SHF_TLS: u64 = 0x400;
const SHT_INIT_ARRAY: u32 = 14;
const SHT_FINI_ARRAY: u32 = 15;
const SHT_PREINIT_ARRAY: u32 = 16;
const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

/// One reason the object must not be linked into the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// An instruction uses x87/MMX/SSE/AVX state.
    Simd { func: String, insn: String },
    /// A function reachable through an indirect branch lacks its `endbr64` landing pad.
    MissingEndbr { func: String },
    /// An indirect call or jump that bypasses the retpoline thunks.
    IndirectBranch { func: String, insn: String },
    /// A section kind the kernel cannot have (GOT, PLT, TLS, constructors, dynamic linking).
    ForbiddenSection { name: String },
    /// A relocation the kernel's static, kernel-code-model link cannot take.
    ForbiddenRelocation { section: String, offset: u64, r_type: u32 },
    /// An undefined symbol that neither okvm.h's host services nor the kernel provide.
    UndefinedSymbol { name: String },
    /// An exported `okvm_*` symbol that okvm.h does not declare.
    UndeclaredExport { name: String },
    /// An entry point okvm.h declares that the object does not define.
    MissingEntryPoint { name: String },
    /// A host service (`okvm_host_*`) defined by the core instead of the glue.
    HostServiceDefined { name: String },
    /// A function whose stack frame exceeds [`MAX_FRAME`].
    LargeFrame { func: String, bytes: u64 },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Simd { func, insn } => write!(f, "FPU/SIMD instruction in {func}: {insn}"),
            Self::MissingEndbr { func } => write!(f, "no endbr64 at indirectly reachable {func}"),
            Self::IndirectBranch { func, insn } => {
                write!(f, "indirect branch without retpoline in {func}: {insn}")
            }
            Self::ForbiddenSection { name } => write!(f, "forbidden section {name}"),
            Self::ForbiddenRelocation { section, offset, r_type } => {
                write!(f, "forbidden relocation type {r_type} at {section}+{offset:#x}")
            }
            Self::UndefinedSymbol { name } => write!(f, "undefined symbol not provided: {name}"),
            Self::UndeclaredExport { name } => write!(f, "exported {name} is not in okvm.h"),
            Self::MissingEntryPoint { name } => write!(f, "okvm.h declares {name}, not defined"),
            Self::HostServiceDefined { name } => write!(f, "host service {name} defined in core"),
            Self::LargeFrame { func, bytes } => {
                write!(f, "stack frame of {func} is {bytes} bytes (limit {MAX_FRAME})")
            }
        }
    }
}

/// What the lint found: counts of what it examined, the largest frames, and every violation.
#[derive(Debug, Default)]
pub struct Report {
    /// Function symbols examined.
    pub functions: usize,
    /// Instructions decoded.
    pub instructions: usize,
    /// Relocations examined.
    pub relocations: usize,
    /// Undefined symbols, all of which must be allowed.
    pub undefined: BTreeSet<String>,
    /// Stack-size records found, and the largest few `(bytes, function)`.
    pub stack_records: usize,
    /// The largest frames, biggest first.
    pub largest_frames: Vec<(u64, String)>,
    /// Every violation found.
    pub violations: Vec<Violation>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "lint: {} functions, {} instructions, {} relocations, {} stack records",
            self.functions, self.instructions, self.relocations, self.stack_records
        )?;
        let undef: Vec<&str> = self.undefined.iter().map(String::as_str).collect();
        writeln!(f, "lint: undefined symbols: {}", undef.join(" "))?;
        for (bytes, func) in &self.largest_frames {
            writeln!(f, "lint: frame {bytes:>5} bytes  {func}")?;
        }
        for v in &self.violations {
            writeln!(f, "lint: VIOLATION: {v}")?;
        }
        Ok(())
    }
}

/// The C ABI declared by okvm.h: host services the glue provides and entry points the core exports.
#[derive(Debug, Default)]
pub struct HeaderAbi {
    /// `okvm_host_*` functions.
    pub host_services: BTreeSet<String>,
    /// Other `okvm_*` functions.
    pub entry_points: BTreeSet<String>,
}

/// Reads the function names okvm.h declares (`okvm_...(`), ignoring comments.
pub fn parse_header(text: &str) -> HeaderAbi {
    let code = strip_c_comments(text);
    let mut abi = HeaderAbi::default();
    let bytes = code.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if !is_ident(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_ident(bytes[i]) {
            i += 1;
        }
        let word = &code[start..i];
        let mut j = i;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        let preceded_by_ident_char = start > 0 && is_ident(bytes[start - 1]);
        if word.starts_with("okvm_") && !preceded_by_ident_char && bytes.get(j) == Some(&b'(') {
            if word.starts_with("okvm_host_") {
                abi.host_services.insert(word.to_string());
            } else {
                abi.entry_points.insert(word.to_string());
            }
        }
    }
    abi
}

fn strip_c_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map_or("", |e| &r[e + 2..]);
            out.push(' ');
        } else if let Some(r) = rest.strip_prefix("//") {
            rest = r.find('\n').map_or("", |e| &r[e..]);
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// Global `okvm_*` function definitions (not host services): the roots of the object.
pub fn exported_entry_points(data: &[u8]) -> Result<Vec<String>, String> {
    let file = object::File::parse(data).map_err(|e| format!("not an object: {e}"))?;
    Ok(file
        .symbols()
        .filter(|s| s.is_definition() && s.is_global())
        .filter_map(|s| s.name().ok().map(str::to_string))
        .filter(|n| n.starts_with("okvm_") && !n.starts_with("okvm_host_"))
        .collect())
}

/// `cargo xtask lint OBJ [HEADER]`.
pub fn run_cli(args: &[String]) -> Result<(), String> {
    let obj = args.first().ok_or("usage: cargo xtask lint OBJ [HEADER]")?;
    let header = args
        .get(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::util::root().join("kernel/include/okvm.h"));
    let report = lint_file(Path::new(obj), &header)?;
    print!("{report}");
    if report.violations.is_empty() {
        Ok(())
    } else {
        Err(format!("{} lint violation(s)", report.violations.len()))
    }
}

/// Lints the object at `obj` against the C ABI declared in `header`.
pub fn lint_file(obj: &Path, header: &Path) -> Result<Report, String> {
    let data = std::fs::read(obj).map_err(|e| format!("{}: {e}", obj.display()))?;
    let text = std::fs::read_to_string(header).map_err(|e| format!("{}: {e}", header.display()))?;
    lint(&data, &parse_header(&text))
}

/// A function symbol: where it starts, and its name.
struct Func {
    section: SectionIndex,
    offset: u64,
    name: String,
    global: bool,
}

/// Lints an object's bytes against the header's ABI.
pub fn lint(data: &[u8], abi: &HeaderAbi) -> Result<Report, String> {
    let file = object::File::parse(data).map_err(|e| format!("not an object: {e}"))?;
    let mut report = Report::default();
    check_sections(&file, &mut report);
    check_symbols(&file, abi, &mut report);

    let funcs: Vec<Func> = file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.is_definition())
        .filter_map(|s| {
            Some(Func {
                section: s.section_index()?,
                offset: s.address(),
                name: s.name().ok()?.to_string(),
                global: s.is_global(),
            })
        })
        .collect();
    report.functions = funcs.len();
    // Function names by (section, start offset), to name the code a finding is in.
    let mut by_start: BTreeMap<(usize, u64), &str> = BTreeMap::new();
    for f in &funcs {
        by_start.insert((f.section.0, f.offset), &f.name);
    }
    let func_at = |sec: SectionIndex, off: u64| -> String {
        by_start
            .range((sec.0, 0)..=(sec.0, off))
            .next_back()
            .map_or_else(|| format!("section {}+{off:#x}", sec.0), |(_, n)| n.to_string())
    };

    let mut address_taken: HashSet<(usize, u64)> = HashSet::new();
    for section in file.sections() {
        let (flags, _) = elf_flags(&section);
        if flags & SHF_ALLOC == 0 {
            continue;
        }
        let code = if flags & SHF_EXECINSTR != 0 {
            Some(decode_section(&section, &func_at, &mut report)?)
        } else {
            None
        };
        let mut relocated_insns: HashSet<u64> = HashSet::new();
        for (offset, reloc) in section.relocations() {
            report.relocations += 1;
            if let Some(code) = &code {
                if let Some(end) = code.insn_end(offset) {
                    relocated_insns.insert(end);
                }
            }
            let RelocationFlags::Elf { r_type } = reloc.flags() else {
                return Err("not an ELF relocation".into());
            };
            if !ALLOWED_RELOCS.iter().any(|(t, _)| *t == r_type) {
                report.violations.push(Violation::ForbiddenRelocation {
                    section: section.name().unwrap_or("?").to_string(),
                    offset,
                    r_type,
                });
            }
            let RelocationTarget::Symbol(idx) = reloc.target() else { continue };
            let Ok(sym) = file.symbol_by_index(idx) else { continue };
            let Some(sec) = sym.section_index() else { continue };
            // Where the reference points: PC-relative displacements are relative to the end of
            // the instruction that holds them.
            let pc_relative = matches!(r_type, 2 | 4 | 24);
            let mut target = sym.address().wrapping_add(reloc.addend() as u64);
            if let Some(code) = &code {
                if code.direct_branch_disp.contains(&offset) {
                    continue; // the target of a direct call/jmp/jcc: no landing pad needed
                }
                if pc_relative {
                    if let Some(end) = code.insn_end(offset) {
                        target = target.wrapping_add(end - offset);
                    }
                }
            } else if pc_relative {
                target = target.wrapping_add(4);
            }
            address_taken.insert((sec.0, target));
        }
        // Same-section references that the assembler resolved without a relocation.
        for (_, end, target) in code.iter().flat_map(|c| c.ip_rel.iter()) {
            if !relocated_insns.contains(end) {
                address_taken.insert((section.index().0, *target));
            }
        }
    }

    for f in &funcs {
        if !(f.global || address_taken.contains(&(f.section.0, f.offset))) {
            continue;
        }
        let section = file.section_by_index(f.section).map_err(|e| e.to_string())?;
        let bytes = section.data().map_err(|e| e.to_string())?;
        let start = usize::try_from(f.offset).map_err(|e| e.to_string())?;
        if bytes.get(start..start + 4) != Some(&ENDBR64[..]) {
            report.violations.push(Violation::MissingEndbr { func: f.name.clone() });
        }
    }

    check_stack_sizes(&file, &func_at, &mut report)?;
    Ok(report)
}

fn elf_flags(section: &object::Section<'_, '_>) -> (u64, u32) {
    match section.flags() {
        object::SectionFlags::Elf { sh_flags } => {
            let sh_type = match section.kind() {
                object::SectionKind::Elf(t) => t,
                _ => 0,
            };
            (sh_flags, sh_type)
        }
        _ => (0, 0),
    }
}

fn check_sections(file: &object::File<'_>, report: &mut Report) {
    const FORBIDDEN_PREFIXES: &[&str] = &[
        ".got", ".plt", ".tdata", ".tbss", ".init_array", ".fini_array", ".preinit_array",
        ".ctors", ".dtors", ".dynamic", ".dynsym", ".interp",
    ];
    for section in file.sections() {
        let name = section.name().unwrap_or("?");
        let (flags, sh_type) = elf_flags(&section);
        let by_name = FORBIDDEN_PREFIXES
            .iter()
            .any(|p| name == *p || name.starts_with(&format!("{p}.")));
        let by_kind = flags & SHF_TLS != 0
            || matches!(sh_type, SHT_INIT_ARRAY | SHT_FINI_ARRAY | SHT_PREINIT_ARRAY);
        if by_name || by_kind {
            report.violations.push(Violation::ForbiddenSection { name: name.to_string() });
        }
    }
}

fn check_symbols(file: &object::File<'_>, abi: &HeaderAbi, report: &mut Report) {
    let mut exported = BTreeSet::new();
    for sym in file.symbols() {
        let Ok(name) = sym.name() else { continue };
        if name.is_empty() {
            continue;
        }
        if sym.is_undefined() {
            report.undefined.insert(name.to_string());
            if !(KERNEL_PROVIDED.contains(&name) || abi.host_services.contains(name)) {
                report.violations.push(Violation::UndefinedSymbol { name: name.to_string() });
            }
        } else if sym.is_global() && name.starts_with("okvm_") {
            if name.starts_with("okvm_host_") {
                report.violations.push(Violation::HostServiceDefined { name: name.to_string() });
            } else {
                exported.insert(name.to_string());
                if !abi.entry_points.contains(name) {
                    report.violations.push(Violation::UndeclaredExport { name: name.to_string() });
                }
            }
        }
    }
    for name in abi.entry_points.difference(&exported) {
        report.violations.push(Violation::MissingEntryPoint { name: name.clone() });
    }
}

/// The decoded shape of one executable section.
struct Code {
    /// Section offsets of the rel32 displacement of every direct call/jmp/jcc.
    direct_branch_disp: HashSet<u64>,
    /// Instruction start and end offsets, in order.
    insns: Vec<(u64, u64)>,
    /// RIP-relative operands: (instruction start, end, section offset they point to if the
    /// displacement has no relocation, i.e. was resolved by the assembler within the section).
    ip_rel: Vec<(u64, u64, u64)>,
}

impl Code {
    /// The end of the instruction containing `offset`.
    fn insn_end(&self, offset: u64) -> Option<u64> {
        let i = self.insns.partition_point(|(start, _)| *start <= offset);
        let (start, end) = *self.insns.get(i.checked_sub(1)?)?;
        (start..end).contains(&offset).then_some(end)
    }
}

fn decode_section(
    section: &object::Section<'_, '_>,
    func_at: &dyn Fn(SectionIndex, u64) -> String,
    report: &mut Report,
) -> Result<Code, String> {
    let bytes = section.data().map_err(|e| e.to_string())?;
    let mut decoder = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut fmt = FastFormatter::new();
    let mut code = Code { direct_branch_disp: HashSet::new(), insns: Vec::new(), ip_rel: Vec::new() };
    let mut insn = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut insn);
        report.instructions += 1;
        let (start, end) = (insn.ip(), insn.next_ip());
        code.insns.push((start, end));
        if insn.is_ip_rel_memory_operand() {
            code.ip_rel.push((start, end, insn.ip_rel_memory_address()));
        }
        let mut text = || {
            let mut s = String::new();
            fmt.format(&insn, &mut s);
            s
        };
        match insn.flow_control() {
            FlowControl::IndirectBranch | FlowControl::IndirectCall => {
                let func = func_at(section.index(), start);
                report.violations.push(Violation::IndirectBranch { func, insn: text() });
            }
            FlowControl::Call | FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch
                if matches!(insn.op0_kind(), OpKind::NearBranch64) && end - start >= 5 =>
            {
                code.direct_branch_disp.insert(end - 4);
            }
            _ => {}
        }
        if uses_fpu_or_simd(&insn, &mut info) {
            let func = func_at(section.index(), start);
            report.violations.push(Violation::Simd { func, insn: text() });
        }
    }
    Ok(code)
}

/// Does the instruction touch x87, MMX, SSE/AVX or mask/tile register state?
fn uses_fpu_or_simd(insn: &Instruction, info: &mut InstructionInfoFactory) -> bool {
    // Fences, pause, prefetches, cache-line flushes and MOVNTI are tagged SSE/SSE2 by the CPUID
    // tables but touch only integer state.
    if matches!(
        insn.mnemonic(),
        Mnemonic::Lfence
            | Mnemonic::Mfence
            | Mnemonic::Sfence
            | Mnemonic::Pause
            | Mnemonic::Movnti
            | Mnemonic::Prefetchnta
            | Mnemonic::Prefetcht0
            | Mnemonic::Prefetcht1
            | Mnemonic::Prefetcht2
            | Mnemonic::Prefetchw
            | Mnemonic::Clflush
            | Mnemonic::Clflushopt
            | Mnemonic::Nop
    ) {
        return false;
    }
    let regs = info.info(insn).used_registers().iter().any(|r| {
        let r = r.register();
        r.is_xmm() || r.is_ymm() || r.is_zmm() || r.is_mm() || r.is_st() || r.is_k() || r.is_tmm()
    });
    regs || insn.cpuid_features().iter().any(|f| {
        let name = format!("{f:?}");
        ["FPU", "MMX", "SSE", "AVX", "FMA", "F16C", "D3NOW", "XOP", "AMX", "KNC"]
            .iter()
            .any(|p| name.starts_with(p))
    })
}

/// Reads `.stack_sizes` records: (function address as a relocation, ULEB128 frame size).
fn check_stack_sizes(
    file: &object::File<'_>,
    func_at: &dyn Fn(SectionIndex, u64) -> String,
    report: &mut Report,
) -> Result<(), String> {
    let mut frames: Vec<(u64, String)> = Vec::new();
    for section in file.sections().filter(|s| s.name() == Ok(".stack_sizes")) {
        let bytes = section.data().map_err(|e| e.to_string())?;
        for (offset, reloc) in section.relocations() {
            let RelocationTarget::Symbol(idx) = reloc.target() else { continue };
            let sym = file.symbol_by_index(idx).map_err(|e| e.to_string())?;
            let Some(sec) = sym.section_index() else { continue };
            let addr = sym.address().wrapping_add(reloc.addend() as u64);
            let at = usize::try_from(offset + 8).map_err(|e| e.to_string())?;
            let size = read_uleb128(bytes.get(at..).unwrap_or(&[]))
                .ok_or(".stack_sizes: truncated record")?;
            frames.push((size, func_at(sec, addr)));
        }
    }
    report.stack_records = frames.len();
    frames.sort_by(|a, b| b.cmp(a));
    for (bytes, func) in frames.iter().filter(|(b, _)| *b > MAX_FRAME) {
        report.violations.push(Violation::LargeFrame { func: func.clone(), bytes: *bytes });
    }
    frames.truncate(5);
    report.largest_frames = frames;
    Ok(())
}

fn read_uleb128(bytes: &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().take(10).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    //! The lint against hand-made objects: one clean, and one per violation it must catch.
    use super::*;
    use std::process::Command;

    const HEADER: &str = "/* okvm.h for the fixtures */\n\
        void okvm_host_panic(const char *file, unsigned long len, unsigned line); // host\n\
        int okvm_attach(void);\n";

    fn assemble(name: &str) -> Vec<u8> {
        let dir = std::env::temp_dir().join(format!("okvm-lint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = crate::util::root().join("xtask/lint-fixtures").join(format!("{name}.S"));
        let out = dir.join(format!("{name}.o"));
        let st = Command::new("cc").arg("-c").arg(&src).arg("-o").arg(&out).status().unwrap();
        assert!(st.success(), "cc failed on {}", src.display());
        std::fs::read(out).unwrap()
    }

    fn lint_fixture(name: &str) -> Report {
        let report = lint(&assemble(name), &parse_header(HEADER)).unwrap();
        println!("{name}:\n{report}");
        report
    }

    #[test]
    fn header_parsing_splits_services_and_entry_points() {
        let abi = parse_header(HEADER);
        assert_eq!(abi.host_services.iter().collect::<Vec<_>>(), ["okvm_host_panic"]);
        assert_eq!(abi.entry_points.iter().collect::<Vec<_>>(), ["okvm_attach"]);
        // Names inside comments do not count.
        assert!(parse_header("/* okvm_fake(void) */ // okvm_other(\n").entry_points.is_empty());
    }

    #[test]
    fn clean_object_passes() {
        let r = lint_fixture("good");
        assert_eq!(r.violations, vec![]);
        assert!(r.functions >= 3 && r.stack_records == 2, "{r}");
        assert_eq!(r.largest_frames.first().map(|f| f.0), Some(64));
    }

    #[test]
    fn sse_and_x87_and_mmx_are_caught() {
        let r = lint_fixture("bad_simd");
        let simd: Vec<_> = r.violations.iter().filter(|v| matches!(v, Violation::Simd { .. })).collect();
        assert_eq!(simd.len(), 4, "{r}");
    }

    #[test]
    fn missing_landing_pads_are_caught() {
        let r = lint_fixture("bad_endbr");
        let mut missing: Vec<_> = r
            .violations
            .iter()
            .filter_map(|v| match v {
                Violation::MissingEndbr { func } => Some(func.as_str()),
                _ => None,
            })
            .collect();
        missing.sort();
        // The global, the one whose address is loaded with LEA, and the one in a data table;
        // not the local function that is only called directly.
        assert_eq!(missing, ["global_no_pad", "lea_taken", "table_taken"], "{r}");
    }

    #[test]
    fn indirect_branches_are_caught() {
        let r = lint_fixture("bad_indirect");
        let n = r.violations.iter().filter(|v| matches!(v, Violation::IndirectBranch { .. })).count();
        assert_eq!(n, 3, "{r}");
    }

    #[test]
    fn got_tls_ctors_and_32bit_relocs_are_caught() {
        let r = lint_fixture("bad_sections");
        let has = |pred: &dyn Fn(&Violation) -> bool| r.violations.iter().any(pred);
        assert!(has(&|v| matches!(v, Violation::ForbiddenSection { name } if name == ".tbss")), "{r}");
        assert!(has(&|v| matches!(v, Violation::ForbiddenSection { name } if name == ".init_array")), "{r}");
        assert!(has(&|v| matches!(v, Violation::ForbiddenRelocation { r_type: 42, .. })), "{r}");
        assert!(has(&|v| matches!(v, Violation::ForbiddenRelocation { r_type: 10, .. })), "{r}");
    }

    #[test]
    fn foreign_symbols_and_abi_drift_are_caught() {
        let r = lint_fixture("bad_symbols");
        let mut found: Vec<String> = r.violations.iter().map(|v| v.to_string()).collect();
        found.sort();
        assert_eq!(
            found,
            [
                "exported okvm_secret is not in okvm.h",
                "host service okvm_host_panic defined in core",
                "okvm.h declares okvm_attach, not defined",
                "undefined symbol not provided: __x86_indirect_thunk_rax",
                "undefined symbol not provided: printf",
            ],
            "{r}"
        );
    }

    #[test]
    fn large_frames_are_caught() {
        let r = lint_fixture("bad_stack");
        assert_eq!(
            r.violations,
            vec![Violation::LargeFrame { func: "okvm_attach".into(), bytes: 4096 }],
            "{r}"
        );
    }
}
