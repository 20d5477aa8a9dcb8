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

/// What the spans of one trace share.
#[derive(Debug)]
struct Root {
    id: TraceId,
    /// No later evidence can move it into another trace. Only a SERVER span whose client has
    /// not been seen starts an unsettled trace.
    settled: bool,
    /// Its id is known outside this agent (a header or another agent gave it, a request
    /// carried it in-band, a span of it was exported): it never changes, and a trace that joins
    /// this one takes it; an id not fixed yet may still take a fixed one ([`TraceRef::join`]).
    fixed: bool,
    /// The budget's shedding drops it ([`super::shedding`]).
    shed: bool,
    /// Its spans not finished yet: while the budget sheds, finished spans wait for the whole
    /// trace (a late drop must not leave exported spans without their parent).
    open: u32,
}

impl TraceRef {
    fn with(id: TraceId, settled: bool, fixed: bool) -> Self {
        Self(Rc::new(RefCell::new(TraceNode::Root(Root {
            id,
            settled,
            fixed,
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
        Self::with(self.id(), false, self.is_fixed())
    }

    /// A trace of its own with id `id`, fixed, settled or not as this one: for a span that has
    /// not shared its trace yet, whose id the programs gave (the in-band mode).
    pub(super) fn renamed(&self, id: TraceId) -> Self {
        Self::with(id, self.settled(), true)
    }

    /// Whether the id is known outside this agent.
    pub(super) fn is_fixed(&self) -> bool {
        self.at_root(|r| r.fixed).unwrap_or(true)
    }

    /// The id is known outside this agent from now on (a span of it is exported).
    pub(super) fn fix(&self) {
        self.at_root(|r| r.fixed = true);
    }

    /// Gives the trace id `id`, known outside, unless its own is already: whether it has `id`
    /// now.
    pub(super) fn adopt_id(&self, id: TraceId) -> bool {
        self.at_root(|r| {
            if !r.fixed {
                r.id = id;
                r.fixed = true;
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
            let (open, shed, id, fixed) = mine
                .at_root(|r| (r.open, r.shed, r.id, r.fixed))
                .unwrap_or((0, false, [0; 16], false));
            theirs.at_root(|r| {
                r.open += open;
                // A dropped part leaves the whole incomplete.
                r.shed |= shed;
                if fixed && !r.fixed {
                    r.id = id;
                    r.fixed = true;
                }
            });
            *mine.0.borrow_mut() = TraceNode::Alias(theirs);
        }
    }
}
