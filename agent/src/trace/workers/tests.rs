use super::*;

const C1: SpanKey = (2, 10);
const C2: SpanKey = (2, 20);

/// Stream `id` of connection 1, begun at `began`; its parent is named by its id.
fn stream(id: u64, began: u64) -> Stream<u64> {
    Stream {
        key: (1, id),
        began,
        parent: id,
    }
}

fn alone(id: u64, began: u64) -> Written<u64> {
    Written::Alone(stream(id, began))
}

/// Every call ended before anything the tests look at (at time 0).
const ENDED_EARLY: fn(SpanKey) -> Option<u64> = |_| Some(0);

/// A process (7) serving, with an I/O thread (100).
fn workers() -> Workers<u64> {
    let mut w = Workers::default();
    w.allow(7);
    w.serves(7);
    w.read_by(7, 100);
    w.swept(0);
    w
}

/// Thread `tid` of process 7 writes `written` at `at`; the answer is settled at once, `ends`
/// telling when each waiting call ended (`None`: still out).
fn answer(
    w: &mut Workers<u64>,
    tid: u32,
    at: u64,
    written: Written<u64>,
    ends: impl Fn(SpanKey) -> Option<u64>,
) -> Vec<(SpanKey, Option<u64>)> {
    w.answer(7, tid, at, written);
    w.settle(u64::MAX, true, |key| {
        ends(key).map_or(Call::Out, Call::Ended)
    })
}

#[test]
fn a_workers_calls_belong_to_the_stream_it_answers_next() {
    let mut w = workers();
    assert!(w.applies(7, 200));
    assert!(!w.applies(7, 100), "an I/O thread");
    assert!(
        !w.applies(8, 200),
        "a process serving no multiplexed protocol"
    );
    w.wait(7, 200, C1, 20);
    w.wait(7, 200, C2, 30);
    let settled = answer(&mut w, 200, 40, alone(1, 10), ENDED_EARLY);
    assert_eq!(settled, vec![(C1, Some(1)), (C2, Some(1))]);
    assert_eq!(answer(&mut w, 200, 50, alone(3, 45), ENDED_EARLY), vec![]);
    w.ended(7, stream(1, 10), 40);
    assert_eq!(
        w.stats.unplaced_unanswered, 0,
        "1 was answered by its write"
    );
}

#[test]
fn a_stream_begun_after_the_call_or_several_streams_name_no_parent() {
    let mut w = workers();
    w.wait(7, 200, C1, 20);
    let settled = answer(&mut w, 200, 40, alone(1, 25), ENDED_EARLY);
    assert_eq!(settled, vec![(C1, None)], "1 began after C1");
    w.wait(7, 200, C2, 50);
    let several = Written::Several {
        streams: vec![stream(3, 45), stream(5, 46)],
        unknown: false,
    };
    let settled = answer(&mut w, 200, 60, several, ENDED_EARLY);
    assert_eq!(settled, vec![(C2, None)], "3 or 5");
}

