//! The frame log under the store: cut back after a crash, segments made and deleted, damage on
//! disk found, and stores written before it moved into it.

use std::{os::unix::fs::FileExt as _, path::Path};

use redb::{ReadableDatabase as _, ReadableTable as _};

use super::{
    BY_START, BY_START_IN_DB, FRAMES, FRAMES_IN_DB, Store, StoreConfig, frame_at, frame_log, lock,
    tests::{NOW, expected_ids, filled, span_ids, trace_of},
};

fn segments(s: &Store) -> Vec<u64> {
    s.log.segments().expect("segments")
}

fn segment_path(s: &Store, segment: u64) -> std::path::PathBuf {
    frame_log::dir_of(s.path()).join(format!("{segment:020}.seg"))
}

/// Every span of the store as parsed JSON, in stored order; and how many did not read.
fn dump(s: &Store) -> (Vec<serde_json::Value>, u64) {
    let mut out = Vec::new();
    let damaged = s
        .for_each_span(|json| {
            out.push(serde_json::from_slice(json).expect("json"));
            true
        })
        .expect("dump");
    (out, damaged)
}

/// The first stored frame and its location.
fn first_frame(s: &Store) -> (u64, frame_log::LogAt) {
    let txn = s.db.begin_read().expect("read");
    let frames = txn.open_table(FRAMES).expect("frames");
    let first = frames.first().expect("first").expect("a frame");
    let frame = first.0.value();
    (frame, frame_at(frame, first.1.value()).expect("location"))
}

/// Spans in the frames from `first` on.
fn dump_from(s: &Store, first: u64) -> u64 {
    let txn = s.db.begin_read().expect("read");
    let frames = txn.open_table(FRAMES).expect("frames");
    frames
        .range(first..)
        .expect("range")
        .map(|e| {
            let (f, at) = e.expect("entry");
            u64::from(frame_at(f.value(), at.value()).expect("at").spans)
        })
        .sum()
}

fn reopen(s: Store) -> Store {
    let config = s.config.clone();
    drop(s);
    Store::open_with_run_pairs(config, 500).expect("reopen")
}

/// A new store of at most 1000 spans whose segments take 8 KiB each.
fn small_segments(name: &str) -> (Store, std::path::PathBuf) {
    let path = super::tests::temp_path(name);
    cleanup(&path);
    let s = Store::open_with_run_pairs(
        StoreConfig {
            path: path.clone(),
            retention: std::time::Duration::from_hours(1),
            max_spans: 1000,
        },
        500,
    )
    .expect("open");
    lock(&s.writer).appender.set_segment_bytes(8 * 1024);
    (s, path)
}

fn cleanup(path: &Path) {
    let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
}

#[test]
fn opening_cuts_what_no_commit_names_and_goes_on_from_there() {
    let (s, spans) = filled("log-crash", 1_000_000);
    let (before, _) = dump(&s);
    let last = *segments(&s).last().expect("a segment");
    let last_path = segment_path(&s, last);
    let len = std::fs::metadata(&last_path).expect("segment").len();
    // What a crash can leave: a batch written and never committed, and a segment made for it.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&last_path)
        .expect("open");
    file.write_all_at(&[0xab; 5000], len).expect("torn batch");
    drop(file);
    std::fs::write(segment_path(&s, last + 1), [0xcd; 100]).expect("unnamed segment");
    let s = reopen(s);
    assert_eq!(
        std::fs::metadata(&last_path).expect("segment").len(),
        len,
        "cut back to the last named frame"
    );
    assert_eq!(*segments(&s).last().expect("a segment"), last);
    let (after, damaged) = dump(&s);
    assert_eq!((after.len(), damaged), (before.len(), 0));
    // New frames go after the cut, and read back with the old ones.
    let more: Vec<_> = (3000..3100)
        .map(|i| super::tests::numbered(i, NOW + u64::from(i)))
        .collect();
    s.write(&more, true).expect("write");
    let mut all = spans;
    all.extend(more);
    for trace in [0, 7, 96] {
        assert_eq!(
            span_ids(&s.trace(&trace_of(trace)).expect("trace")),
            expected_ids(&all, trace)
        );
    }
    cleanup(s.path());
}

