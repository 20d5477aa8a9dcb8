//! What the programs do for the agent's CPU and memory budget (`--max-cpu`, `--max-memory`).
//! The agent moves a connection through [`Protocol::ShedNext`] → [`Protocol::Shed`] →
//! [`Protocol::ResumeNext`] → [`Protocol::Detecting`]; the programs make each switch at the
//! first syscall of a request (a server's read after a write, a client's write after a read),
//! so the agent sees whole exchanges only. A shed connection sends nothing.
//!
//! The requests a thread reads on a shed server connection are that thread's *hidden work*
//! until it answers them on that connection. Each is remembered by what it asks (a hash of its
//! request line's method and target), so that a request a client end writes on that thread
//! meanwhile is flagged: [`DATA_HIDDEN_WORK`] (the thread serves a hidden request: no visible
//! request it serves is provably this one's parent) and [`DATA_HIDDEN_SAME_ASK`] (a hidden
//! request asks what it asks: it may be that one's forward, as a proxy makes it).
//!
//! Only a process known to make client calls ([`calls_out`]) has its hidden requests read (what
//! each asks, whether an answer is interim): two reads of user memory per request. Any other
//! process's hidden request asks anything and stays hidden work until its connection's next
//! request, its close or its resumption: more than the truth, so a process that starts calling
//! meanwhile gets more refusals, never fewer.
//!
//! Costs nothing while nothing is shed: the switch (`SHED_CONTROL`) is read only on records a
//! client end writes and at a successful `connect` ([`note_caller`]), and the per-thread table
//! is written only on shed connections.

use agent_common::{
    ConnInfo, DATA_HIDDEN_EXACT_ASK, DATA_HIDDEN_SAME_ASK, DATA_HIDDEN_WORK, Direction, Protocol,
    Role, SockTuple,
    ask::{ANY_ASK, ASK_BYTES, ASK_WORDS, ask_hash},
    rank::{rank_hash, rank_of},
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};

/// `[0]`: non-zero while the agent sheds any connection ([`agent_common::MAP_SHED_CONTROL`]).
#[map]
pub static SHED_CONTROL: Array<u32> = Array::with_max_entries(1, 0);

/// Hidden requests a thread keeps apart by what they ask; more are only counted.
const ASKS: usize = 15;

/// A thread's hidden work: what each unanswered hidden request asks (0: a free slot), and how
/// many more there are.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HiddenWork {
    overflow: u32,
    asks: [u32; ASKS],
}
// The agent reads it as 16 `u32`s (`agent_common::MAP_HIDDEN_WORK`).
const _: () = assert!(core::mem::size_of::<HiddenWork>() == 64);

/// Each thread's hidden work, by `pid_tgid`. An LRU: threads die with work open.
#[map]
static HIDDEN_WORK: LruHashMap<u64, HiddenWork> = LruHashMap::with_max_entries(16_384, 0);

/// The processes that make client calls, by `tgid` ([`agent_common::MAP_SHED_CALLERS`]). An LRU:
/// a process it forgets is taken as calling none, which only refuses more parents.
#[map]
static SHED_CALLERS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16_384, 0);

/// Whether process `tgid` is known to make client calls: only then is what its hidden requests
/// ask worth a read of user memory at each one's start and end (two reads that were most of
/// what a shed request cost it). A process that calls nothing has no client write to flag.
#[inline(always)]
pub fn calls_out(tgid: u32) -> bool {
    // SAFETY: a presence test; the value is not read.
    unsafe { SHED_CALLERS.get(&tgid) }.is_some()
}

/// A client end of process `tgid` connected: while anything is shed, it is a caller from now
/// on ([`calls_out`]). Its hidden requests started before keep asking anything.
/// Whether the budget sheds any connection now (the agent's switch, [`SHED_CONTROL`]).
#[inline(always)]
pub fn shedding() -> bool {
    SHED_CONTROL.get(0).copied().unwrap_or(0) != 0
}