#[test]
fn an_answer_naming_no_worker_in_between_is_a_candidate_too() {
    let mut w = workers();
    // The I/O thread writes 3's answer while the worker's call is out of the picture: the
    // worker may have been serving 3 as well as 1.
    w.wait(7, 200, C1, 20);
    assert_eq!(answer(&mut w, 100, 30, alone(3, 5), ENDED_EARLY), vec![]);
    let settled = answer(&mut w, 200, 40, alone(1, 10), ENDED_EARLY);
    assert_eq!(settled, vec![(C1, None)]);
    // A stream that began after the call cannot have been the worker's: no matter.
    w.wait(7, 200, C2, 50);
    assert_eq!(answer(&mut w, 100, 55, alone(3, 52), ENDED_EARLY), vec![]);
    let settled = answer(&mut w, 200, 60, alone(1, 45), ENDED_EARLY);
    assert_eq!(settled, vec![(C2, Some(1))]);
    // The worker's next answer is for a stream begun after its call: the one unplaced
    // answer in between, begun before, was its own.
    w.wait(7, 200, C1, 70);
    assert_eq!(answer(&mut w, 100, 75, alone(9, 65), ENDED_EARLY), vec![]);
    let settled = answer(&mut w, 200, 80, alone(11, 76), ENDED_EARLY);
    assert_eq!(settled, vec![(C1, Some(9))]);
    // A stream reset without an answer counts as one.
    w.wait(7, 200, C2, 90);
    w.ended(7, stream(13, 85), 95);
    let settled = answer(&mut w, 200, 100, alone(15, 96), ENDED_EARLY);
    assert_eq!(settled, vec![(C2, Some(13))]);
    // A write of unknown streams in between: any of them may have been the worker's.
    w.wait(7, 200, C1, 110);
    let unknown = Written::Several {
        streams: vec![],
        unknown: true,
    };
    assert_eq!(answer(&mut w, 100, 115, unknown, ENDED_EARLY), vec![]);
    let settled = answer(&mut w, 200, 120, alone(17, 105), ENDED_EARLY);
    assert_eq!(settled, vec![(C1, None)]);
    assert_eq!(w.stats.refused_unknown, 1);
}

#[test]
fn an_unplaced_answer_while_the_worker_waited_for_its_call_was_not_its_own() {
    let mut w = workers();
    // C1 is out from 20 to 35; 3's answer, unplaced, comes at 30: not the worker's.
    w.wait(7, 200, C1, 20);
    assert_eq!(answer(&mut w, 100, 30, alone(3, 5), ENDED_EARLY), vec![]);
    let out = |key: SpanKey| (key == C1).then_some(35);
    let settled = answer(&mut w, 200, 40, alone(1, 10), out);
    assert_eq!(settled, vec![(C1, Some(1))]);
    // An answer while a call is still out: the thread runs several handlers at once (an
    // event loop), and is no worker from then on; in its process, a call out proves
    // nothing about what was answered then.
    w.wait(7, 200, C2, 50);
    let settled = answer(&mut w, 200, 60, alone(1, 45), |_| None);
    assert_eq!(settled, vec![(C2, None)]);
    assert!(!w.applies(7, 200));
    assert_eq!(w.stats.interleaving_threads, 1);
    w.wait(7, 300, C1, 70);
    assert_eq!(answer(&mut w, 100, 75, alone(3, 65), ENDED_EARLY), vec![]);
    let out = |key: SpanKey| (key == C1).then_some(78);
    let settled = answer(&mut w, 300, 80, alone(1, 66), out);
    assert_eq!(settled, vec![(C1, None)]);
}

#[test]
fn answers_are_settled_once_the_events_before_them_came() {
    const MS: u64 = 1_000_000;
    let mut w = workers();
    w.wait(7, 200, C1, 10 * MS);
    w.answer(7, 200, 20 * MS, alone(1, 5 * MS));
    let done = |_| Call::Ended(15 * MS);
    assert_eq!(w.settle(21 * MS, false, done), vec![], "too early");
    // The I/O thread's flush of 3 entered before the worker's write, and came after it.
    w.answer(7, 100, 19 * MS, alone(3, 2 * MS));
    assert_eq!(w.settle(20 * MS + SETTLE_NS, false, done), vec![], "1 or 3");
    assert_eq!(w.settle(u64::MAX, true, done), vec![(C1, None)]);
    // Lost events: what began before them is unknown.
    w.wait(7, 200, C2, 30 * MS);
    w.lost_events(31 * MS);
    w.answer(7, 200, 40 * MS, alone(5, 25 * MS));
    assert_eq!(w.settle(u64::MAX, true, done), vec![(C2, None)]);
    assert_eq!(w.stats.refused_unknown, 1);
    // A waiting call exported before its thread answered is forgotten.
    w.wait(7, 200, C1, 50 * MS);
    w.exported(7, 200, C1);
    w.answer(7, 200, 60 * MS, alone(7, 45 * MS));
    assert_eq!(w.settle(u64::MAX, true, done), vec![]);
}

