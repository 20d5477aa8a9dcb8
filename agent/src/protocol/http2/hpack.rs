//! HPACK (RFC 7541) decoding for one direction of one HTTP/2 connection, able to start in the
//! middle of a connection.
//!
//! Every header block of the direction must be fed in order, reported or not, or the dynamic
//! table drifts. An agent that attaches to a running connection does not know the entries that
//! were inserted before: it keeps the entries inserted since (they are the newest, and indices
//! count from the newest, so they resolve exactly) and reports a reference to anything older as
//! [`Field::Unknown`], never as a guess. A lost block (bytes the capture did not copy) makes
//! every entry unknowable again the same way. Table sizes only ever err towards keeping entries
//! longer than the peer did, which cannot mislead: the peer never refers past its own table.
//!
//! Existing decoders (h2's is private; loona-hpack and others fail a whole block on an index
//! they cannot resolve) do not have that mode, so this one is written here and fuzzed, with a
//! well-kept encoder as the reference in tests. Huffman strings go through `httlib-huffman`.

use std::collections::VecDeque;

use crate::protocol::budget::HEADS;

/// The static table (RFC 7541 Appendix A), index 1 first.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The table size every connection starts with (`SETTINGS_HEADER_TABLE_SIZE`'s default).
pub const DEFAULT_TABLE_SIZE: usize = 4096;
/// The most entry bytes (as RFC 7541 counts them) kept per table, whatever the peer announces:
/// a bound on memory, and only ever a cause of unknown fields, never of wrong ones.
const MAX_KEPT_BYTES: usize = 64 * 1024;
/// The largest table size an update may announce before the block is refused as malformed
/// (`SETTINGS_HEADER_TABLE_SIZE` is a 32-bit value; real peers stay at a few KiB).
const MAX_ANNOUNCED_SIZE: u64 = 1 << 24;
/// Longest string literal accepted (decoded); longer ones make the block malformed.
const MAX_STRING: usize = 64 * 1024;
/// Per-entry overhead RFC 7541 §4.1 counts.
const ENTRY_OVERHEAD: usize = 32;

/// One decoded field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field<'a> {
    Known {
        name: &'a [u8],
        value: &'a [u8],
    },
    /// A reference to a table entry inserted before the agent could see it (or a field whose
    /// name is such a reference): what it was cannot be known.
    Unknown,
}

/// Why a block could not be decoded to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("block ends inside a field")]
    Truncated,
    #[error("integer too large")]
    Overflow,
    #[error("index {0} is in neither table")]
    BadIndex(u64),
    #[error("invalid Huffman code")]
    Huffman,
    #[error("string literal longer than allowed")]
    StringTooLong,
    #[error("table size update too large")]
    TableSize,
}

/// A resolved index: (name, `None` when unknown; value).
type Resolved<'a> = (Option<&'a [u8]>, &'a [u8]);

#[derive(Debug)]
struct Entry {
    /// `None` when the name was a reference to an unknown entry.
    name: Option<Box<[u8]>>,
    value: Box<[u8]>,
    /// Its size as RFC 7541 counts it (a lower bound when the name is unknown).
    size: usize,
}

/// Self-metrics of one decoder.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HpackStats {
    pub blocks: u64,
    /// Fields that referred to entries from before the agent saw the connection, or after a gap.
    pub unknown_fields: u64,
    pub malformed_blocks: u64,
}

/// The dynamic table of one direction, and the decoding of its blocks.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first.
    entries: VecDeque<Entry>,
    size: usize,
    /// The table's maximum size, when known (from the connection's start or an update).
    max_size: Option<usize>,
    /// Whether every entry the peer's table holds is in `entries` (seen from the connection's
    /// start, with no gap since): only then is an index past the end an error, not an unknown.
    complete: bool,
    /// Scratch for Huffman-decoded strings, reused across fields.
    name_buf: Vec<u8>,
    value_buf: Vec<u8>,
    pub stats: HpackStats,
}