#[inline(always)]
pub fn note_caller(tgid: u32) {
    if SHED_CONTROL.get(0).copied().unwrap_or(0) == 0 || calls_out(tgid) {
        return;
    }
    let _ = SHED_CALLERS.insert(&tgid, &1, 0);
}

/// The processes whose new client connections are shed from their opening, with the lowest
/// rank shed ([`agent_common::MAP_SHED_OPENS`]); written by the agent.
#[map]
static SHED_OPENS: HashMap<u32, u64> = HashMap::with_max_entries(1024, 0);

/// The client ends shed at their opening, by [`rank_hash`], until their server end on this host
/// takes its entry ([`agent_common::MAP_SHED_TUPLES`]). An LRU: most entries of client ends
/// whose server is elsewhere are never taken.
#[map]
static SHED_TUPLES: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65_536, 0);

/// Whether the client end `tuple` that process `tgid` just connected is shed from its opening:
/// the agent named the process ([`SHED_OPENS`]) and the connection ranks at or above the share
/// it keeps. Its server end, if on this host, will find it in [`SHED_TUPLES`].
#[inline(always)]
pub fn sheds_opening(tgid: u32, tuple: &SockTuple) -> bool {
    if SHED_CONTROL.get(0).copied().unwrap_or(0) == 0 {
        return false;
    }
    // SAFETY: copied out at once.
    let Some(lowest) = (unsafe { SHED_OPENS.get(&tgid) }).copied() else {
        return false;
    };
    let hash = rank_hash(tuple);
    if rank_of(hash) < lowest {
        return false;
    }
    let _ = SHED_TUPLES.insert(&hash, &1, 0);
    true
}

/// A client end shed at its opening closed, or was never tracked: its server end, if it has
/// not taken the entry yet, never will (and a later connection with the same endpoints, a
/// reused port, must not find it). Out of line: the stack of `sys_enter`, where a close is seen.
#[inline(never)]
pub fn forget_opening(tuple: &SockTuple) {
    let _ = SHED_TUPLES.remove(&rank_hash(tuple));
}

/// Whether the server end of table entry `entry` (socket `fd` of `pid_tgid`), at its first data
/// syscall `syscall` (nothing moved on it yet), belongs to a connection whose client end on this
/// host was shed at its opening ([`sheds_opening`]): it is then moved to [`Protocol::Shed`]
/// here, before its first byte is sent, and the agent is told
/// ([`agent_common::EventKind::ConnShed`]). Out of line: the exit program's stack.
#[inline(never)]
pub fn sheds_server_end(entry: *mut ConnInfo, pid_tgid: u64, fd: i32, syscall: u32) -> bool {
    if entry.is_null() || SHED_CONTROL.get(0).copied().unwrap_or(0) == 0 {
        return false;
    }
    // SAFETY: as in `verdict`.
    let info = unsafe { &mut *entry };
    if info.bytes_sent != 0 || info.bytes_received != 0 {
        return false;
    }
    let hash = rank_hash(&info.tuple);
    // SAFETY: a presence test; the value is not read.
    if unsafe { SHED_TUPLES.get(&hash) }.is_none() {
        return false;
    }
    let _ = SHED_TUPLES.remove(&hash);
    info.protocol = Protocol::Shed as u32;
    info.last_direction = 0;
    crate::syscalls::emit_conn(
        agent_common::EventKind::ConnShed,
        pid_tgid,
        fd,
        info,
        syscall,
        0,
    );
    true
}