#[test]
fn a_workers_two_calls_rule_out_what_was_answered_while_either_was_out() {
    const MS: u64 = 1_000_000;
    let mut w = workers();
    // C1 (20–30 ms) for stream 9, answered by the I/O thread at 32; C2 (40–50) for 11,
    // while 5 (begun before both) is answered unplaced at 45; the worker answers 11 at 60.
    w.wait(7, 200, C1, 20 * MS);
    w.wait(7, 200, C2, 40 * MS);
    assert_eq!(
        answer(&mut w, 100, 32 * MS, alone(9, 15 * MS), ENDED_EARLY),
        vec![]
    );
    assert_eq!(
        answer(&mut w, 100, 45 * MS, alone(5, MS), ENDED_EARLY),
        vec![]
    );
    let out = |key: SpanKey| Some(if key == C1 { 30 * MS } else { 50 * MS });
    let settled = answer(&mut w, 200, 60 * MS, alone(11, 35 * MS), out);
    assert_eq!(settled, vec![(C1, Some(9)), (C2, Some(11))]);
    // Just after C2 began (41 ms), 5's answer may be the worker's own, flushed late.
    w.wait(7, 200, C1, 70 * MS);
    w.wait(7, 200, C2, 90 * MS);
    assert_eq!(
        answer(&mut w, 100, 82 * MS, alone(9, 65 * MS), ENDED_EARLY),
        vec![]
    );
    assert_eq!(
        answer(&mut w, 100, 91 * MS, alone(5, 60 * MS), ENDED_EARLY),
        vec![]
    );
    let out = |key: SpanKey| Some(if key == C1 { 80 * MS } else { 100 * MS });
    let settled = answer(&mut w, 200, 110 * MS, alone(11, 85 * MS), out);
    assert_eq!(
        settled,
        vec![(C2, Some(11)), (C1, None)],
        "C1 was undecided"
    );
}

#[test]
fn a_stream_found_to_be_one_workers_is_no_others_candidate() {
    let mut w = workers();
    // Workers 200 and 300 call (C1, C2); 9 and 11, both begun before, are answered in one
    // write; each worker then answers a stream begun after its call.
    w.wait(7, 200, C1, 20);
    w.wait(7, 300, C2, 21);
    let several = Written::Several {
        streams: vec![stream(9, 10), stream(11, 12)],
        unknown: false,
    };
    assert_eq!(answer(&mut w, 100, 30, several, ENDED_EARLY), vec![]);
    // 300 served 9 or 11 as far as it can tell; so did 200.
    let settled = answer(&mut w, 300, 40, alone(13, 35), ENDED_EARLY);
    assert_eq!(settled, vec![(C2, None)]);
    // Once one of them is known to be a worker's, the other is the other worker's.
    w.wait(7, 400, C1, 50);
    w.wait(7, 500, C2, 51);
    assert_eq!(answer(&mut w, 100, 55, alone(15, 45), ENDED_EARLY), vec![]);
    let settled = answer(&mut w, 400, 60, alone(17, 58), ENDED_EARLY);
    assert_eq!(settled, vec![(C1, Some(15))], "15 alone in 400's window");
    assert_eq!(answer(&mut w, 100, 62, alone(19, 46), ENDED_EARLY), vec![]);
    let settled = answer(&mut w, 500, 70, alone(21, 65), ENDED_EARLY);
    assert_eq!(settled, vec![(C2, Some(19))], "15 is 400's");
}

