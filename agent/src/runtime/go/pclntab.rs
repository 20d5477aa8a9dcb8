//! Function names and entry addresses from `.gopclntab`, the table the Go runtime itself uses
//! for stack traces: present in every Go executable, also when `-ldflags=-s -w` or `strip`
//! removed `.symtab`.
//!
//! Layout for Go 1.18+ (`runtime/symtab.go`, `pcHeader`): magic `0xfffffff0` (1.18, 1.19) or
//! `0xfffffff1` (1.20+), two zero bytes, the instruction size quantum, the pointer size; then
//! pointer-sized `nfunc`, `nfiles`, `textStart`, and the offsets (from the header) of the
//! function-name table, the compilation units, the file table, the pc tables and the function
//! table. The function table holds `nfunc + 1` pairs of `u32` (entry offset from `textStart`,
//! offset of the function's `_func` from the table), whose first two fields are the entry offset
//! again and the name's offset in the name table.

use super::GoError;

const MAGIC_1_18: u32 = 0xffff_fff0;
const MAGIC_1_20: u32 = 0xffff_fff1;

/// A function found in the table: its entry address and size (to the next function).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub address: u64,
    pub size: u64,
}

fn u32_at(table: &[u8], at: usize) -> Result<u32, GoError> {
    table
        .get(at..add(at, 4)?)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(GoError::Symbols(".gopclntab is truncated"))
}

fn u64_at(table: &[u8], at: usize) -> Result<u64, GoError> {
    table
        .get(at..add(at, 8)?)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or(GoError::Symbols(".gopclntab is truncated"))
}

fn add(a: usize, b: usize) -> Result<usize, GoError> {
    a.checked_add(b)
        .ok_or(GoError::Symbols(".gopclntab offset out of range"))
}

fn usize_of(value: u64) -> Result<usize, GoError> {
    usize::try_from(value).map_err(|_| GoError::Symbols(".gopclntab offset out of range"))
}

/// Looks `names` up in `table` (the whole `.gopclntab` section); names not in it are absent.
pub fn find(table: &[u8], names: &[&str]) -> Result<Vec<(String, Entry)>, GoError> {
    let magic = u32_at(table, 0)?;
    if magic != MAGIC_1_18 && magic != MAGIC_1_20 {
        return Err(GoError::Symbols(
            ".gopclntab of a Go release before 1.18 (or not a pclntab)",
        ));
    }
    if table.get(7) != Some(&8) {
        return Err(GoError::Symbols(".gopclntab is not of a 64-bit program"));
    }
    let nfunc = usize_of(u64_at(table, 8)?)?;
    let text_start = u64_at(table, 24)?;
    let names_at = usize_of(u64_at(table, 32)?)?;
    let functab_at = usize_of(u64_at(table, 64)?)?;
    if nfunc > table.len() / 8 {
        return Err(GoError::Symbols(
            ".gopclntab claims more functions than it holds",
        ));
    }
    let mut found = Vec::new();
    for i in 0..nfunc {
        let pair = add(functab_at, 8 * i)?;
        let entry = u32_at(table, pair)?;
        let func_at = add(
            functab_at,
            usize_of(u64::from(u32_at(table, add(pair, 4)?)?))?,
        )?;
        let name_off = u32_at(table, add(func_at, 4)?)?;
        let name_start = add(names_at, usize_of(u64::from(name_off))?)?;
        let rest = table
            .get(name_start..)
            .ok_or(GoError::Symbols(".gopclntab name outside the table"))?;
        // Only as many bytes as the longest name wanted are looked at: scanning each name to
        // its end would make a crafted table quadratic.
        let wanted = names
            .iter()
            .find(|n| rest.get(..n.len()) == Some(n.as_bytes()) && rest.get(n.len()) == Some(&0));
        if let Some(wanted) = wanted {
            let next = u32_at(table, add(pair, 8)?)?;
            let address = text_start
                .checked_add(u64::from(entry))
                .ok_or(GoError::Symbols(".gopclntab entry out of range"))?;
            found.push((
                (*wanted).to_string(),
                Entry {
                    address,
                    size: u64::from(next.saturating_sub(entry)),
                },
            ));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of `funcs` (name, entry offset), laid out as Go 1.19 writes it.
    fn table(funcs: &[(&str, u32)], end: u32) -> Vec<u8> {
        let header_len = 72u64;
        let mut names = Vec::new();
        let mut name_offs = Vec::new();
        for (name, _) in funcs {
            name_offs.push(u32::try_from(names.len()).expect("small"));
            names.extend_from_slice(name.as_bytes());
            names.push(0);
        }
        let names_at = header_len;
        let functab_at = names_at + names.len() as u64;
        let n = funcs.len();
        let mut functab = Vec::new();
        let funcs_start = u32::try_from(8 * (n + 1)).expect("small");
        for (i, (_, entry)) in funcs.iter().enumerate() {
            functab.extend_from_slice(&entry.to_le_bytes());
            functab.extend_from_slice(
                &(funcs_start + 8 * u32::try_from(i).expect("small")).to_le_bytes(),
            );
        }
        functab.extend_from_slice(&end.to_le_bytes());
        functab.extend_from_slice(&0u32.to_le_bytes());
        for ((_, entry), name_off) in funcs.iter().zip(&name_offs) {
            functab.extend_from_slice(&entry.to_le_bytes());
            functab.extend_from_slice(&name_off.to_le_bytes());
        }
        let mut t = MAGIC_1_18.to_le_bytes().to_vec();
        t.extend_from_slice(&[0, 0, 1, 8]);
        for word in [n as u64, 0, 0x40_1000, names_at, 0, 0, 0, functab_at] {
            t.extend_from_slice(&word.to_le_bytes());
        }
        t.extend_from_slice(&names);
        t.extend_from_slice(&functab);
        t
    }

    #[test]
    fn names_resolve_to_entries_and_sizes() {
        let t = table(
            &[
                ("main.main", 0),
                ("runtime.newproc1", 0x40),
                ("net/http.x", 0x400),
            ],
            0x500,
        );
        let found = find(&t, &["runtime.newproc1", "net/http.x", "absent"]).expect("parsed");
        assert_eq!(
            found,
            vec![
                (
                    "runtime.newproc1".to_string(),
                    Entry {
                        address: 0x40_1040,
                        size: 0x3c0
                    }
                ),
                (
                    "net/http.x".to_string(),
                    Entry {
                        address: 0x40_1400,
                        size: 0x100
                    }
                ),
            ]
        );
    }

    #[test]
    fn damaged_tables_are_errors_not_panics() {
        let t = table(&[("main.main", 0), ("runtime.newproc1", 0x40)], 0x80);
        for cut in 0..t.len() {
            let _ = find(&t[..cut], &["runtime.newproc1"]);
        }
        let mut wrong = t.clone();
        wrong[0] = 0;
        assert!(find(&wrong, &["main.main"]).is_err());
        let mut huge = t.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(find(&huge, &["main.main"]).is_err());
        for field in [32, 64] {
            let mut far = t.clone();
            far[field..field + 8].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
            assert!(find(&far, &["main.main"]).is_err());
        }
    }
}
