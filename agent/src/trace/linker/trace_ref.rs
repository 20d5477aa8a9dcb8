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
    /// The trace's id, and whether it is settled: no later evidence can move it into another
    /// trace. Only a SERVER span whose client has not been seen starts an unsettled trace.
    /// Then whether the budget's shedding drops it ([`super::shedding`]).
    Root(TraceId, bool, bool),
    Alias(TraceRef),
}

impl TraceRef {
    pub(super) fn new(id: TraceId) -> Self {
        Self(Rc::new(RefCell::new(TraceNode::Root(id, true, false))))
    }

    /// A trace that may still join its client's (a SERVER span seen before its client).
    pub(super) fn unsettled(id: TraceId) -> Self {
        Self(Rc::new(RefCell::new(TraceNode::Root(id, false, false))))
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

    pub(super) fn id(&self) -> TraceId {
        match &*self.root().0.borrow() {
            TraceNode::Root(id, ..) => *id,
            TraceNode::Alias(_) => [0; 16],
        }
    }

    pub(super) fn settled(&self) -> bool {
        matches!(&*self.root().0.borrow(), TraceNode::Root(_, true, _))
    }

    /// Whether the trace is dropped, not exported ([`super::shedding`]).
    pub(super) fn is_shed(&self) -> bool {
        matches!(&*self.root().0.borrow(), TraceNode::Root(_, _, true))
    }

    /// Drops the trace: none of its spans is exported from now on.
    pub(super) fn mark_shed(&self) {
        if let TraceNode::Root(_, _, shed) = &mut *self.root().0.borrow_mut() {
            *shed = true;
        }
    }

    /// Moves every span sharing this trace into `other`'s trace.
    pub(super) fn join(&self, other: &Self) {
        let mine = self.root();
        let theirs = other.root();
        if !Rc::ptr_eq(&mine.0, &theirs.0) {
            // A dropped part leaves the whole incomplete.
            if mine.is_shed() {
                theirs.mark_shed();
            }
            *mine.0.borrow_mut() = TraceNode::Alias(theirs);
        }
    }
}