#[test]
fn several_candidates_wait_for_another_workers_claim() {
    const MS: u64 = 1_000_000;
    let mut w = workers();
    let done = |_| Call::Ended(0);
    // Worker 200's call: 9 (answered by the I/O thread) or 11 (its own answer, alone).
    w.wait(7, 200, C1, 10 * MS);
    w.answer(7, 100, 20 * MS, alone(9, 5 * MS));
    w.answer(7, 200, 21 * MS, alone(11, 6 * MS));
    assert_eq!(w.settle(30 * MS, false, done), vec![], "undecided");
    // Worker 300's call can only have been for 9: claimed, so 200's was for 11.
    w.wait(7, 300, C2, 8 * MS);
    w.answer(7, 300, 40 * MS, alone(13, 35 * MS));
    let settled = w.settle(50 * MS, false, done);
    assert_eq!(settled, vec![(C2, Some(9)), (C1, Some(11))]);
    // Undecided past the wait: no parent.
    w.wait(7, 200, C1, 60 * MS);
    w.answer(7, 100, 70 * MS, alone(15, 55 * MS));
    w.answer(7, 200, 71 * MS, alone(17, 56 * MS));
    assert_eq!(w.settle(80 * MS, false, done), vec![]);
    assert_eq!(
        w.settle(71 * MS + UNDECIDED_NS + 1, false, done),
        vec![(C1, None)]
    );
}

#[test]
fn a_worker_that_writes_nothing_more_is_decided_once_every_earlier_stream_ended() {
    const MS: u64 = 1_000_000;
    const T: u64 = 100 * MS;
    let mut w = workers();
    let ended = |key: SpanKey| Call::Ended(if key == C1 { T + 20 * MS } else { 0 });
    // Streams 1 and 3 begin; worker 200 calls for one of them (C1, 10–20 ms); 1's answer is
    // flushed by the I/O thread at 22 ms, alone; 3, begun before the call too, is still
    // open: nothing is decided.
    w.began(7, (1, 1), T);
    w.began(7, (1, 3), T + 5 * MS);
    w.wait(7, 200, C1, T + 10 * MS);
    w.answer(7, 100, T + 22 * MS, alone(1, T));
    w.ended(7, stream(1, T), T + 22 * MS);
    assert_eq!(w.settle_ended(T + 40 * MS, ended), vec![], "3 is open");
    // Worker 300 answers 3 alone: 1 was 200's. Only once 3's end is settled.
    w.answer(7, 300, T + 41 * MS, alone(3, T + 5 * MS));
    w.ended(7, stream(3, T + 5 * MS), T + 41 * MS);
    assert_eq!(w.settle_ended(T + 42 * MS, ended), vec![], "too early");
    let settled = w.settle_ended(T + 41 * MS + SETTLE_NS, ended);
    assert_eq!(settled, vec![(C1, Some(1))]);
    assert_eq!(w.stats.decided_by_ends, 1);
}

#[test]
fn a_process_that_may_hide_a_stream_waits_for_its_workers_answer() {
    const MS: u64 = 1_000_000;
    const T: u64 = 100 * MS;
    let mut w = workers();
    let ended = |_| Call::Ended(T + 20 * MS);
    w.began(7, (1, 1), T);
    w.incomplete(7, T + 5 * MS);
    w.wait(7, 200, C1, T + 10 * MS);
    w.answer(7, 100, T + 22 * MS, alone(1, T));
    w.ended(7, stream(1, T), T + 22 * MS);
    assert_eq!(w.settle_ended(T + 100 * MS, ended), vec![]);
    assert_eq!(w.stats.decided_by_ends, 0);
}

#[test]
fn several_candidates_left_are_named_for_links() {
    const MS: u64 = 1_000_000;
    let mut w = workers();
    let done = |_| Call::Ended(0);
    w.wait(7, 200, C1, 10 * MS);
    let several = Written::Several {
        streams: vec![stream(9, 5 * MS), stream(11, 6 * MS)],
        unknown: false,
    };
    w.answer(7, 100, 20 * MS, several);
    w.answer(7, 200, 21 * MS, alone(13, 15 * MS));
    assert_eq!(w.settle(u64::MAX, true, done), vec![(C1, None)]);
    assert_eq!(w.take_one_of(), vec![(C1, vec![9, 11])]);
    assert_eq!(w.stats.several, 1);
}

