//! Fuzz entry point of the span store's frame decoding: frames are read back from disk, where
//! damage is possible.

/// Input: a format selector (byte 0: formats 1, 2, 3 by its value modulo 3), a span count
/// (byte 1), then the frame's raw (decompressed) bytes; the entry compresses them into a frame
/// and decodes it as the store's readers do, then decodes the whole input as a stored frame
/// (header and compressed block). Invariant: no panic, and no more records than the raw bytes
/// hold headers for.
pub fn store_frame(data: &[u8]) {
    let [format, spans, raw @ ..] = data else {
        return;
    };
    crate::store::fuzz_frame(*format, *spans, raw, data);
}
