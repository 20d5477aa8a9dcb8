//! The eBPF stack budget, checked on the compiled object: no program's deepest chain of
//! BPF-to-BPF calls may pass the verifier's 512 bytes.
//!
//! Why here and not only at load time: the verifier walks just the code a program's load-time
//! globals leave live, so a chain that only one mode reaches (the in-band mode's, say) fails
//! only when an agent starts in that mode, late in the integration suite. This check reads
//! every chain the code has, whatever the globals, so it errs on the side of refusing.
//!
//! The method follows the kernel's `check_max_stack_depth`: each function's frame is the
//! deepest stack offset it touches (a load or store below `r10`, or a pointer `r10 - n` it
//! derives), rounded up to 16 bytes as with the JIT; a chain's depth is the sum of its frames.
//! Tail calls start a fresh stack and are not followed.

use std::collections::HashMap;

use object::{
    Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SectionIndex, SymbolKind,
};

/// The verifier's limit on a chain's combined stack (`MAX_BPF_STACK`).
const MAX_STACK: u64 = 512;
/// `BPF_JMP | BPF_CALL`.
const OP_CALL: u8 = 0x85;
/// `src_reg` of a call to a BPF function (`BPF_PSEUDO_CALL`), not a helper.
const PSEUDO_CALL: u8 = 1;
/// `BPF_LD | BPF_IMM | BPF_DW`: the one 16-byte instruction.
const OP_LD_IMM64: u8 = 0x18;
/// `BPF_ALU64 | BPF_MOV | BPF_X` and `BPF_ALU64 | BPF_ADD | BPF_K`.
const OP_MOV64_REG: u8 = 0xbf;
const OP_ADD64_IMM: u8 = 0x07;
/// The frame pointer.
const R10: u8 = 10;

/// A function of the object: where its code is and what it calls.
struct Function {
    name: String,
    /// Deepest stack offset touched, in bytes.
    frame: u64,
    /// (section, byte offset) of each function it calls.
    calls: Vec<(SectionIndex, u64)>,
}

/// Every function of `elf`, keyed by (section, byte offset).
fn functions(elf: &object::File<'_>) -> HashMap<(SectionIndex, u64), Function> {
    let mut found = HashMap::new();
    let mut relocations_by_section = HashMap::new();
    for symbol in elf.symbols() {
        let (Some(section_index), SymbolKind::Text) = (symbol.section_index(), symbol.kind())
        else {
            continue;
        };
        let Ok(section) = elf.section_by_index(section_index) else {
            continue;
        };
        let Ok(code) = section.data() else {
            continue;
        };
        let start = symbol.address();
        let end = (start + symbol.size()).min(code.len() as u64);
        // Each call instruction's relocation, by its offset in the section: read once a section.
        let relocations = relocations_by_section
            .entry(section_index)
            .or_insert_with(|| relocations_of(elf, &section));
        let mut function = Function {
            name: symbol.name().unwrap_or("?").to_string(),
            frame: 0,
            calls: Vec::new(),
        };
        // Registers holding `r10` copied, for the `r10 - n` pointers derived from them.
        let mut frame_copies = [false; 11];
        let mut offset = start;
        while offset + 8 <= end {
            let insn = &code[offset as usize..offset as usize + 8];
            let (op, dst, src) = (insn[0], insn[1] & 0x0f, insn[1] >> 4);
            let off = i16::from_le_bytes([insn[2], insn[3]]);
            let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
            let class = op & 0x07;
            // LDX reads through `src`; ST and STX write through `dst`.
            let base = match class {
                0x01 => Some(src),
                0x02 | 0x03 => Some(dst),
                _ => None,
            };
            if base == Some(R10) && off < 0 {
                function.frame = function.frame.max(u64::from(off.unsigned_abs()));
            }
            if op == OP_ADD64_IMM && frame_copies.get(dst as usize) == Some(&true) && imm < 0 {
                function.frame = function.frame.max(u64::from(imm.unsigned_abs()));
            }
            if let Some(copy) = frame_copies.get_mut(dst as usize) {
                // Any other write to `dst` ends the copy (an `add` keeps it a stack pointer).
                *copy = (op == OP_MOV64_REG && src == R10) || (op == OP_ADD64_IMM && *copy);
            }
            if op == OP_CALL && src == PSEUDO_CALL {
                // The immediate counts instructions from the one after the call: from the
                // relocation's symbol when the target is in another section (or named),
                // else from here.
                let delta = (i64::from(imm) + 1) * 8;
                let target = match relocations.get(&offset) {
                    Some(&(section, base)) => (section, base.wrapping_add_signed(delta)),
                    None => (section_index, offset.wrapping_add_signed(delta)),
                };
                function.calls.push(target);
            }
            offset += if op == OP_LD_IMM64 { 16 } else { 8 };
        }
        found.insert((section_index, start), function);
    }
    found
}