#[test]
fn a_thread_found_reading_drops_what_it_waited_for() {
    let mut w = workers();
    w.wait(7, 300, C1, 20);
    w.read_by(7, 300);
    assert!(!w.applies(7, 300));
    assert_eq!(answer(&mut w, 300, 40, alone(1, 10), ENDED_EARLY), vec![]);
    assert_eq!(w.stats.refused, 1);
}

#[test]
fn forgotten_answers_rule_out_what_began_before_them() {
    let mut p = Process::default();
    for at in 0..=MAX_UNPLACED as u64 {
        p.note(100 + at, Some(stream(at, 1_000_000)));
    }
    let found = |p: &Process<u64>, window| {
        let mut found = Found::None;
        p.unplaced_between(1, window, &[], &mut found);
        match found {
            Found::None => "none",
            Found::One(_) => "one",
            Found::Several(_) | Found::Unknown => "ambiguous",
        }
    };
    assert_eq!(found(&p, (50, 60)), "ambiguous", "forgotten up to 100");
    assert_eq!(
        found(&p, (200, 300)),
        "none",
        "only later streams in between"
    );
    p.note(UNPLACED_NS * 2, Some(stream(1, 0)));
    assert_eq!(found(&p, (UNPLACED_NS, UNPLACED_NS * 3)), "one");
    assert_eq!(found(&p, (UNPLACED_NS * 2 + 1, UNPLACED_NS * 3)), "none");
}

/// Three workers call (C1, C2, C3); the I/O thread then writes 9, 11 and 13 in one write;
/// each worker then answers a stream begun after its call. 13 began after 200's and 300's
/// calls: they served 9 or 11 between them, so 400, who may have served any of the three,
/// served 13. `meanwhile` runs before 400 answers. Returns what was settled once all three
/// answered.
fn three_workers_and_one_flush(
    w: &mut Workers<u64>,
    meanwhile: impl FnOnce(&mut Workers<u64>),
) -> Vec<(SpanKey, Option<u64>)> {
    const MS: u64 = 1_000_000;
    let done = |_| Call::Ended(0);
    w.wait(7, 200, C1, 10 * MS);
    w.wait(7, 300, C2, 11 * MS);
    w.wait(7, 400, C3, 12 * MS);
    let several = Written::Several {
        streams: vec![
            stream(9, 5 * MS),
            stream(11, 6 * MS),
            stream(13, 11 * MS + MS / 2),
        ],
        unknown: false,
    };
    w.answer(7, 100, 20 * MS, several);
    w.answer(7, 200, 21 * MS, alone(15, 19 * MS));
    w.answer(7, 300, 22 * MS, alone(17, 19 * MS));
    assert_eq!(w.settle(30 * MS, false, done), vec![], "9 or 11, twice");
    meanwhile(w);
    w.answer(7, 400, 23 * MS, alone(19, 19 * MS));
    w.settle(31 * MS, false, done)
}

const C3: SpanKey = (2, 30);

#[test]
fn streams_other_workers_must_have_served_are_set_aside() {
    const MS: u64 = 1_000_000;
    let mut w = workers();
    assert_eq!(
        three_workers_and_one_flush(&mut w, |_| {}),
        vec![(C3, Some(13))]
    );
    assert_eq!(w.stats.decided_by_elimination, 1);
    // 200 and 300 stay undecided, then get links to both.
    let refused = w.settle(22 * MS + UNDECIDED_NS + 1, false, |_| Call::Ended(0));
    assert_eq!(refused, vec![(C1, None), (C2, None)]);
    assert_eq!(w.take_one_of(), vec![(C1, vec![9, 11]), (C2, vec![9, 11])]);
}

