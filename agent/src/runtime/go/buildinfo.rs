//! Go executables: recognised by their `.go.buildinfo` section (every Go toolchain since 1.13
//! writes it, and `strip` and `-ldflags=-s -w` keep it), which also records the toolchain version.
//!
//! Layout (`debug/buildinfo` in Go's standard library): the 14-byte magic `\xff Go buildinf:`,
//! the pointer size, a flags byte. With flag 2 (Go 1.18+) the version follows at offset 32 as a
//! uvarint length and its bytes; before 1.18 the header holds, at offset 16, the address of a Go
//! string header (pointer, length) that points at the version.

use object::{
    FileKind, ReadCache, ReadRef,
    elf::{FileHeader32, FileHeader64},
    read::elf::{FileHeader, SectionHeader as _, SectionTable},
};

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
    #[error("cannot find Go functions: {0}")]
    Symbols(&'static str),
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
    build_info_of(&ReadCache::new(file))
}

/// As [`build_info`], of an executable's bytes however they are read. Only the ELF header, the
/// section headers and their names, and `.go.buildinfo`'s own bytes are read: `object::File`
/// would read the symbol and string tables too, ~6 MB for cargo's executable, which every agent
/// on a build host met as a peak of resident memory when it looked at each process at start-up.
pub fn build_info_of<'a, R: ReadRef<'a>>(data: R) -> Result<Option<BuildInfo>, GoError> {
    match FileKind::parse(data)? {
        FileKind::Elf64 => build_info_in::<FileHeader64<object::Endianness>, R>(data),
        FileKind::Elf32 => build_info_in::<FileHeader32<object::Endianness>, R>(data),
        _ => Ok(None),
    }
}

