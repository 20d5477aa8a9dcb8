//! Every protocol's exchange summary as one value ([`ProtocolSummary`]), held inline by the span
//! that waits for export.
//!
//! Each finished exchange used to be a boxed trait object: one allocation per span on the
//! draining thread, freed at export. The protocols are a closed set, so an enum holds them with
//! no allocation and no virtual call.

use std::sync::Arc;

use super::{
    SpanFacts, Summary, db::DbSummary, dns::summary::DnsSummary, http1::summary::Http1Summary,
    http2::summary::Http2Summary,
};
use crate::trace::{
    intern::Interner,
    span::{KeyValue, SpanStatus},
};

/// One finished exchange's own facts, whatever its protocol.
#[derive(Debug)]
pub enum ProtocolSummary {
    Http1(Http1Summary),
    Http2(Http2Summary),
    Db(DbSummary),
    Dns(DnsSummary),
}

// Every span waiting out the link delay holds one (tens of thousands at high rates): the
// largest variant (HTTP/2's request and response facts) sets the size for all of them.
const _: () = assert!(std::mem::size_of::<ProtocolSummary>() <= 160);

impl Summary for ProtocolSummary {
    fn expand(
        self,
        span: &SpanFacts,
        strings: &mut Interner,
    ) -> (Arc<str>, Vec<KeyValue>, SpanStatus) {
        match self {
            Self::Http1(s) => s.expand(span, strings),
            Self::Http2(s) => s.expand(span, strings),
            Self::Db(s) => s.expand(span, strings),
            Self::Dns(s) => s.expand(span, strings),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Http1(s) => s.describe(),
            Self::Http2(s) => s.describe(),
            Self::Db(s) => s.describe(),
            Self::Dns(s) => s.describe(),
        }
    }
}

impl From<Http1Summary> for ProtocolSummary {
    fn from(summary: Http1Summary) -> Self {
        Self::Http1(summary)
    }
}

impl From<Http2Summary> for ProtocolSummary {
    fn from(summary: Http2Summary) -> Self {
        Self::Http2(summary)
    }
}

impl From<DbSummary> for ProtocolSummary {
    fn from(summary: DbSummary) -> Self {
        Self::Db(summary)
    }
}

impl From<DnsSummary> for ProtocolSummary {
    fn from(summary: DnsSummary) -> Self {
        Self::Dns(summary)
    }
}