#[test]
fn nothing_is_set_aside_in_a_process_that_may_hide_a_stream() {
    let mut w = workers();
    // A stream the agent never saw may be what 200 or 300 served.
    w.incomplete(7, 0);
    assert_eq!(three_workers_and_one_flush(&mut w, |_| {}), vec![]);
    assert_eq!(w.stats.decided_by_elimination, 0);
}

/// Worker 200 serves 1 and calls twice (C1, then C2 at 14 ms); worker 300 serves 3 and calls
/// once. The I/O thread answers 1 and 3 together; 5, begun at 13 ms, is served by a worker that
/// makes no call and answered later. Decided by ends, 200's first call is judged before 5 ends,
/// its second after: the two are one handler, not two that would take 1 and 3 and leave C2
/// with 5.
#[test]
fn one_workers_calls_judged_at_two_times_are_one_handler() {
    const MS: u64 = 1_000_000;
    const T: u64 = 100 * MS;
    let mut w = workers();
    let ends = move |key: SpanKey| {
        Call::Ended(match key {
            C1 => T + 12 * MS,
            C2 => T + 16 * MS,
            _ => T + 13 * MS,
        })
    };
    w.began(7, (1, 1), T);
    w.began(7, (1, 3), T + MS);
    w.wait(7, 200, C1, T + 10 * MS);
    w.wait(7, 300, C3, T + 11 * MS);
    w.began(7, (1, 5), T + 13 * MS);
    w.wait(7, 200, C2, T + 14 * MS);
    let several = Written::Several {
        streams: vec![stream(1, T), stream(3, T + MS)],
        unknown: false,
    };
    w.answer(7, 100, T + 20 * MS, several);
    w.ended(7, stream(1, T), T + 20 * MS);
    w.ended(7, stream(3, T + MS), T + 20 * MS);
    assert_eq!(w.settle_ended(T + 25 * MS + SETTLE_NS, ends), vec![]);
    w.answer(7, 100, T + 30 * MS, alone(5, T + 13 * MS));
    w.ended(7, stream(5, T + 13 * MS), T + 30 * MS);
    let settled = w.settle_ended(T + 30 * MS + SETTLE_NS, ends);
    assert_eq!(settled, vec![], "C2: 1, 3 or 5");
    assert_eq!(w.stats.decided_by_ends, 3);
    assert_eq!(w.stats.decided_by_elimination, 0);
}

/// Three workers point at 9 and 11 only: more handlers than streams, the premise failed
/// there. Long after, two more workers point at 9 and 11 again and a third at 9, 11 or 13:
/// 9 and 11 are never set aside, even with the first three gone.
#[test]
fn streams_more_handlers_pointed_at_are_never_set_aside() {
    const MS: u64 = 1_000_000;
    let mut w = workers();
    let done = |_| Call::Ended(0);
    let keys: Vec<SpanKey> = (1..=6).map(|i| (2, i * 10)).collect();
    for (i, tid) in [200, 300, 400].into_iter().enumerate() {
        w.wait(7, tid, keys[i], 10 * MS);
    }
    w.wait(7, 600, keys[3], 10 * MS + MS / 2);
    w.wait(7, 700, keys[4], 10 * MS + MS / 2);
    w.wait(7, 500, keys[5], 12 * MS);
    let several = Written::Several {
        streams: vec![stream(9, 5 * MS), stream(11, 6 * MS)],
        unknown: false,
    };
    w.answer(7, 100, 20 * MS, several);
    w.answer(7, 100, 30 * MS, alone(13, 11 * MS));
    for (tid, at) in [(200, 21), (300, 22), (400, 23)] {
        w.answer(7, tid, at * MS, alone(u64::from(tid), 19 * MS));
    }
    assert_eq!(w.settle(40 * MS, false, done), vec![]);
    let refused = w.settle(23 * MS + UNDECIDED_NS + 1, false, done);
    assert_eq!(refused.len(), 3, "the first three refused");
    for (tid, at) in [(600, 300), (700, 301), (500, 302)] {
        w.answer(7, tid, at * MS, alone(u64::from(tid), 299 * MS));
    }
    assert_eq!(w.settle(310 * MS, false, done), vec![]);
    assert_eq!(w.stats.decided_by_elimination, 0);
}