fn build_info_in<'a, Elf: FileHeader<Endian = object::Endianness>, R: ReadRef<'a>>(
    data: R,
) -> Result<Option<BuildInfo>, GoError> {
    let header = Elf::parse(data)?;
    let endian = header.endian()?;
    let sections = header.sections(endian, data)?;
    let Some((_, section)) = sections.section_by_name(endian, b".go.buildinfo") else {
        return Ok(None);
    };
    // The header from the section's own bytes (not by address: another section may cover it).
    let (offset, file_size) = section
        .file_range(endian)
        .ok_or(GoError::BuildInfo("a section without file bytes"))?;
    let header = data
        .read_bytes_at(offset, 32.min(file_size))
        .ok()
        .filter(|h| h.len() == 32)
        .ok_or(GoError::BuildInfo("shorter than its header"))?;
    if &header[..14] != MAGIC {
        return Err(GoError::BuildInfo("no magic"));
    }
    let pointer_size = usize::from(header[14]);
    let flags = header[15];
    if flags & FLAG_BIG_ENDIAN != 0 || !matches!(pointer_size, 4 | 8) {
        return Ok(Some(BuildInfo { version: None }));
    }
    let version = if flags & FLAG_INLINE_STRINGS != 0 {
        let len = (10 + MAX_VERSION).min(file_size.saturating_sub(32));
        let data = data
            .read_bytes_at(offset + 32, len)
            .ok()
            .filter(|d| !d.is_empty())
            .ok_or(GoError::BuildInfo("no version after the header"))?;
        let (len, used) = uvarint(data).ok_or(GoError::BuildInfo("bad version length"))?;
        if len > MAX_VERSION {
            return Err(GoError::BuildInfo("version longer than 128 bytes"));
        }
        let bytes = data
            .get(used..used + len as usize)
            .ok_or(GoError::BuildInfo("version runs past the section"))?;
        Some(text(bytes)?)
    } else {
        let string_address = read_word(&header[16..], pointer_size);
        let string_header = read_at(
            &sections,
            endian,
            data,
            string_address,
            2 * pointer_size as u64,
        )?;
        let pointer = read_word(&string_header, pointer_size);
        let len = read_word(&string_header[pointer_size..], pointer_size);
        if len > MAX_VERSION {
            return Err(GoError::BuildInfo("version longer than 128 bytes"));
        }
        Some(text(&read_at(&sections, endian, data, pointer, len)?)?)
    };
    Ok(Some(BuildInfo { version }))
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

/// `len` bytes at virtual address `address`, from the section with file bytes that holds them.
fn read_at<'a, Elf: FileHeader, R: ReadRef<'a>>(
    sections: &SectionTable<'a, Elf, R>,
    endian: Elf::Endian,
    data: R,
    address: u64,
    len: u64,
) -> Result<Vec<u8>, GoError> {
    for section in sections.iter() {
        // Only sections loaded at run time hold what an address points at (`SHF_ALLOC`).
        let flags: u64 = section.sh_flags(endian).into();
        if flags & u64::from(object::elf::SHF_ALLOC) == 0 {
            continue;
        }
        let start: u64 = section.sh_addr(endian).into();
        let size: u64 = section.sh_size(endian).into();
        if address >= start
            && address.saturating_add(len) <= start.saturating_add(size)
            && let Some((offset, file_size)) = section.file_range(endian)
        {
            let within = address - start;
            if within.saturating_add(len) > file_size {
                continue;
            }
            return data
                .read_bytes_at(offset + within, len)
                .map(<[u8]>::to_vec)
                .map_err(|()| GoError::BuildInfo("an address past the file's end"));
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

    /// A minimal ELF64 file with one `.go.buildinfo` section holding `buildinfo`.
    fn elf_with_buildinfo(buildinfo: &[u8]) -> Vec<u8> {
        let names = b"\0.go.buildinfo\0.shstrtab\0";
        let data_at = 64u64;
        let names_at = data_at + buildinfo.len() as u64;
        let headers_at = (names_at + names.len() as u64).next_multiple_of(8);
        let mut elf = Vec::new();
        elf.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        elf.extend_from_slice(&1u32.to_le_bytes());
        elf.extend_from_slice(&0u64.to_le_bytes()); // entry
        elf.extend_from_slice(&0u64.to_le_bytes()); // no program headers
        elf.extend_from_slice(&headers_at.to_le_bytes());
        elf.extend_from_slice(&0u32.to_le_bytes());
        for half in [64u16, 56, 0, 64, 3, 2] {
            elf.extend_from_slice(&half.to_le_bytes());
        }
        elf.extend_from_slice(buildinfo);
        elf.extend_from_slice(names);
        elf.resize(usize::try_from(headers_at).expect("small"), 0);
        let section = |name: u32, kind: u32, flags: u64, addr: u64, offset: u64, size: u64| {
            let mut h = Vec::new();
            h.extend_from_slice(&name.to_le_bytes());
            h.extend_from_slice(&kind.to_le_bytes());
            for word in [flags, addr, offset, size] {
                h.extend_from_slice(&word.to_le_bytes());
            }
            h.extend_from_slice(&[0; 8]); // link, info
            h.extend_from_slice(&16u64.to_le_bytes());
            h.extend_from_slice(&0u64.to_le_bytes());
            h
        };
        elf.extend(section(0, 0, 0, 0, 0, 0));
        let size = buildinfo.len() as u64;
        elf.extend(section(1, 1, 3, 0x40_0000 + data_at, data_at, size));
        elf.extend(section(15, 3, 0, 0, names_at, names.len() as u64));
        elf
    }

    fn parse(elf: &[u8]) -> Result<Option<BuildInfo>, GoError> {
        build_info_of(elf)
    }

    #[test]
    fn the_version_of_a_go_1_18_or_later_header_is_read() {
        let mut info = MAGIC.to_vec();
        info.extend_from_slice(&[8, FLAG_INLINE_STRINGS]);
        info.resize(32, 0);
        info.push(8);
        info.extend_from_slice(b"go1.19.8");
        info.extend_from_slice(&[0; 8]);
        let found = parse(&elf_with_buildinfo(&info)).expect("parsed");
        assert_eq!(
            found,
            Some(BuildInfo {
                version: Some("go1.19.8".into())
            })
        );
    }

    #[test]
    fn a_bad_header_is_an_error_and_a_pre_1_18_header_resolves_its_pointers() {
        let mut info = b"\xff Go buildinf?".to_vec();
        info.resize(48, 0);
        assert!(parse(&elf_with_buildinfo(&info)).is_err());
        // Before 1.18: offset 16 holds the address of a string header (pointer, length), here
        // placed at offset 32 of the section, pointing at the text at offset 48.
        let base = 0x40_0000 + 64u64;
        let mut info = MAGIC.to_vec();
        info.extend_from_slice(&[8, 0]);
        info.extend_from_slice(&(base + 32).to_le_bytes());
        info.extend_from_slice(&[0; 8]);
        info.extend_from_slice(&(base + 48).to_le_bytes());
        info.extend_from_slice(&9u64.to_le_bytes());
        info.extend_from_slice(b"go1.16.15");
        let found = parse(&elf_with_buildinfo(&info)).expect("parsed");
        assert_eq!(found.and_then(|i| i.version).as_deref(), Some("go1.16.15"));
        // A length past the bound is refused, not allocated.
        let at = 40;
        info[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(parse(&elf_with_buildinfo(&info)).is_err());
    }

    /// An executable's bytes that count what is read of them.
    #[derive(Clone, Copy)]
    struct Counted<'a> {
        bytes: &'a [u8],
        read: &'a std::cell::Cell<u64>,
    }

    impl<'a> ReadRef<'a> for Counted<'a> {
        fn len(self) -> Result<u64, ()> {
            Ok(self.bytes.len() as u64)
        }

        fn read_bytes_at(self, offset: u64, size: u64) -> Result<&'a [u8], ()> {
            self.read.set(self.read.get() + size);
            self.bytes.read_bytes_at(offset, size)
        }

        fn read_bytes_at_until(
            self,
            range: std::ops::Range<u64>,
            delimiter: u8,
        ) -> Result<&'a [u8], ()> {
            let found = self.bytes.read_bytes_at_until(range, delimiter)?;
            self.read.set(self.read.get() + found.len() as u64);
            Ok(found)
        }
    }

    #[test]
    fn only_headers_and_the_section_are_read_not_the_symbol_tables() {
        // This test's own executable: a debug build, megabytes of symbols and their names.
        let bytes = std::fs::read("/proc/self/exe").expect("own executable");
        let read = std::cell::Cell::new(0);
        let counted = Counted {
            bytes: &bytes,
            read: &read,
        };
        assert_eq!(build_info_of(counted).expect("ELF"), None);
        let symbols = object::File::parse(bytes.as_slice())
            .ok()
            .and_then(|f| {
                use object::{Object as _, ObjectSection as _};
                f.section_by_name(".symtab").map(|s| s.size())
            })
            .unwrap_or(0);
        assert!(
            symbols > 100_000,
            "the test binary has a symbol table ({symbols} bytes)"
        );
        assert!(
            read.get() < 64 * 1024,
            "{} bytes read to find .go.buildinfo (symbol table: {symbols})",
            read.get()
        );
    }

    #[test]
    fn a_non_go_executable_is_not_go() {
        let exe = std::fs::File::open("/proc/self/exe").expect("own executable");
        assert_eq!(build_info(&exe).expect("ELF"), None);
    }
}
