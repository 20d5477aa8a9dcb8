//! Trace ids as spans share them ([`TraceRef`]): a union-find, so that a span that learns its
//! parent late moves its whole subtree into the parent's trace.

use std::{cell::RefCell, rc::Rc};

use crate::trace::ids::TraceId;

/// A trace id that can be redirected: spans share it, and a root that learns its parent late
/// becomes an alias of the parent's trace.
#[derive(Debug, Clone)]
pub(super) struct TraceRef(Rc<RefCell<TraceNode>>);

#[derive(Debug)]
enum TraceNode {
    Root(Root),
    Alias(TraceRef),
}

/// How far a trace's id is known outside this agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Known {
    /// Not at all: the id may still change (a join may give it another trace's).
    No,
    /// Fixed: a header or another agent gave it, a request carried it in-band, it was
    /// announced. It never changes, and a trace that joins this one takes it; an id not fixed
    /// yet may still take a fixed one ([`TraceRef::join`]).
    Fixed,
    /// Fixed, and given out where it was certainly used: a span of it exported, or an answer
    /// to another agent's question about one of its spans (whose SERVER span there joined it).
    /// An announcement alone is not: the server it goes to may run no agent.
    Used,
}

/// What the spans of one trace share.
#[derive(Debug)]
struct Root {
    id: TraceId,
    /// No later evidence can move it into another trace. Only a SERVER span whose client has
    /// not been seen starts an unsettled trace.
    settled: bool,
    /// Whether its id is known outside this agent ([`Known`]).
    known: Known,
    /// The budget's shedding drops it ([`super::shedding`]).
    shed: bool,
    /// Its spans not finished yet: while the budget sheds, finished spans wait for the whole
    /// trace (a late drop must not leave exported spans without their parent).
    open: u32,
}

impl TraceRef {
    fn with(id: TraceId, settled: bool, fixed: bool) -> Self {
        let known = if fixed { Known::Fixed } else { Known::No };
        Self(Rc::new(RefCell::new(TraceNode::Root(Root {
            id,
            settled,
            known,
            shed: false,
            open: 0,
        }))))
    }

    /// A new trace, its id this agent's own.
    pub(super) fn new(id: TraceId) -> Self {
        Self::with(id, true, false)
    }

    /// A trace whose id came from outside (a header, another agent, a request's in-band
    /// context).
    pub(super) fn external(id: TraceId) -> Self {
        Self::with(id, true, true)
    }

    /// A trace that may still join its client's (a SERVER span seen before its client).
    pub(super) fn unsettled(id: TraceId) -> Self {
        Self::with(id, false, false)
    }

    /// This span's own trace made unsettled (it waits for a rule), its id as fixed as it was.
    pub(super) fn unsettled_like(&self) -> Self {
        let like = Self::with(self.id(), false, false);
        let known = self.at_root(|r| r.known).unwrap_or(Known::Fixed);
        like.at_root(|r| r.known = known);
        like
    }

    /// A trace of its own with id `id`, fixed, settled or not as this one: for a span that has
    /// not shared its trace yet, whose id the programs gave (the in-band mode).
    pub(super) fn renamed(&self, id: TraceId) -> Self {
        Self::with(id, self.settled(), true)
    }

    /// The id is known outside this agent from now on (a span of it is announced).
    pub(super) fn fix(&self) {
        self.at_root(|r| r.known = r.known.max(Known::Fixed));
    }

    /// As [`TraceRef::fix`], and the id was certainly used outside (exported, or answered).
    pub(super) fn fix_used(&self) {
        self.at_root(|r| r.known = Known::Used);
    }

    /// Whether the id was certainly used outside ([`TraceRef::fix_used`]).
    pub(super) fn is_used(&self) -> bool {
        self.at_root(|r| r.known == Known::Used).unwrap_or(false)
    }

    /// Gives the trace id `id`, known outside, unless its own is already: whether it has `id`
    /// now.
    pub(super) fn adopt_id(&self, id: TraceId) -> bool {
        self.at_root(|r| {
            if r.known == Known::No {
                r.id = id;
                r.known = Known::Fixed;
            }
            r.id == id
        })
        .unwrap_or(false)
    }

    fn root(&self) -> Self {
        let mut node = self.clone();
        loop {
            let next = match &*node.0.borrow() {
                TraceNode::Root(..) => None,
                TraceNode::Alias(to) => Some(to.clone()),
            };
            match next {
                Some(to) => node = to,
                None => return node,
            }
        }
    }

    /// Reads (or changes) the root's shared state.
    fn at_root<T>(&self, f: impl FnOnce(&mut Root) -> T) -> Option<T> {
        match &mut *self.root().0.borrow_mut() {
            TraceNode::Root(root) => Some(f(root)),
            TraceNode::Alias(_) => None,
        }
    }

    pub(super) fn id(&self) -> TraceId {
        self.at_root(|r| r.id).unwrap_or([0; 16])
    }

    pub(super) fn settled(&self) -> bool {
        self.at_root(|r| r.settled).unwrap_or(false)
    }

    /// Whether the trace is dropped, not exported ([`super::shedding`]).
    pub(super) fn is_shed(&self) -> bool {
        self.at_root(|r| r.shed).unwrap_or(false)
    }

    /// Drops the trace: none of its spans is exported from now on.
    pub(super) fn mark_shed(&self) {
        self.at_root(|r| r.shed = true);
    }

    /// A span of this trace opened.
    pub(super) fn opened(&self) {
        self.at_root(|r| r.open += 1);
    }

    /// A span of this trace finished (or was abandoned).
    pub(super) fn closed(&self) {
        self.at_root(|r| r.open = r.open.saturating_sub(1));
    }

    /// Spans of this trace not finished yet.
    pub(super) fn open_spans(&self) -> u32 {
        self.at_root(|r| r.open).unwrap_or(0)
    }

    /// Moves every span sharing this trace into `other`'s trace. When this trace's id is fixed
    /// and `other`'s is not, the joined trace keeps this id (it is known outside already).
    pub(super) fn join(&self, other: &Self) {
        let mine = self.root();
        let theirs = other.root();
        if !Rc::ptr_eq(&mine.0, &theirs.0) {
            let (open, shed, id, known) = mine
                .at_root(|r| (r.open, r.shed, r.id, r.known))
                .unwrap_or((0, false, [0; 16], Known::No));
            theirs.at_root(|r| {
                r.open += open;
                // A dropped part leaves the whole incomplete.
                r.shed |= shed;
                if known != Known::No && r.known == Known::No {
                    r.id = id;
                    r.known = known;
                }
            });
            *mine.0.borrow_mut() = TraceNode::Alias(theirs);
        }
    }
}