impl Decoder {
    /// A decoder for a direction seen from its first byte.
    #[must_use]
    pub fn new() -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            max_size: Some(DEFAULT_TABLE_SIZE),
            complete: true,
            name_buf: Vec::new(),
            value_buf: Vec::new(),
            stats: HpackStats::default(),
        }
    }

    /// A decoder for a direction first seen in the middle: older entries are unknown.
    #[must_use]
    pub fn midstream() -> Self {
        let mut decoder = Self::new();
        decoder.gap();
        decoder
    }

    /// Blocks were lost (not captured, or not decodable): whatever they inserted shifted every
    /// index, so everything known is forgotten and later references to it are unknown.
    pub fn gap(&mut self) {
        self.entries.clear();
        HEADS.give_back(self.size);
        self.size = 0;
        self.max_size = None;
        self.complete = false;
    }

    /// Entries held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Decodes one complete header block, handing each field to `field` in order. On an error
    /// the fields before it were handed over and the table is treated as after a gap.
    pub fn decode(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(Field<'_>),
    ) -> Result<(), HpackError> {
        self.stats.blocks += 1;
        let result = self.decode_fields(block, &mut field);
        if result.is_err() {
            self.stats.malformed_blocks += 1;
            super::bump(&super::TOTALS.malformed_blocks);
            self.gap();
        }
        result
    }

    fn decode_fields(
        &mut self,
        block: &[u8],
        field: &mut impl FnMut(Field<'_>),
    ) -> Result<(), HpackError> {
        let mut pos = 0;
        while pos < block.len() {
            let first = block[pos];
            if first & 0x80 != 0 {
                // Indexed field.
                let index = integer(block, &mut pos, 7)?;
                if index == 0 {
                    return Err(HpackError::BadIndex(0));
                }
                if let Some((Some(name), value)) = self.lookup(index)? {
                    field(Field::Known { name, value });
                } else {
                    self.stats.unknown_fields += 1;
                    super::bump(&super::TOTALS.unknown_fields);
                    field(Field::Unknown);
                }
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update.
                let size = integer(block, &mut pos, 5)?;
                if size > MAX_ANNOUNCED_SIZE {
                    return Err(HpackError::TableSize);
                }
                // Bounded above: usize holds 2^24.
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                self.max_size = Some(size);
                self.evict(0);
            } else {
                // A literal: with incremental indexing (01), without (0000) or never (0001).
                let (prefix, insert) = if first & 0x40 != 0 {
                    (6, true)
                } else {
                    (4, false)
                };
                let index = integer(block, &mut pos, prefix)?;
                let name_known = if index == 0 {
                    let (raw, huffman) = string(block, &mut pos)?;
                    decode_string(raw, huffman, &mut self.name_buf)?;
                    true
                } else {
                    match lookup(&self.entries, self.complete, index)? {
                        Some((Some(name), _)) => {
                            self.name_buf.clear();
                            self.name_buf.extend_from_slice(name);
                            true
                        }
                        _ => false,
                    }
                };
                let (raw, huffman) = string(block, &mut pos)?;
                decode_string(raw, huffman, &mut self.value_buf)?;
                if name_known {
                    field(Field::Known {
                        name: &self.name_buf,
                        value: &self.value_buf,
                    });
                } else {
                    self.stats.unknown_fields += 1;
                    super::bump(&super::TOTALS.unknown_fields);
                    field(Field::Unknown);
                }
                if insert {
                    let name = name_known.then(|| Box::from(self.name_buf.as_slice()));
                    let value = Box::from(self.value_buf.as_slice());
                    self.insert(name, value);
                }
            }
        }
        Ok(())
    }

    /// Resolves an index: `Ok(Some((name, value)))` with `name` `None` for an entry whose name
    /// is unknown; `Ok(None)` for an entry from before what was seen; an error for an index
    /// that cannot exist.
    fn lookup(&self, index: u64) -> Result<Option<Resolved<'_>>, HpackError> {
        lookup(&self.entries, self.complete, index)
    }

    fn insert(&mut self, name: Option<Box<[u8]>>, value: Box<[u8]>) {
        let size = name.as_ref().map_or(0, |n| n.len()) + value.len() + ENTRY_OVERHEAD;
        if self.max_size.is_some_and(|max| size > max) {
            // RFC 7541 §4.4: an entry larger than the table empties it and is not added.
            self.entries.clear();
            HEADS.give_back(self.size);
            self.size = 0;
            return;
        }
        self.evict(size);
        if !HEADS.try_take(size) {
            // No room in the parsers' budget: an entry not kept shifts every later index, so
            // the table is forgotten, as after a lost block (counted by the budget).
            self.gap();
            return;
        }
        self.entries.push_front(Entry { name, value, size });
        self.size += size;
    }

    /// Evicts the oldest entries until `incoming` more bytes fit.
    fn evict(&mut self, incoming: usize) {
        let limit = self.max_size.unwrap_or(MAX_KEPT_BYTES).min(MAX_KEPT_BYTES);
        while self.size + incoming > limit {
            let Some(old) = self.entries.pop_back() else {
                break;
            };
            self.size -= old.size;
            HEADS.give_back(old.size);
        }
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        HEADS.give_back(self.size);
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

/// [`Decoder::lookup`] over the table's fields, so the decoder's scratch buffers stay free to
/// borrow meanwhile.
fn lookup(
    entries: &VecDeque<Entry>,
    complete: bool,
    index: u64,
) -> Result<Option<Resolved<'_>>, HpackError> {
    let i = usize::try_from(index).map_err(|_| HpackError::BadIndex(index))?;
    if let Some((name, value)) = i.checked_sub(1).and_then(|i| STATIC.get(i)) {
        return Ok(Some((Some(name.as_bytes()), value.as_bytes())));
    }
    let dynamic = i - STATIC.len() - 1;
    match entries.get(dynamic) {
        Some(entry) => Ok(Some((entry.name.as_deref(), &entry.value))),
        None if complete => Err(HpackError::BadIndex(index)),
        None => Ok(None),
    }
}

/// An HPACK integer with an `n`-bit prefix at `block[*pos]` (RFC 7541 §5.1).
fn integer(block: &[u8], pos: &mut usize, n: u32) -> Result<u64, HpackError> {
    let mask = (1u64 << n) - 1;
    let first = *block.get(*pos).ok_or(HpackError::Truncated)?;
    *pos += 1;
    let mut value = u64::from(first) & mask;
    if value < mask {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        let byte = *block.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        if shift > 28 {
            return Err(HpackError::Overflow);
        }
        value += (u64::from(byte) & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
}

/// A string literal's raw bytes and whether they are Huffman-coded (RFC 7541 §5.2).
fn string<'a>(block: &'a [u8], pos: &mut usize) -> Result<(&'a [u8], bool), HpackError> {
    let huffman = block.get(*pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(block, pos, 7)?;
    let len = usize::try_from(len).map_err(|_| HpackError::StringTooLong)?;
    if len > MAX_STRING {
        return Err(HpackError::StringTooLong);
    }
    let end = pos.checked_add(len).ok_or(HpackError::Truncated)?;
    let raw = block.get(*pos..end).ok_or(HpackError::Truncated)?;
    *pos = end;
    Ok((raw, huffman))
}

fn decode_string(raw: &[u8], huffman: bool, out: &mut Vec<u8>) -> Result<(), HpackError> {
    out.clear();
    if huffman {
        httlib_huffman::decode(raw, out, httlib_huffman::DecoderSpeed::FourBits)
            .map_err(|_| HpackError::Huffman)?;
        if out.len() > MAX_STRING {
            return Err(HpackError::StringTooLong);
        }
    } else {
        out.extend_from_slice(raw);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(decoder: &mut Decoder, block: &[u8]) -> Result<Vec<String>, HpackError> {
        let mut out = Vec::new();
        decoder.decode(block, |f| {
            out.push(match f {
                Field::Known { name, value } => format!(
                    "{}: {}",
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(value)
                ),
                Field::Unknown => "?".to_string(),
            });
        })?;
        Ok(out)
    }

    fn encoder() -> loona_hpack::Encoder<'static> {
        loona_hpack::Encoder::new()
    }

    fn encode(encoder: &mut loona_hpack::Encoder<'static>, headers: &[(&str, &str)]) -> Vec<u8> {
        encoder.encode(headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    /// RFC 7541 C.4: three requests with Huffman coding; the third reuses the dynamic table.
    #[test]
    fn rfc_7541_c4_requests_with_huffman() {
        let mut d = Decoder::new();
        let first = [
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ];
        assert_eq!(
            fields(&mut d, &first).expect("C.4.1"),
            [
                ":method: GET",
                ":scheme: http",
                ":path: /",
                ":authority: www.example.com"
            ]
        );
        let second = [
            0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
        ];
        assert_eq!(
            fields(&mut d, &second).expect("C.4.2"),
            [
                ":method: GET",
                ":scheme: http",
                ":path: /",
                ":authority: www.example.com",
                "cache-control: no-cache"
            ]
        );
        let third = [
            0x82, 0x87, 0x85, 0xbf, 0x40, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f,
            0x89, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf,
        ];
        assert_eq!(
            fields(&mut d, &third).expect("C.4.3"),
            [
                ":method: GET",
                ":scheme: https",
                ":path: /index.html",
                ":authority: www.example.com",
                "custom-key: custom-value"
            ]
        );
        assert_eq!(d.len(), 3);
    }

    #[test]
    fn agrees_with_a_reference_encoder_over_many_blocks() {
        let mut e = encoder();
        let mut d = Decoder::new();
        for i in 0..200 {
            let path = format!("/pkg.Service/Method{}", i % 7);
            let id = format!("request-{i}");
            let headers = [
                (":method", "POST"),
                (":path", path.as_str()),
                ("content-type", "application/grpc"),
                ("x-request-id", id.as_str()),
            ];
            let block = encode(&mut e, &headers);
            let want: Vec<String> = headers.iter().map(|(n, v)| format!("{n}: {v}")).collect();
            assert_eq!(fields(&mut d, &block).expect("decodes"), want, "block {i}");
        }
    }

    /// `:path: value` as a literal with incremental indexing (name: static index 4).
    fn indexed_path(value: &str) -> Vec<u8> {
        let mut block = vec![0x44, u8::try_from(value.len()).expect("short")];
        block.extend_from_slice(value.as_bytes());
        block
    }

    #[test]
    fn midstream_resolves_new_entries_and_never_guesses_old_ones() {
        // The connection's first block, which the agent does not see, inserts /a.S/Old.
        let mut before = Decoder::new();
        fields(&mut before, &indexed_path("/a.S/Old")).expect("decodes");
        // The agent attaches: a block that inserts /a.S/New, then one that refers to both
        // (63: the second newest entry, Old; 62: the newest, New).
        let mut d = Decoder::midstream();
        assert_eq!(
            fields(&mut d, &indexed_path("/a.S/New")).expect("decodes"),
            [":path: /a.S/New"]
        );
        let refs = [0x80 + 63, 0x80 + 62];
        assert_eq!(
            fields(&mut before, &indexed_path("/a.S/New")).expect("decodes"),
            [":path: /a.S/New"]
        );
        assert_eq!(
            fields(&mut before, &refs).expect("decodes"),
            [":path: /a.S/Old", ":path: /a.S/New"],
            "the decoder that saw everything"
        );
        assert_eq!(
            fields(&mut d, &refs).expect("decodes"),
            ["?", ":path: /a.S/New"],
            "the decoder that attached late"
        );
        assert_eq!(d.stats.unknown_fields, 1);
        // A gap (a block not captured) forgets what was known: never a shifted, wrong entry.
        d.gap();
        assert_eq!(fields(&mut d, &refs).expect("decodes"), ["?", "?"]);
    }

    #[test]
    fn an_unknown_name_still_takes_its_place_in_the_table() {
        // Literal with incremental indexing whose name is dynamic index 62 (unknown midstream),
        // then an indexed reference to the new entry (62 again: newest first).
        let mut d = Decoder::midstream();
        let block = [0x40 + 62, 0x03, b'a', b'b', b'c', 0x80 + 62];
        assert_eq!(fields(&mut d, &block).expect("decodes"), ["?", "?"]);
        assert_eq!(d.len(), 1);
        // A reference from the start of the connection to an entry that does not exist is an
        // error, and the table is forgotten.
        let mut d = Decoder::new();
        assert_eq!(fields(&mut d, &[0x80 + 62]), Err(HpackError::BadIndex(62)));
        assert_eq!(d.stats.malformed_blocks, 1);
    }

    #[test]
    fn size_updates_evict_and_oversized_entries_empty_the_table() {
        let mut d = Decoder::new();
        // Insert "a: b" (34 bytes), then shrink the table to 0 and back.
        let block = [0x40, 0x01, b'a', 0x01, b'b'];
        fields(&mut d, &block).expect("decodes");
        assert_eq!(d.len(), 1);
        fields(&mut d, &[0x20]).expect("update to 0");
        assert_eq!(d.len(), 0);
        fields(&mut d, &[0x3f, 0xe1, 0x1f]).expect("update to 4096");
        fields(&mut d, &block).expect("decodes");
        assert_eq!(d.len(), 1);
        // Malformed: truncated integer, string running past the end, huge update.
        for bad in [
            &[0xff][..],
            &[0x40, 0x05, b'a'],
            &[0x3f, 0xff, 0xff, 0xff, 0x7f],
        ] {
            assert!(fields(&mut Decoder::new(), bad).is_err(), "{bad:?}");
        }
    }
}