#[test]
fn segments_fill_in_turn_and_retention_deletes_the_dead_ones() {
    let (s, path) = small_segments("log-segments");
    let spans: Vec<_> = (0..3000)
        .map(|i| super::tests::numbered(i, NOW + u64::from(i)))
        .collect();
    for chunk in spans.chunks(110) {
        s.write(chunk, false).expect("write");
    }
    s.write(&[], true).expect("durable");
    let made = segments(&s);
    assert!(made.len() >= 5, "{made:?}");
    assert_eq!(
        made,
        (0..made.len() as u64).collect::<Vec<_>>(),
        "numbered in turn"
    );
    // A reader of the oldest frame keeps its segment open.
    let (oldest, oldest_at) = first_frame(&s);
    let mut bytes = Vec::new();
    assert!(s.log.read(oldest, &oldest_at, &mut bytes).expect("read"));
    assert!(s.log.keeps_open(oldest_at.segment));
    // Over the span limit: the oldest frames go, and the segments that held only them.
    let removed = s.enforce_retention(NOW).expect("retain");
    // Gone for a reader whose snapshot still names it, and its handle not kept; even were the
    // file there again (a reader that opened it just before the delete), it is not read.
    assert!(!s.log.read(oldest, &oldest_at, &mut bytes).expect("read"));
    assert!(!s.log.keeps_open(oldest_at.segment));
    let again = segment_path(&s, oldest_at.segment);
    std::fs::write(&again, vec![0u8; 64 * 1024]).expect("file again");
    assert!(!s.log.read(oldest, &oldest_at, &mut bytes).expect("read"));
    assert!(!s.log.keeps_open(oldest_at.segment));
    std::fs::remove_file(&again).expect("remove");
    assert!(removed >= 2000, "{removed}");
    let left = segments(&s);
    assert!(left.len() < made.len(), "{left:?} of {made:?}");
    let at = first_frame(&s).1;
    assert_eq!(
        left.first(),
        Some(&at.segment),
        "kept from the first frame's segment"
    );
    // What is left still reads, across segments.
    let (kept, damaged) = dump(&s);
    assert_eq!(damaged, 0);
    assert!((900..=1000).contains(&kept.len()), "{}", kept.len());
    let s = reopen(s);
    assert_eq!(dump(&s).0.len(), kept.len(), "the same after a reopen");
    // A segment lost by hand, in the middle: its frames are reported damaged, not passed over
    // as retention's.
    let left = segments(&s);
    std::fs::remove_file(segment_path(&s, left[left.len() / 2])).expect("lose one");
    let s = reopen(s);
    let (read, damaged) = dump(&s);
    assert!(
        damaged > 0 && read.len() < kept.len(),
        "{damaged} damaged, {} read",
        read.len()
    );
    cleanup(&path);
}

#[test]
fn damaged_frame_bytes_are_reported_and_skipped_never_read_as_spans() {
    let (s, spans) = filled("log-damage", 1_000_000);
    let (frame, at) = first_frame(&s);
    // One byte changed in the middle of the first frame.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(segment_path(&s, at.segment))
        .expect("open");
    let mut byte = [0u8; 1];
    let middle = at.offset + u64::from(at.len) / 2;
    file.read_exact_at(&mut byte, middle).expect("read");
    file.write_all_at(&[byte[0] ^ 0x40], middle)
        .expect("damage");
    drop(file);
    let mut bytes = Vec::new();
    assert!(
        matches!(
            s.log.read(frame, &at, &mut bytes),
            Err(frame_log::LogError::Checksum { .. })
        ),
        "the checksum finds it"
    );
    let (read, damaged) = dump(&s);
    assert_eq!(damaged, 1, "one frame reported");
    assert_eq!(read.len() as u32, 3000 - at.spans);
    // Trace 0's first span was in it; the rest of the trace still reads.
    let expected = expected_ids(&spans, 0);
    let got = span_ids(&s.trace(&trace_of(0)).expect("trace"));
    assert_eq!(got.len(), expected.len() - 1);
    assert!(got.iter().all(|id| expected.contains(id)));
    cleanup(s.path());
}

