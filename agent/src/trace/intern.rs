//! Shared copies of strings that repeat across requests (`Host`, `User-Agent`), so thousands of
//! spans waiting for export hold one allocation each, not one per span.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

/// Distinct strings kept before the set starts over (a bound, since both headers are chosen by
/// clients; starting over only costs new copies, never correctness).
const MAX_STRINGS: usize = 4096;
/// Longer strings are not worth sharing (and would let one client pin a lot of memory).
const MAX_LEN: usize = 512;

#[derive(Debug, Default)]
pub struct Interner {
    strings: HashSet<Arc<str>, foldhash::fast::RandomState>,
    /// Where [`Interner::joined`] puts its parts together (kept, so a lookup allocates nothing).
    scratch: String,
    /// Addresses as text: formatting an IP goes through `fmt` machinery on every span otherwise.
    ips: HashMap<IpAddr, Arc<str>, foldhash::fast::RandomState>,
}

impl Interner {
    /// The shared copy of `s`.
    pub fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(s) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(s);
        if s.len() <= MAX_LEN {
            if self.strings.len() >= MAX_STRINGS {
                self.strings.clear();
            }
            self.strings.insert(Arc::clone(&shared));
        }
        shared
    }

    /// The shared copy of `parts` put together (a span name: `GET /users/{id}`).
    pub fn joined(&mut self, parts: &[&str]) -> Arc<str> {
        self.in_scratch(|this, scratch| {
            for part in parts {
                scratch.push_str(part);
            }
            this.get(scratch)
        })
    }

    /// The shared span name `method route` for a request whose target's path is `path`, the
    /// shared route too when `want_route`, and whether the route is the path itself. The route is
    /// built in place after the method, so neither it nor the name is a copy of its own unless it
    /// is new.
    pub fn named_route(
        &mut self,
        method: &str,
        path: &str,
        want_route: bool,
    ) -> (Arc<str>, Option<Arc<str>>, bool) {
        self.in_scratch(|this, scratch| {
            scratch.push_str(method);
            scratch.push(' ');
            let same = crate::trace::route::push_route_of_path(path, scratch);
            let name = this.get(scratch);
            let route = want_route.then(|| this.get(&scratch[method.len() + 1..]));
            (name, route, same)
        })
    }

    /// Runs `build` with the kept scratch buffer, emptied (a lookup allocates nothing).
    fn in_scratch<R>(&mut self, build: impl FnOnce(&mut Self, &mut String) -> R) -> R {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let result = build(self, &mut scratch);
        // A name too long to share once would keep its buffer's size forever.
        if scratch.capacity() <= 2 * MAX_LEN {
            self.scratch = scratch;
        }
        result
    }

    /// `ip` as text, shared.
    pub fn ip(&mut self, ip: IpAddr) -> Arc<str> {
        if self.ips.len() >= MAX_STRINGS && !self.ips.contains_key(&ip) {
            self.ips.clear();
        }
        Arc::clone(
            self.ips
                .entry(ip)
                .or_insert_with(|| Arc::from(ip.to_string())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_share_one_copy_and_the_set_is_bounded() {
        let mut strings = Interner::default();
        let a = strings.get("curl/7.88.1");
        let b = strings.get("curl/7.88.1");
        assert!(Arc::ptr_eq(&a, &b));
        for i in 0..(MAX_STRINGS + 10) {
            let _ = strings.get(&format!("host-{i}"));
        }
        assert!(strings.strings.len() <= MAX_STRINGS);
        let long = "x".repeat(MAX_LEN + 1);
        assert_eq!(&*strings.get(&long), long.as_str());
        assert!(!strings.strings.contains(long.as_str()));
        let name = strings.joined(&["GET", " ", "/a/{id}"]);
        assert_eq!(&*name, "GET /a/{id}");
        assert!(Arc::ptr_eq(&name, &strings.get("GET /a/{id}")));
    }
}