/// What to do with a data syscall on a connection in one of the budget's states.
pub mod verdict {
    /// Send it as usual.
    pub const SEND: u32 = 0;
    /// Send it, flagged [`agent_common::DATA_RESUMED`]: the connection is detected afresh.
    pub const RESUMED: u32 = 1;
    /// Send nothing.
    pub const HIDE: u32 = 2;
    /// Send nothing: it starts a hidden request (a server's read after a write), which the
    /// caller hashes (in a process that makes client calls, [`super::calls_out`]) and hands to
    /// [`super::started`].
    pub const HIDE_START: u32 = 3;
    /// Send nothing: it answers the hidden request (a server's write after a read). In a
    /// process that makes client calls, or on a connection on its way back, the caller checks
    /// first that it is no interim response ([`super::is_interim`]) and calls
    /// [`super::answered`]; elsewhere the answer is left to the next request's start.
    pub const HIDE_ANSWER: u32 = 4;
}

/// The verdict for a data syscall moving bytes in `direction` (a [`Direction`]) on the
/// connection of table entry `entry` (role `role`, state `protocol`), making the state's switch
/// if this syscall starts a request; an answer to a hidden request ends it. Out of line: the
/// exit program's stack has no room for it inlined.
#[inline(never)]
pub fn verdict(entry: *mut ConnInfo, role: u32, protocol: u32, direction: u32) -> u32 {
    if entry.is_null() {
        return if protocol == Protocol::Shed as u32 {
            verdict::HIDE
        } else {
            verdict::SEND
        };
    }
    // SAFETY: a pointer from a successful lookup in this run (see `syscalls::tracked`); a racing
    // update can at worst misplace one switch by a syscall, or miscount one hidden request.
    let last = unsafe { (*entry).last_direction };
    // SAFETY: as above.
    unsafe { (*entry).last_direction = direction };
    let server = role == Role::Server as u32;
    let starts = last != 0
        && last != direction
        && direction
            == if server {
                Direction::Ingress as u32
            } else {
                Direction::Egress as u32
            };
    if protocol == Protocol::ShedNext as u32 {
        if !starts {
            return verdict::SEND;
        }
        // SAFETY: as above.
        unsafe { (*entry).protocol = Protocol::Shed as u32 };
    } else if protocol == Protocol::ResumeNext as u32 && starts {
        // SAFETY: as above.
        unsafe {
            (*entry).protocol = Protocol::Detecting as u32;
            (*entry).misses = 0;
        }
        return verdict::RESUMED;
    }
    if !server || last == direction {
        return verdict::HIDE;
    }
    if direction == Direction::Ingress as u32 {
        return verdict::HIDE_START;
    }
    if last != 0 {
        return verdict::HIDE_ANSWER;
    }
    verdict::HIDE
}

/// An interim response was written on the connection of `entry`: it still reads its request.
#[inline(always)]
pub fn still_reading(entry: *mut ConnInfo) {
    if !entry.is_null() {
        // SAFETY: as in `verdict`.
        unsafe { (*entry).last_direction = Direction::Ingress as u32 };
    }
}

/// A hidden request on the connection of `entry` starts, asking `ask` ([`ask_hash`]). One at a
/// time per connection: a read after a write starts the next request, so one still counted
/// (whose answer was left to this moment, [`calls_out`], or not seen) is answered first and no
/// slot leaks.
#[inline(never)]
pub fn started(pid_tgid: u64, entry: *mut ConnInfo, ask: u32) {
    if entry.is_null() {
        return;
    }
    answered(entry);
    // SAFETY: as in `verdict`.
    unsafe {
        (*entry).hidden_ask = ask;
        (*entry).hidden_reader = pid_tgid;
    }
    // In place when the thread has an entry (every request after its first): an LRU update per
    // hidden request cost ~40 ns per syscall on average under wrk against nginx.
    if let Some(work) = HIDDEN_WORK.get_ptr_mut(&pid_tgid) {
        // SAFETY: a pointer from a successful lookup; another CPU may update the same thread's
        // entry at once (an answer on another CPU), which can at worst lose one slot's change,
        // as in `answered`.
        place(unsafe { &mut *work }, ask);
        return;
    }
    let mut work = HiddenWork {
        overflow: 0,
        asks: [0; ASKS],
    };
    place(&mut work, ask);
    let _ = HIDDEN_WORK.insert(&pid_tgid, &work, 0);
}

