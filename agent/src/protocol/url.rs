//! What a request target gives an HTTP span, over HTTP/1 and HTTP/2 alike: its name
//! (`METHOD route`), `url.path`, the redacted `url.query` and, on a SERVER span, `http.route`.
//!
//! Built once per span on the thread that drains the ring, so nothing here is copied that can
//! be shared: the name and the route come from the tracer's interner, and so does a path with no
//! identifier in it (it is its own route: as many as the routes); any other path is the target
//! itself moved in when it is all path, a copy only when a query or an origin must come off.

use std::sync::Arc;

use crate::{
    protocol::http1::record,
    trace::{intern::Interner, route, span::AttrValue},
};

pub struct TargetAttributes {
    pub name: Arc<str>,
    /// `url.path`.
    pub path: AttrValue,
    /// `url.query`, every value not allowlisted replaced.
    pub query: Option<String>,
    /// `http.route`, on a SERVER span only.
    pub route: Option<Arc<str>>,
}

impl TargetAttributes {
    /// Of a request for `target` (a string value: moved into `url.path` when it is all path)
    /// with `method`.
    pub fn of(method: &str, target: AttrValue, server: bool, strings: &mut Interner) -> Self {
        // A shared target repeats (a head parsed again is a clone of the first parse): what a
        // whole one gave is found again by its address, without finding its path and hashing it.
        if let AttrValue::Shared(shared) = &target
            && let Some(named) = strings.target_named(shared, method, server)
        {
            return Self {
                name: named.name,
                path: AttrValue::Shared(named.path.unwrap_or_else(|| Arc::clone(shared))),
                query: None,
                route: named.route,
            };
        }
        let text = target.as_str().unwrap_or_default();
        let path = route::path_of(text);
        // A target that is its own path (no query, no origin: nearly all) has no query to redact.
        let whole = path.len() == text.len();
        let query = if whole {
            None
        } else {
            record::redacted_query(text)
        };
        let named = strings.named_route(method, path, server);
        if whole && let AttrValue::Shared(shared) = &target {
            strings.remember_target(shared, method, server, &named);
        }
        let path = if let Some(shared) = named.path {
            AttrValue::Shared(shared)
        } else if whole {
            target
        } else {
            AttrValue::Str(path.to_string().into())
        };
        Self {
            name: named.name,
            path,
            query,
            route: named.route,
        }
    }
}
