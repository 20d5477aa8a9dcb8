//! Go executables: recognised by their `.go.buildinfo` section (every Go toolchain since 1.13
//! writes it, and `strip` and `-ldflags=-s -w` keep it), which also records the toolchain version.
//!
//! Layout (`debug/buildinfo` in Go's standard library): the 14-byte magic `\xff Go buildinf:`,
//! the pointer size, a flags byte. With flag 2 (Go 1.18+) the version follows at offset 32 as a
//! uvarint length and its bytes; before 1.18 the header holds, at offset 16, the address of a Go
//! string header (pointer, length) that points at the version.

use object::{Object as _, ObjectSection as _, ReadCache, ReadRef};

const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
const FLAG_BIG_ENDIAN: u8 = 1;
const FLAG_INLINE_STRINGS: u8 = 2;
/// Longest version string believed (`go1.22.10-X:nocoverageredesign` and the like fit).
const MAX_VERSION: u64 = 128;

#[derive(Debug, thiserror::Error)]
pub enum GoError {
    #[error("cannot parse the executable as ELF: {0}")]
    Elf(#[from] object::Error),
    #[error(".go.buildinfo is malformed: {0}")]
    BuildInfo(&'static str),
}

/// What `.go.buildinfo` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// `go1.19.8`; `None` when the header is of an unknown shape.
    pub version: Option<String>,
}

/// The build info of `file` if it is a Go executable, `None` if it is another ELF file.
pub fn build_info(file: &std::fs::File) -> Result<Option<BuildInfo>, GoError> {
    // Reads only the pages it touches: executables are tens of MB, processes are many.
    let cache = ReadCache::new(file);
    let elf = object::File::parse(&cache)?;
    let Some(section) = elf.section_by_name(".go.buildinfo") else {
        return Ok(None);
    };
    // `data_range` takes virtual addresses.
    let header = section
        .data_range(section.address(), 32)?.ok_or(GoError::BuildInfo("shorter than its header"))?;
    if &header[..14] != MAGIC {
        return Err(GoError::BuildInfo("no magic"));
    }
    let pointer_size = usize::from(header[14]);
    let flags = header[15];
    if flags & FLAG_BIG_ENDIAN != 0 || !matches!(pointer_size, 4 | 8) {
        return Ok(Some(BuildInfo { version: None }));
    }
    let version = if flags & FLAG_INLINE_STRINGS != 0 {
        inline_version(&section)?
    } else {
        let address = read_word(&header[16..], pointer_size);
        let string_header = read_at(&elf, address, 2 * pointer_size as u64)?;
        let pointer = read_word(&string_header, pointer_size);
        let len = read_word(&string_header[pointer_size..], pointer_size);
        if len > MAX_VERSION {
            return Err(GoError::BuildInfo("version longer than 128 bytes"));
        }
        Some(text(&read_at(&elf, pointer, len)?)?)
    };
    Ok(Some(BuildInfo { version }))
}

fn inline_version<'a, R: ReadRef<'a>>(
    section: &object::Section<'a, '_, R>,
) -> Result<Option<String>, GoError> {
    let data = section
        .data_range(section.address() + 32, 10 + MAX_VERSION)
        .ok()
        .flatten()
        .or_else(|| section.data().ok().and_then(|d| d.get(32..)))
        .ok_or(GoError::BuildInfo("no version after the header"))?;
    let (len, used) = uvarint(data).ok_or(GoError::BuildInfo("bad version length"))?;
    if len > MAX_VERSION {
        return Err(GoError::BuildInfo("version longer than 128 bytes"));
    }
    let bytes = data
        .get(used..used + len as usize)
        .ok_or(GoError::BuildInfo("version runs past the section"))?;
    Ok(Some(text(bytes)?))
}

fn text(bytes: &[u8]) -> Result<String, GoError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| GoError::BuildInfo("version is not UTF-8"))
}

fn read_word(bytes: &[u8], size: usize) -> u64 {
    let mut word = [0u8; 8];
    word[..size].copy_from_slice(&bytes[..size]);
    u64::from_le_bytes(word)
}

/// `len` bytes at virtual address `address`, from the section that holds them.
fn read_at<'a, R: ReadRef<'a>>(
    elf: &object::File<'a, R>,
    address: u64,
    len: u64,
) -> Result<Vec<u8>, GoError> {
    for section in elf.sections() {
        let start = section.address();
        if address >= start && address.saturating_add(len) <= start + section.size() {
            if let Some(bytes) = section.data_range(address, len)? {
                return Ok(bytes.to_vec());
            }
        }
    }
    Err(GoError::BuildInfo("an address outside every section"))
}

/// A Go `uvarint`: value and bytes used.
fn uvarint(data: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in data.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uvarints_decode_as_go_writes_them() {
        assert_eq!(uvarint(&[0x08]), Some((8, 1)));
        assert_eq!(uvarint(&[0x96, 0x01]), Some((150, 2)));
        assert_eq!(uvarint(&[0x80]), None);
        assert_eq!(uvarint(&[]), None);
    }

    #[test]
    fn a_non_go_executable_is_not_go() {
        let exe = std::fs::File::open("/proc/self/exe").expect("own executable");
        assert_eq!(build_info(&exe).expect("ELF"), None);
    }
}