#[test]
fn stores_written_before_the_frame_log_are_moved_into_it() {
    // Frame 1's header is damaged in the old store: its spans cannot be read, nor its block
    // told apart, so both go.
    const DAMAGED: u64 = 1;
    let (s, spans) = filled("log-move", 1_000_000);
    let (mut before, _) = dump(&s);
    let lost =
        s.span_count().expect("count") - u64::from(first_frame(&s).1.spans) - dump_from(&s, 2);
    before.drain(64..64 + lost as usize);
    let mut summaries = Vec::new();
    s.scan(0, u64::MAX, |sum| {
        // Frame 1's spans: 64 to 64 + lost (numbered ones start at NOW + their number).
        if !(NOW + 64..NOW + 64 + lost).contains(&sum.start_ns) {
            summaries.push((sum.trace_id, sum.start_ns));
        }
        true
    })
    .expect("scan");
    // The same store in the layout of before: frames and start blocks in redb, no log.
    let path = s.path().to_path_buf();
    {
        let txn = s.db.begin_write().expect("write");
        {
            let mut bytes = Vec::new();
            let frames = txn.open_table(FRAMES).expect("frames");
            let mut old = txn.open_table(FRAMES_IN_DB).expect("old frames");
            for entry in frames.iter().expect("iter") {
                let (frame, at) = entry.expect("entry");
                let at = frame_at(frame.value(), at.value()).expect("at");
                assert!(s.log.read(frame.value(), &at, &mut bytes).expect("read"));
                if frame.value() == DAMAGED {
                    bytes = vec![0xff; 8];
                }
                old.insert(frame.value(), bytes.as_slice()).expect("insert");
            }
            let by_start = txn.open_table(BY_START).expect("by start");
            let mut old = txn.open_table(BY_START_IN_DB).expect("old by start");
            for entry in by_start.iter().expect("iter") {
                let (key, at) = entry.expect("entry");
                let (_, frame) = key.value();
                let at = frame_at(frame, at.value()).expect("at");
                assert!(s.log.read(frame, &at, &mut bytes).expect("read"));
                old.insert(key.value(), bytes.as_slice()).expect("insert");
            }
        }
        txn.delete_table(FRAMES).expect("delete");
        txn.delete_table(BY_START).expect("delete");
        txn.commit().expect("commit");
    }
    let config = s.config.clone();
    drop(s);
    std::fs::remove_dir_all(frame_log::dir_of(&path)).expect("no log");
    let s = Store::open_with_run_pairs(config, 500).expect("moved");
    assert_eq!(dump(&s), (before, 0), "every other span, in order");
    assert_eq!(s.span_count().expect("count"), 3000 - lost);
    let mut after = Vec::new();
    s.scan(0, u64::MAX, |sum| {
        after.push((sum.trace_id, sum.start_ns));
        true
    })
    .expect("scan");
    assert_eq!(after, summaries, "the start index too");
    let kept: Vec<_> = spans
        .iter()
        .filter(|sp| !(NOW + 64..NOW + 64 + lost).contains(&sp.start_unix_nano))
        .cloned()
        .collect();
    for trace in [3, 96] {
        assert_eq!(
            span_ids(&s.trace(&trace_of(trace)).expect("trace")),
            expected_ids(&kept, trace)
        );
    }
    let txn = s.db.begin_read().expect("read");
    let tables: Vec<String> = txn
        .list_tables()
        .expect("tables")
        .map(|t| redb::TableHandle::name(&t).to_string())
        .collect();
    assert!(
        !tables
            .iter()
            .any(|t| t == "frames" || t == "frames_by_start"),
        "{tables:?}"
    );
    drop(txn);
    // Retention works on what was moved.
    assert!(
        s.enforce_retention(NOW + 7_200_000_000_000)
            .expect("retain")
            > 0
    );
    cleanup(&path);
}

