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