/// Where each relocated instruction of `section` points: (its offset, (target section, target
/// symbol's address)).
fn relocations_of(
    elf: &object::File<'_>,
    section: &object::Section<'_, '_>,
) -> HashMap<u64, (SectionIndex, u64)> {
    section
        .relocations()
        .filter_map(|(offset, relocation)| {
            let RelocationTarget::Symbol(target) = relocation.target() else {
                return None;
            };
            let target = elf.symbol_by_index(target).ok()?;
            Some((offset, (target.section_index()?, target.address())))
        })
        .collect()
}

/// The deepest chain from `at`: its depth and the functions on it, outermost first. A call
/// to a function already on the chain (recursion, which the verifier refuses anyway) or to
/// no known function ends the chain there.
fn deepest(
    functions: &HashMap<(SectionIndex, u64), Function>,
    at: (SectionIndex, u64),
    on_chain: &mut Vec<(SectionIndex, u64)>,
) -> (u64, Vec<String>) {
    let Some(function) = functions.get(&at) else {
        return (0, Vec::new());
    };
    on_chain.push(at);
    let mut below = (0, Vec::new());
    for &call in &function.calls {
        if on_chain.contains(&call) {
            continue;
        }
        let chain = deepest(functions, call, on_chain);
        if chain.0 > below.0 || below.1.is_empty() {
            below = chain;
        }
    }
    on_chain.pop();
    let frame = function.frame.div_ceil(16) * 16;
    let mut names = vec![format!("{} ({frame})", readable(&function.name))];
    names.extend(below.1);
    (frame + below.0, names)
}

/// A Rust v0 symbol's last two path segments (`_RNvNtCs…8syscalls10emit_close` →
/// `syscalls::emit_close`); other names as they are.
fn readable(name: &str) -> String {
    if !name.starts_with("_R") {
        return name.to_string();
    }
    let bytes = name.as_bytes();
    let mut segments = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_digit()) {
            let digits_end = (i..bytes.len())
                .find(|&j| !bytes[j].is_ascii_digit())
                .unwrap_or(bytes.len());
            let len: usize = name[i..digits_end].parse().unwrap_or(0);
            let ident = digits_end..(digits_end + len).min(bytes.len());
            if len > 0 && bytes.get(ident.start).is_some_and(|b| !b.is_ascii_digit()) {
                segments.push(&name[ident.clone()]);
                i = ident.end;
                continue;
            }
        }
        i += 1;
    }
    segments[segments.len().saturating_sub(2)..].join("::")
}

#[test]
fn no_program_passes_the_verifiers_stack_limit_in_any_mode() {
    let elf = object::File::parse(super::EBPF_OBJECT).expect("the embedded eBPF object parses");
    let functions = functions(&elf);
    let mut programs = 0;
    let mut over = Vec::new();
    for (&(section, offset), function) in &functions {
        let in_text = elf
            .section_by_index(section)
            .ok()
            .and_then(|s| s.name().ok().map(|n| n == ".text"))
            .unwrap_or(true);
        if in_text {
            continue;
        }
        programs += 1;
        let (depth, chain) = deepest(&functions, (section, offset), &mut Vec::new());
        if depth > MAX_STACK {
            over.push(format!(
                "{}: {depth} bytes: {}",
                function.name,
                chain.join(" → ")
            ));
        }
    }
    assert!(
        programs > 30,
        "only {programs} programs found in the object"
    );
    assert!(
        over.is_empty(),
        "a chain of calls passes the verifier's {MAX_STACK}-byte stack (move locals to a \
         per-CPU scratch, or keep a frame out of the chain):\n{}",
        over.join("\n")
    );
}

#[test]
fn the_check_finds_the_frames_and_calls_it_should() {
    let elf = object::File::parse(super::EBPF_OBJECT).expect("the embedded eBPF object parses");
    let functions = functions(&elf);
    let (&at, exit) = functions
        .iter()
        .find(|(_, f)| f.name == "sys_exit_buffer")
        .expect("sys_exit_buffer is in the object");
    // The data exit's frame holds its record's fields; it calls the in-band and budget helpers.
    assert!(exit.frame >= 128, "sys_exit_buffer's frame: {}", exit.frame);
    assert!(!exit.calls.is_empty(), "sys_exit_buffer calls no function");
    let (depth, chain) = deepest(&functions, at, &mut Vec::new());
    assert!(chain.len() >= 2, "{chain:?}");
    assert!(depth > exit.frame, "{depth} {chain:?}");
    assert_eq!(
        readable("_RNvNtCs9KgAuUboJiI_10agent_ebpf8syscalls10emit_close"),
        "syscalls::emit_close"
    );
}
