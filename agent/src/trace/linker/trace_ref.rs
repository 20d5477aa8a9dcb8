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
    /// The budget's shedding drops it ([`super::shedding`]).
    shed: bool,
    /// Its spans not finished yet: while the budget sheds, finished spans wait for the whole
    /// trace (a late drop must not leave exported spans without their parent).
    open: u32,
}

impl TraceRef {
    fn with(id: TraceId, settled: bool) -> Self {
        Self(Rc::new(RefCell::new(TraceNode::Root(Root {
            id,
            settled,
            shed: false,
            open: 0,
        }))))
    }

    pub(super) fn new(id: TraceId) -> Self {
        Self::with(id, true)
    }

    /// A trace that may still join its client's (a SERVER span seen before its client).
    pub(super) fn unsettled(id: TraceId) -> Self {
        Self::with(id, false)
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

    /// Moves every span sharing this trace into `other`'s trace.
    pub(super) fn join(&self, other: &Self) {
        let mine = self.root();
        let theirs = other.root();
        if !Rc::ptr_eq(&mine.0, &theirs.0) {
            let (open, shed) = mine.at_root(|r| (r.open, r.shed)).unwrap_or((0, false));
            theirs.at_root(|r| {
                r.open += open;
                // A dropped part leaves the whole incomplete.
                r.shed |= shed;
            });
            *mine.0.borrow_mut() = TraceNode::Alias(theirs);
        }
    }
}
