//! Where the functions the Go runtime probes attach to are in an executable: their file
//! offsets (what a uprobe attaches at) and, for a function whose return is probed, the offsets
//! of its `RET` instructions, found by decoding its machine code.
//!
//! Functions are looked up in `.symtab`, which `go build` writes unless `-ldflags=-s` strips it.

use std::collections::HashMap;

use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, ReadCache};

use super::GoError;

/// Largest function body decoded (Go's `newproc1` is about 1 KiB).
const MAX_FUNCTION_BYTES: u64 = 64 * 1024;

/// A function found in the executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// File offset of its first instruction.
    pub file_offset: u64,
    /// File offsets of its `RET` instructions (filled in only when asked for).
    pub returns: Vec<u64>,
}

/// Finds `names` in `file`'s symbol table; for those in `with_returns`, also their `RET`s.
/// Names not found are absent from the result.
pub fn find_functions(
    file: &std::fs::File,
    names: &[&str],
    with_returns: &[&str],
) -> Result<HashMap<String, Function>, GoError> {
    let cache = ReadCache::new(file);
    let elf = object::File::parse(&cache)?;
    if elf.symbol_table().is_none() {
        return Err(GoError::Symbols(
            "no symbol table (built with -ldflags=-s, or stripped)",
        ));
    }
    let mut found = HashMap::new();
    for symbol in elf.symbols() {
        let Ok(name) = symbol.name() else { continue };
        if !names.contains(&name) || found.contains_key(name) {
            continue;
        }
        let Some(index) = symbol.section_index() else {
            continue;
        };
        let section = elf.section_by_index(index)?;
        let Some((section_offset, _)) = section.file_range() else {
            continue;
        };
        let address = symbol.address();
        let Some(delta) = address.checked_sub(section.address()) else {
            continue;
        };
        let file_offset = section_offset + delta;
        let returns = if with_returns.contains(&name) {
            let size = symbol.size().min(MAX_FUNCTION_BYTES);
            let code = section
                .data_range(address, size)?
                .ok_or(GoError::Symbols("a function outside its section"))?;
            return_offsets(code, address)
                .into_iter()
                .map(|at| file_offset + (at - address))
                .collect()
        } else {
            Vec::new()
        };
        found.insert(
            name.to_string(),
            Function {
                file_offset,
                returns,
            },
        );
    }
    Ok(found)
}

/// Addresses of the `RET` instructions in `code`, which starts at `address`. Decoding from the
/// function's start, instruction by instruction, so a `0xc3` byte inside another instruction is
/// never taken for a return.
fn return_offsets(code: &[u8], address: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut out = Vec::new();
    while decoder.can_decode() {
        let instruction = decoder.decode();
        if instruction.mnemonic() == Mnemonic::Ret {
            out.push(instruction.ip());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_are_found_by_decoding_not_by_byte_search() {
        // mov eax, 0xc3c3c3c3 ; ret ; nop ; ret
        let code = [0xb8, 0xc3, 0xc3, 0xc3, 0xc3, 0xc3, 0x90, 0xc3];
        assert_eq!(return_offsets(&code, 0x1000), vec![0x1005, 0x1007]);
        // A truncated instruction at the end is not a return.
        assert!(return_offsets(&[0xb8, 0xc3], 0x1000).is_empty());
    }

    #[test]
    fn an_executable_without_the_names_gives_nothing() {
        let exe = std::fs::File::open("/proc/self/exe").expect("own executable");
        let found = find_functions(&exe, &["runtime.newproc1"], &["runtime.newproc1"])
            .expect("a symbol table");
        assert!(found.is_empty());
    }
}
