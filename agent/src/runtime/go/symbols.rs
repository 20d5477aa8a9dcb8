//! Where the functions the Go runtime probes attach to are in an executable: their file
//! offsets (what a uprobe attaches at) and, for a function whose return is probed, the offsets
//! of its `RET` instructions, found by decoding its machine code.
//!
//! Functions are looked up in `.symtab`, which `go build` writes unless `-ldflags=-s` strips it,
//! else in `.gopclntab` ([`super::pclntab`]), which every Go executable keeps.

use std::collections::HashMap;

use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, ReadCache, ReadRef};

use super::{GoError, pclntab};

/// A function found in the executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// File offset of its first instruction.
    pub file_offset: u64,
    /// File offsets of its `RET` instructions (filled in only when asked for).
    pub returns: Vec<u64>,
}

/// Finds `names` in `file`'s symbol table, else in its `.gopclntab` (stripped executables);
/// for those in `with_returns`, also their `RET`s. Names found in neither are absent.
pub fn find_functions(
    file: &std::fs::File,
    names: &[&str],
    with_returns: &[&str],
) -> Result<HashMap<String, Function>, GoError> {
    find_functions_in(&ReadCache::new(file), names, with_returns)
}

/// As [`find_functions`], in an executable's bytes however they are read.
pub fn find_functions_in<'a, R: ReadRef<'a>>(
    data: R,
    names: &[&str],
    with_returns: &[&str],
) -> Result<HashMap<String, Function>, GoError> {
    let elf = object::File::parse(data)?;
    // (address, size) per name.
    let mut located: HashMap<String, (u64, u64)> = HashMap::new();
    for symbol in elf.symbols() {
        if let Ok(name) = symbol.name()
            && names.contains(&name)
        {
            located
                .entry(name.to_string())
                .or_insert((symbol.address(), symbol.size()));
        }
    }
    if located.len() < names.len() {
        let section = elf.section_by_name(".gopclntab").ok_or(GoError::Symbols(
            "neither .symtab nor .gopclntab names them",
        ))?;
        let table = section.data()?;
        for (name, entry) in pclntab::find(table, names)? {
            located.entry(name).or_insert((entry.address, entry.size));
        }
    }
    let mut found = HashMap::new();
    for (name, (address, size)) in located {
        let Some((file_offset, code)) = crate::runtime::elf::code_at(&elf, address, size) else {
            continue;
        };
        let returns = if with_returns.contains(&name.as_str()) {
            return_offsets(code, address)
                .into_iter()
                .map(|at| file_offset + (at - address))
                .collect()
        } else {
            Vec::new()
        };
        found.insert(
            name,
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

    /// The fuzz seed (`fuzz/seeds/go_executable/make_seed.py`): no `.symtab`, so the functions
    /// come from `.gopclntab`, and newproc1's one RET is found past the `mov` that holds 0xc3s.
    #[test]
    fn a_stripped_executable_is_read_through_its_pclntab() {
        let seed = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../fuzz/seeds/go_executable/minimal_go.elf"),
        )
        .expect("seed");
        let names = ["runtime.newproc1", "net/http.(*Request).write"];
        let found = find_functions_in(seed.as_slice(), &names, &names[..1]).expect("found");
        let newproc1 = &found["runtime.newproc1"];
        assert_eq!(newproc1.file_offset, 64);
        assert_eq!(newproc1.returns, vec![64 + 21]);
        assert_eq!(found["net/http.(*Request).write"].file_offset, 64 + 24);
        let info = super::super::buildinfo::build_info_of(seed.as_slice()).expect("ELF");
        assert_eq!(info.and_then(|i| i.version).as_deref(), Some("go1.19.8"));
    }

    #[test]
    fn an_executable_without_the_names_is_an_error() {
        let exe = std::fs::File::open("/proc/self/exe").expect("own executable");
        assert!(
            find_functions(&exe, &["runtime.newproc1"], &["runtime.newproc1"]).is_err(),
            "no symbol and no .gopclntab: an error that says so"
        );
    }
}
