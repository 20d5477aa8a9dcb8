//! What the runtime probes need from an ELF file, whatever the runtime: where a function's code
//! is in the file (a uprobe attaches at a file offset) and its bytes (to decode).

use object::{Object as _, ObjectSection as _, ReadRef};

/// Largest function body read (Go's `newproc1` is about 1 KiB, libuv's `uv__stream_io` 1.7).
pub const MAX_FUNCTION_BYTES: u64 = 64 * 1024;

/// The file offset of the function at `address` (of `size` bytes, as its symbol says) and its
/// code, read from the file; `None` when no section holding file bytes covers it: a damaged
/// header could place it past the end, and a uprobe is never attached where no instruction was
/// read.
pub fn code_at<'data, R: ReadRef<'data>>(
    elf: &object::File<'data, R>,
    address: u64,
    size: u64,
) -> Option<(u64, &'data [u8])> {
    let section = elf.sections().find(|s| {
        address >= s.address() && address - s.address() < s.size() && s.file_range().is_some()
    })?;
    let (section_offset, _) = section.file_range()?;
    let code = section
        .data_range(address, size.clamp(1, MAX_FUNCTION_BYTES))
        .ok()??;
    Some((section_offset + (address - section.address()), code))
}

/// An ELF file's bytes as far as its symbols need them: the headers, the section name table,
/// and the symbol and string tables, read from the file; a read anywhere else fails. Reading
/// an executable whole to look up its symbols made a peak of its size in the agent's memory
/// (Node.js: 99 MB, of which its four symbol and string tables are 17; cargo: 42, of which 6).
pub struct SymbolsOnly {
    len: u64,
    /// File ranges read, by offset: (offset, bytes), not overlapping.
    ranges: Vec<(u64, Vec<u8>)>,
}

/// Most bytes read for one file's symbols (Node.js's are 17 MB): a damaged or hostile header
/// cannot make the agent read more.
const MAX_SYMBOL_BYTES: u64 = 256 << 20;

/// `SHT_SYMTAB`, `SHT_STRTAB`, `SHT_DYNSYM`, `SHT_SYMTAB_SHNDX` (`elf.h`).
const SYMBOL_SECTION_TYPES: [u32; 4] = [2, 3, 11, 18];

impl SymbolsOnly {
    /// Reads `file`'s headers and symbol tables (ELF32 or ELF64, either byte order).
    ///
    /// # Errors
    /// The file cannot be read, or its headers are not ELF.
    pub fn read(file: &std::path::Path) -> std::io::Result<Self> {
        use object::read::elf::{FileHeader as _, SectionHeader as _};
        use std::os::unix::fs::FileExt as _;
        let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        let handle = std::fs::File::open(file)?;
        let len = handle.metadata()?.len();
        let cache = object::ReadCache::new(&handle);
        let kind = object::FileKind::parse(&cache).map_err(|_| invalid("not ELF"))?;
        let mut wanted: Vec<(u64, u64)> = Vec::new();
        macro_rules! ranges_of {
            ($header:ty) => {{
                let header = <$header>::parse(&cache).map_err(|_| invalid("ELF header"))?;
                let endian = header.endian().map_err(|_| invalid("ELF byte order"))?;
                // The whole header as `object` reads it, whatever `e_ehsize` claims.
                wanted.push((0, std::mem::size_of::<$header>() as u64));
                let phoff: u64 = header.e_phoff(endian).into();
                let phsize = u64::from(header.e_phentsize(endian))
                    .checked_mul(u64::from(header.e_phnum(endian)))
                    .ok_or_else(|| invalid("program header size"))?;
                wanted.push((phoff, phsize));
                let shoff: u64 = header.e_shoff(endian).into();
                let shnum = header
                    .shnum(endian, &cache)
                    .map_err(|_| invalid("section count"))?;
                let shsize = u64::from(header.e_shentsize(endian))
                    .checked_mul(shnum as u64)
                    .ok_or_else(|| invalid("section header size"))?;
                wanted.push((shoff, shsize));
                let sections = header
                    .sections(endian, &cache)
                    .map_err(|_| invalid("section headers"))?;
                for section in sections.iter() {
                    if SYMBOL_SECTION_TYPES.contains(&section.sh_type(endian)) {
                        if let Some(range) = section.file_range(endian) {
                            wanted.push(range);
                        }
                    }
                }
            }};
        }
        match kind {
            object::FileKind::Elf64 => ranges_of!(object::elf::FileHeader64<object::Endianness>),
            object::FileKind::Elf32 => ranges_of!(object::elf::FileHeader32<object::Endianness>),
            _ => return Err(invalid("not ELF")),
        }
        // Merged where they touch or overlap, each read once.
        wanted.retain(|&(_, size)| size > 0);
        wanted.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (offset, size) in wanted {
            let end = offset.saturating_add(size).min(len);
            match merged.last_mut() {
                Some((_, last_end)) if offset <= *last_end => *last_end = (*last_end).max(end),
                _ if offset < end => merged.push((offset, end)),
                _ => {}
            }
        }
        let total: u64 = merged.iter().map(|(offset, end)| end - offset).sum();
        if total > MAX_SYMBOL_BYTES {
            return Err(invalid("symbol tables larger than 256 MiB"));
        }
        let mut ranges = Vec::with_capacity(merged.len());
        for (offset, end) in merged {
            let mut bytes = vec![0; usize::try_from(end - offset).map_err(|_| invalid("size"))?];
            handle.read_exact_at(&mut bytes, offset)?;
            ranges.push((offset, bytes));
        }
        Ok(Self { len, ranges })
    }

    /// Bytes read in all.
    #[must_use]
    pub fn resident_bytes(&self) -> u64 {
        self.ranges.iter().map(|(_, b)| b.len() as u64).sum()
    }

    /// The range holding `offset`, and `offset` within it.
    fn at(&self, offset: u64) -> Option<(&[u8], usize)> {
        let index = self.ranges.partition_point(|(start, _)| *start <= offset);
        let (start, bytes) = self.ranges.get(index.checked_sub(1)?)?;
        let within = usize::try_from(offset - start).ok()?;
        (within < bytes.len()).then_some((bytes.as_slice(), within))
    }
}

impl<'a> ReadRef<'a> for &'a SymbolsOnly {
    fn len(self) -> Result<u64, ()> {
        Ok(self.len)
    }

    fn read_bytes_at(self, offset: u64, size: u64) -> Result<&'a [u8], ()> {
        if size == 0 {
            return Ok(&[]);
        }
        let (bytes, within) = self.at(offset).ok_or(())?;
        let size = usize::try_from(size).map_err(|_| ())?;
        bytes
            .get(within..within.checked_add(size).ok_or(())?)
            .ok_or(())
    }

    fn read_bytes_at_until(
        self,
        range: std::ops::Range<u64>,
        delimiter: u8,
    ) -> Result<&'a [u8], ()> {
        let (bytes, within) = self.at(range.start).ok_or(())?;
        let limit = usize::try_from(range.end.saturating_sub(range.start)).map_err(|_| ())?;
        let rest = bytes.get(within..).ok_or(())?;
        let rest = &rest[..rest.len().min(limit)];
        let end = rest.iter().position(|&b| b == delimiter).ok_or(())?;
        Ok(&rest[..end])
    }
}