#[test]
fn more_workers_than_streams_set_nothing_aside() {
    const MS: u64 = 1_000_000;
    let mut w = workers();
    let done = |_| Call::Ended(0);
    let (c3, c4): (SpanKey, SpanKey) = (C3, (2, 40));
    // Three workers point at 9 and 11 only (one of them served a stream the agent did not
    // place): nothing can be set aside, and the fourth, who may have served 9, 11 or 13, is
    // not decided.
    w.wait(7, 200, C1, 10 * MS);
    w.wait(7, 300, C2, 10 * MS);
    w.wait(7, 400, c3, 10 * MS);
    w.wait(7, 500, c4, 12 * MS);
    let several = Written::Several {
        streams: vec![stream(9, 5 * MS), stream(11, 6 * MS), stream(13, 11 * MS)],
        unknown: false,
    };
    w.answer(7, 100, 20 * MS, several);
    for (tid, at) in [(200, 21), (300, 22), (400, 23), (500, 24)] {
        w.answer(7, tid, at * MS, alone(u64::from(tid), 19 * MS));
    }
    assert_eq!(w.settle(30 * MS, false, done), vec![]);
    // Refused one by one at their deadlines: the first refusals do not leave the others a
    // stream to set aside.
    let refused = w.settle(24 * MS + UNDECIDED_NS + 1, false, done);
    assert_eq!(
        refused,
        vec![(C1, None), (C2, None), (c3, None), (c4, None)]
    );
    assert_eq!(w.stats.decided_by_elimination, 0);
}

#[test]
fn a_connection_whose_streams_cannot_be_read_keeps_its_process_from_being_judged_by_ends() {
    const MS: u64 = 1_000_000;
    const T: u64 = 100 * MS;
    const LATER: u64 = T + INCOMPLETE_NS + 100 * MS;
    let mut w = workers();
    let ended = |key: SpanKey| {
        Call::Ended(if key == C1 {
            T + 20 * MS
        } else {
            LATER + 20 * MS
        })
    };
    // A server connection of the process was given up long before; it is still open.
    w.hides_streams(7, 99);
    w.began(7, (1, 1), T);
    w.wait(7, 200, C1, T + 10 * MS);
    w.answer(7, 100, T + 22 * MS, alone(1, T));
    w.ended(7, stream(1, T), T + 22 * MS);
    assert_eq!(w.settle_ended(LATER, ended), vec![], "may hide a stream");
    // Closed: C1 began while it hid streams, and one of them may have been its worker's.
    w.conn_closed(99, T + 30 * MS);
    assert_eq!(w.settle_ended(LATER, ended), vec![], "began while hidden");
    // A call made once the process is known whole again is judged.
    w.began(7, (1, 3), LATER);
    w.wait(7, 300, C2, LATER + 10 * MS);
    w.answer(7, 100, LATER + 22 * MS, alone(3, LATER));
    w.ended(7, stream(3, LATER), LATER + 22 * MS);
    let settled = w.settle_ended(LATER + 30 * MS + SETTLE_NS, ended);
    assert_eq!(settled, vec![(C2, Some(3))]);
}

/// A peer whose thread turns out to read a multiplexed connection was no worker: its
/// candidates say nothing, and what it waited for gets no parent.
#[test]
fn a_thread_found_reading_sets_nothing_aside() {
    let mut w = workers();
    let settled = three_workers_and_one_flush(&mut w, |w| w.read_by(7, 300));
    assert_eq!(settled, vec![], "9, 11 or 13: 300 was no worker");
    assert_eq!(w.stats.decided_by_elimination, 0);
}