/// Puts `ask` in the first free slot of `work`, or counts it when none is free.
#[inline(always)]
fn place(work: &mut HiddenWork, ask: u32) {
    for slot in &mut work.asks {
        if *slot == 0 {
            *slot = ask;
            return;
        }
    }
    work.overflow += 1;
}

/// Whether the connection of `entry` still counts a hidden request (one whose answer was left
/// to its next request's start, [`calls_out`]).
#[inline(always)]
pub fn still_counted(entry: *mut ConnInfo) -> bool {
    // SAFETY: as in `verdict`; a null entry counts nothing.
    !entry.is_null() && unsafe { (*entry).hidden_reader } != 0
}

/// The hidden request on the connection of `entry` was answered (or its connection closed, or
/// resumed, or its next request started): it leaves its reader's hidden work, whichever thread
/// answered. Nothing when none is counted.
#[inline(never)]
pub fn answered(entry: *mut ConnInfo) {
    if entry.is_null() {
        return;
    }
    // SAFETY: as in `verdict`.
    let (ask, reader) = unsafe { ((*entry).hidden_ask, (*entry).hidden_reader) };
    if reader == 0 {
        return;
    }
    // SAFETY: as in `verdict` (or a closed connection's own copy, `closed`).
    unsafe {
        (*entry).hidden_ask = 0;
        (*entry).hidden_reader = 0;
    }
    let Some(work) = HIDDEN_WORK.get_ptr_mut(&reader) else {
        return;
    };
    // SAFETY: a pointer from a successful lookup; another CPU may update the same thread's
    // entry at once (its reader on one CPU, an answer on another), which can at worst lose one
    // slot's change.
    let work = unsafe { &mut *work };
    for slot in &mut work.asks {
        if *slot == ask && ask != 0 {
            *slot = 0;
            return;
        }
    }
    work.overflow = work.overflow.saturating_sub(1);
}

/// A shed connection closes: a server's request still counted (read and not answered, or
/// answered by a process that calls nothing, [`calls_out`]) stops counting as its reader's
/// hidden work.
/// `info` is the connection's own copy, out of the table (changed here).
#[inline(never)]
pub fn closed(info: &mut ConnInfo) {
    if info.role == Role::Server as u32 {
        answered(info);
    }
}

/// A request line's first bytes, zero-padded, where [`ask_of`] hashes them.
#[map]
static ASK_SCRATCH: PerCpuArray<[u64; ASK_WORDS]> = PerCpuArray::with_max_entries(1, 0);

/// 1, read so that the compiler cannot fold the arithmetic below into comparisons (which the
/// BPF back end turns into branches: one per step, and the verifier walks every path).
#[unsafe(no_mangle)]
static ONE: u64 = 1;

/// What the request line at `src` asks (`len` bytes there; `user`: in user memory, else
/// kernel memory): a hash of its method and target, the bytes before its second space among
/// the first [`ASK_BYTES`]; [`ANY_ASK`] when those hold no second space (a line cut short, or
/// not read). Never 0 (a free slot).
#[inline(never)]
pub fn ask_of(src: u64, len: u64, user: bool) -> u32 {
    let Some(words) = ASK_SCRATCH.get_ptr_mut(0) else {
        return ANY_ASK;
    };
    // SAFETY: this CPU's slot; programs on one CPU do not nest.
    let words = unsafe { &mut *words };
    *words = [0; ASK_WORDS];
    let len = len.min(ASK_BYTES as u64) as u32;
    if len == 0 {
        return ANY_ASK;
    }
    let dst = words.as_mut_ptr().cast::<core::ffi::c_void>();
    // SAFETY: the destination holds ASK_BYTES; the helpers fail cleanly on a bad source.
    let read = unsafe {
        if user {
            aya_ebpf::helpers::generated::bpf_probe_read_user(dst, len, src as *const _)
        } else {
            aya_ebpf::helpers::generated::bpf_probe_read_kernel(dst, len, src as *const _)
        }
    };
    if read < 0 {
        return ANY_ASK;
    }
    // SAFETY: a plain read of a static.
    ask_hash(words, unsafe { core::ptr::read_volatile(&raw const ONE) })
}