#[test]
fn a_damaged_location_at_either_end_deletes_nothing_on_opening() {
    let (s, _) = filled("log-damaged-ends", 1_000_000);
    let (before, _) = dump(&s);
    let on_disk = segments(&s);
    let last =
        s.db.begin_read()
            .expect("read")
            .open_table(FRAMES)
            .expect("frames")
            .last()
            .expect("last")
            .expect("a frame")
            .0
            .value();
    // The first: a value no writer makes (segment 2^64 - 1, 4 GiB). The last: a plausible
    // value naming bytes that do not check out.
    let (_, mut wrong) = first_frame(&s);
    wrong.crc ^= 1;
    for (frame, value) in [(0, [0xffu8; 36]), (last, wrong.to_bytes())] {
        let txn = s.db.begin_write().expect("write");
        txn.open_table(FRAMES)
            .expect("frames")
            .insert(frame, &value[..])
            .expect("damage");
        txn.commit().expect("commit");
    }
    let s = reopen(s);
    assert_eq!(segments(&s), on_disk, "no segment deleted");
    let (after, damaged) = dump(&s);
    assert_eq!(damaged, 2, "the two frames whose locations do not read");
    assert_eq!(after.len(), before.len() - 64 - 30, "every other span");
    // New segments are numbered after the ones on disk, not after a damaged value.
    lock(&s.writer).appender.set_segment_bytes(1);
    let more: Vec<_> = (0..200)
        .map(|i| super::tests::numbered(i, NOW + u64::from(i)))
        .collect();
    s.write(&more, true).expect("write");
    let now = segments(&s);
    assert!(
        now.len() > on_disk.len() && now.iter().all(|&n| n < 100),
        "{now:?}"
    );
    assert_eq!(dump(&s).0.len(), after.len() + 200);
    cleanup(s.path());
}

#[test]
fn a_new_store_file_beside_another_stores_frame_log_is_refused_not_emptied() {
    let (s, _) = filled("log-other-store", 1_000_000);
    let config = s.config.clone();
    let on_disk = segments(&s);
    drop(s);
    // The store file moved aside (or deleted); its frame log stays.
    std::fs::rename(&config.path, config.path.with_extension("aside")).expect("move aside");
    let err = Store::open_with_run_pairs(config.clone(), 500)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("belongs to another store") && err.contains("--store"),
        "{err}"
    );
    let log = frame_log::FrameLog::open(&config.path).expect("log");
    assert_eq!(
        log.segments().expect("segments"),
        on_disk,
        "its frames kept"
    );
    cleanup(&config.path);
}

#[test]
fn retention_that_empties_the_store_keeps_only_the_segment_written_to() {
    let (s, path) = small_segments("log-emptied");
    let old = NOW - 7_200_000_000_000;
    let spans: Vec<_> = (0..1000)
        .map(|i| super::tests::numbered(i, old + u64::from(i)))
        .collect();
    s.write(&spans, true).expect("write");
    assert!(segments(&s).len() > 2);
    let mut removed = 0;
    while let Ok(n @ 1..) = s.enforce_retention(NOW) {
        removed += n;
    }
    assert_eq!(removed, 1000, "all past the retention");
    let current = lock(&s.writer).appender.segment();
    assert_eq!(segments(&s), [current]);
    // Writing goes on, and reads back after a reopen.
    let new: Vec<_> = (0..10)
        .map(|i| super::tests::numbered(i, NOW + u64::from(i)))
        .collect();
    s.write(&new, true).expect("write");
    let s = reopen(s);
    assert_eq!(dump(&s).1, 0, "nothing damaged");
    assert_eq!(dump(&s).0.len(), 10);
    cleanup(&path);
}