/// Whether the response whose first bytes are at `src` (user memory) is an interim one
/// (`HTTP/1.x 1xx`, such as `100 Continue`): it answers nothing yet.
#[inline(never)]
pub fn is_interim(src: u64) -> bool {
    let Some(words) = ASK_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot; programs on one CPU do not nest.
    let words = unsafe { &mut *words };
    *words = [0; ASK_WORDS];
    let dst = words.as_mut_ptr().cast::<core::ffi::c_void>();
    // SAFETY: the destination holds ASK_BYTES; the helper fails cleanly on a bad source.
    if unsafe { aya_ebpf::helpers::generated::bpf_probe_read_user(dst, 12, src as *const _) } < 0 {
        return false;
    }
    let prefix = u64::from_le_bytes(*b"HTTP/1.\0");
    words[0] & 0x00ff_ffff_ffff_ffff == prefix && (words[1] >> 8) & 0xff == u64::from(b'1')
}

/// The hidden-work flags for a request a client end writes on thread `pid_tgid`, whose first
/// `len` bytes are at `payload` (kernel memory: the record being assembled). Looked up only
/// while something is shed. Inlined: out of line its frame and the exit program's would not fit
/// the 512 bytes a call chain gets.
#[inline(always)]
pub fn hidden_work_flags(pid_tgid: u64, payload: u64, len: u64) -> u32 {
    let shedding = SHED_CONTROL.get(0).copied().unwrap_or(0);
    if shedding == 0 {
        return 0;
    }
    // SAFETY: copied out at once.
    let Some(work) = (unsafe { HIDDEN_WORK.get(&pid_tgid) }).copied() else {
        return 0;
    };
    // SAFETY: a plain read of a static.
    let one = unsafe { core::ptr::read_volatile(&raw const ONE) };
    let ask = u64::from(ask_of(payload, len, false));
    let any = u64::from(ANY_ASK);
    // Arithmetic, not comparisons: 1 when `x` (under 2³²) is zero.
    let is_zero = |x: u64| x.wrapping_sub(one) >> 63;
    let mut open = u64::from(work.overflow);
    let mut same = open | is_zero(ask ^ any);
    let mut exact: u64 = 0;
    for slot in work.asks {
        let slot = u64::from(slot);
        let used = one ^ is_zero(slot);
        open |= used;
        let equal = used & is_zero(slot ^ ask);
        exact |= equal;
        same |= equal | (used & is_zero(slot ^ any));
    }
    let open = one ^ is_zero(open);
    let same = one ^ is_zero(same);
    let exact = exact & (one ^ is_zero(ask ^ any));
    ((open * u64::from(DATA_HIDDEN_WORK))
        | ((open & same) * u64::from(DATA_HIDDEN_SAME_ASK))
        | ((open & exact) * u64::from(DATA_HIDDEN_SAME_ASK | DATA_HIDDEN_EXACT_ASK))) as u32
}

/// [`hidden_work_flags`] for a request whose bytes are not at hand (TLS plaintext): taken as
/// asking anything.
#[inline(never)]
pub fn hidden_work_flags_unread(pid_tgid: u64) -> u32 {
    let shedding = SHED_CONTROL.get(0).copied().unwrap_or(0);
    if shedding == 0 {
        return 0;
    }
    // SAFETY: copied out at once.
    let Some(work) = (unsafe { HIDDEN_WORK.get(&pid_tgid) }).copied() else {
        return 0;
    };
    let mut open = u32::from(work.overflow > 0);
    for slot in work.asks {
        open |= u32::from(slot != 0);
    }
    if open == 0 {
        0
    } else {
        DATA_HIDDEN_WORK | DATA_HIDDEN_SAME_ASK
    }
}
