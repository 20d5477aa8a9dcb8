//! Shared copies of strings that repeat across requests (`Host`, `User-Agent`), so thousands of
//! spans waiting for export hold one allocation each, not one per span; and the span names and
//! routes of recent request paths, so a path seen lately is not templated again.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use crate::memo_worth::MemoWorth;

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
    /// What [`Interner::named_route`] found for recent requests.
    routes: RouteMemo,
    /// [`Interner::host_of`] of recent shared authorities (`Host`, `:authority`).
    hosts: ByAddress<Arc<str>, HOST_SLOTS>,
    /// [`Interner::named_route`] of recent shared request targets that are all path, with the
    /// method and span kind it was for.
    targets: ByAddress<TargetFound, TARGET_SLOTS>,
}

/// Slots of [`Interner::hosts`]: a host serves and calls few names.
const HOST_SLOTS: usize = 16;
/// Slots of [`Interner::targets`].
const TARGET_SLOTS: usize = 64;

/// What [`Interner::named_route`] gave for a target, and what for.
#[derive(Debug)]
struct TargetFound {
    method: Cow<'static, str>,
    server: bool,
    found: NamedRoute,
}

/// Values of shared strings found again by the shared copy's address: a head parsed again is a
/// clone of the first parse, so a repeated value is the same `Arc`, and no hashing of its text
/// is needed. Each slot holds its key, so an address cannot be another string's while it is
/// here. Direct-mapped, `N` slots, allocated at the first value.
#[derive(Debug)]
struct ByAddress<V, const N: usize> {
    slots: Vec<Option<(Arc<str>, V)>>,
}

impl<V, const N: usize> Default for ByAddress<V, N> {
    fn default() -> Self {
        Self { slots: Vec::new() }
    }
}

impl<V, const N: usize> ByAddress<V, N> {
    /// `key`'s slot; `salt` (0 or 1) gives one key two neighbouring slots.
    fn slot(key: &Arc<str>, salt: usize) -> usize {
        ((Arc::as_ptr(key).cast::<u8>() as usize >> 3) ^ salt) % N
    }

    /// The value kept for this very copy of `key` with `salt`.
    fn get(&self, key: &Arc<str>, salt: usize) -> Option<&V> {
        match self.slots.get(Self::slot(key, salt)) {
            Some(Some((kept, value))) if Arc::ptr_eq(kept, key) => Some(value),
            _ => None,
        }
    }

    /// Keeps `value` for `key` with `salt`, in place of what its slot held.
    fn put(&mut self, key: &Arc<str>, salt: usize, value: V) {
        if self.slots.is_empty() {
            self.slots.resize_with(N, || None);
        }
        self.slots[Self::slot(key, salt)] = Some((Arc::clone(key), value));
    }
}

/// A request's span name and route as [`Interner::named_route`] gives them.
#[derive(Debug, Clone)]
pub struct NamedRoute {
    /// `method route`.
    pub name: Arc<str>,
    /// The route, when asked for.
    pub route: Option<Arc<str>>,
    /// The path, shared, when the route is the path itself (no segment is an identifier).
    pub path: Option<Arc<str>>,
}

/// Route slots: a request path's name and route are found again by a hash of method and path,
/// checked against the text kept. Services answer few distinct paths most of the time, and
/// templating a path and looking its name and route up was ~1 500 instructions per span
/// (callgrind). The route is kept whether or not the caller wants it, so a connection's CLIENT
/// and SERVER ends on this host find each other's work.
const ROUTE_SLOTS: usize = 256;
/// Lookups per judgement of the memo's worth ([`MemoWorth`]: where no path repeats, every
/// request its own identifier and the other end elsewhere, keeping each costs more than it
/// saves).
const ROUTE_WINDOW: u32 = if cfg!(test) { 64 } else { 4096 };

#[derive(Debug)]
struct RouteSlot {
    hash: u64,
    /// The method and the path, as requested, one after the other; the method's length says
    /// where one ends (a method may hold a space: an HTTP/2 `:method` is any bytes).
    key: String,
    method_len: usize,
    found: NamedRoute,
}

/// Direct-mapped (a new path takes its slot's place): bounded at [`ROUTE_SLOTS`] paths of at most
/// [`MAX_LEN`] bytes.
#[derive(Debug)]
struct RouteMemo {
    slots: Vec<Option<RouteSlot>>,
    worth: MemoWorth,
    /// Seeded per process: clients choose the paths, and must not be able to aim at one slot.
    state: foldhash::fast::RandomState,
}

impl Default for RouteMemo {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            worth: MemoWorth::new(ROUTE_WINDOW),
            state: foldhash::fast::RandomState::default(),
        }
    }
}

impl RouteMemo {
    fn hash(&self, method: &str, path: &str) -> u64 {
        use std::hash::BuildHasher as _;
        self.state.hash_one((method, path))
    }

    fn slot(hash: u64) -> usize {
        usize::try_from(hash >> 56).unwrap_or_default() % ROUTE_SLOTS
    }

    /// What was found for `method path` before.
    fn get(&mut self, hash: u64, method: &str, path: &str) -> Option<NamedRoute> {
        let found = self
            .slots
            .get(Self::slot(hash))
            .and_then(Option::as_ref)
            .filter(|slot| {
                slot.hash == hash
                    && slot.method_len == method.len()
                    && slot.key.len() == method.len() + path.len()
                    && slot.key.starts_with(method)
                    && slot.key.ends_with(path)
            })
            .map(|slot| slot.found.clone());
        self.worth.looked_up(hash, found.is_some());
        found
    }

    fn put(&mut self, hash: u64, method: &str, path: &str, found: &NamedRoute) {
        if method.len() + path.len() > MAX_LEN || !self.worth.keep(hash) {
            return;
        }
        if self.slots.is_empty() {
            self.slots.resize_with(ROUTE_SLOTS, || None);
        }
        let slot = &mut self.slots[Self::slot(hash)];
        // The replaced path's buffer holds the new one: no allocation once slots are warm.
        let mut key = slot.take().map(|old| old.key).unwrap_or_default();
        key.clear();
        key.push_str(method);
        key.push_str(path);
        *slot = Some(RouteSlot {
            hash,
            key,
            method_len: method.len(),
            found: found.clone(),
        });
    }
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

    /// `server.address` of an authority (`Host`, `:authority`): the name without its port or an
    /// IPv6 literal's brackets, shared. A repeat of the head's shared copy is found by its
    /// address ([`ByAddress`]), without trimming and hashing it again.
    pub fn host_of(&mut self, authority: &Arc<str>) -> Arc<str> {
        if let Some(host) = self.hosts.get(authority, 0) {
            return Arc::clone(host);
        }
        let host = self.get(
            authority
                .rsplit_once(':')
                .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
                .map_or(&**authority, |(host, _)| host)
                .trim_matches(['[', ']']),
        );
        self.hosts.put(authority, 0, Arc::clone(&host));
        host
    }

    /// What [`Interner::named_route`] gave for `method target` before ([`Interner::remember_target`]),
    /// `target` being the same shared copy.
    pub fn target_named(
        &self,
        target: &Arc<str>,
        method: &str,
        server: bool,
    ) -> Option<NamedRoute> {
        // A target's CLIENT and SERVER spans (a connection's two ends on this host) take two
        // slots.
        self.targets
            .get(target, usize::from(server))
            .filter(|kept| kept.server == server && kept.method == method)
            .map(|kept| kept.found.clone())
    }

    /// Keeps what [`Interner::named_route`] gave for a target that is all path.
    pub fn remember_target(
        &mut self,
        target: &Arc<str>,
        method: &str,
        server: bool,
        found: &NamedRoute,
    ) {
        if target.len() > MAX_LEN {
            return;
        }
        let kept = TargetFound {
            method: crate::protocol::http1::head::method_of(method),
            server,
            found: found.clone(),
        };
        self.targets.put(target, usize::from(server), kept);
    }

    /// The shared span name `method route` for a request whose target's path is `path`, the
    /// shared route too when `want_route`, and the shared path when the route is the path
    /// itself. The route is built in place after the method, so neither it nor the name is a
    /// copy of its own unless it is new; a path seen lately is not templated again.
    pub fn named_route(&mut self, method: &str, path: &str, want_route: bool) -> NamedRoute {
        let hash = self.routes.hash(method, path);
        let mut found = if let Some(found) = self.routes.get(hash, method, path) {
            found
        } else {
            let found = self.in_scratch(|this, scratch| {
                scratch.push_str(method);
                scratch.push(' ');
                let same = crate::trace::route::push_route_of_path(path, scratch);
                let name = this.get(scratch);
                let route = this.get(&scratch[method.len() + 1..]);
                let path = same.then(|| Arc::clone(&route));
                NamedRoute {
                    name,
                    route: Some(route),
                    path,
                }
            });
            self.routes.put(hash, method, path, &found);
            found
        };
        if !want_route {
            found.route = None;
        }
        found
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

    fn described(found: &NamedRoute) -> (String, Option<String>, Option<String>) {
        (
            found.name.to_string(),
            found.route.as_deref().map(str::to_string),
            found.path.as_deref().map(str::to_string),
        )
    }

    #[test]
    fn a_remembered_route_is_the_route_found_afresh() {
        let cases = [
            ("GET", "/users/42", true),
            ("GET", "/users/42", false),
            ("POST", "/users/42", true),
            ("GET", "/health", true),
            ("GET", "/health", false),
            ("GET", "/", true),
            ("DELETE", "/a/b/c9f0e1d2-aaaa-bbbb-cccc-0123456789ab", true),
        ];
        let mut remembering = Interner::default();
        for round in 0..3 {
            for (method, path, want_route) in cases {
                let found = remembering.named_route(method, path, want_route);
                let afresh = Interner::default().named_route(method, path, want_route);
                assert_eq!(
                    described(&found),
                    described(&afresh),
                    "round {round}: {method} {path}"
                );
            }
        }
        let health = remembering.named_route("GET", "/health", false);
        assert_eq!(
            described(&health),
            ("GET /health".into(), None, Some("/health".into()))
        );
        let user = remembering.named_route("GET", "/users/42", true);
        assert_eq!(
            described(&user),
            ("GET /users/{id}".into(), Some("/users/{id}".into()), None)
        );
        // Seen again, the same shared copies come back.
        let again = remembering.named_route("GET", "/users/42", true);
        assert!(Arc::ptr_eq(&user.name, &again.name));

        // Bounded: many paths, a fixed number of slots; a path too long is not kept.
        for i in 0..(ROUTE_SLOTS * 4) {
            let path = format!("/items/{i}/x");
            let found = remembering.named_route("GET", &path, true);
            assert_eq!(&*found.name, "GET /items/{id}/x");
        }
        assert_eq!(remembering.routes.slots.len(), ROUTE_SLOTS);
        // Every path its own: the memo goes sparse, and keeps fewer of them.
        assert!(remembering.routes.worth.is_sparse());
        let kept = |strings: &Interner, key: &str| {
            strings
                .routes
                .slots
                .iter()
                .flatten()
                .any(|slot| slot.key == key)
        };
        let fresh = (0..64)
            .filter(|i| {
                let path = format!("/fresh/{i}");
                remembering.named_route("GET", &path, true);
                kept(&remembering, &format!("GET{path}"))
            })
            .count();
        assert!((1..32).contains(&fresh), "{fresh} of 64 kept");
        // One path again and again (`/predict`), sparse or not: kept within a few misses.
        for _ in 0..crate::memo_worth::SPARSE * 2 {
            remembering.named_route("POST", "/predict", false);
        }
        assert!(kept(&remembering, "POST/predict"));
        // The split between method and path is part of the key.
        for (method, path) in [("A B", "/c"), ("A", "B /c"), ("A B", "/c")] {
            let found = remembering.named_route(method, path, true);
            let afresh = Interner::default().named_route(method, path, true);
            assert_eq!(described(&found), described(&afresh), "{method:?} {path:?}");
        }
        let long = format!("/{}", "a".repeat(MAX_LEN));
        let found = remembering.named_route("GET", &long, true);
        assert_eq!(found.route.as_deref(), Some(long.as_str()));
        assert!(
            remembering
                .routes
                .slots
                .iter()
                .flatten()
                .all(|slot| slot.key.len() <= MAX_LEN)
        );
    }

    #[test]
    fn an_authoritys_host_is_found_again_by_its_shared_copy() {
        let mut strings = Interner::default();
        for (authority, host) in [
            ("api:8080", "api"),
            ("api", "api"),
            ("[::1]:80", "::1"),
            ("[::1]", "::1"),
            ("a:b", "a:b"),
        ] {
            let shared: Arc<str> = Arc::from(authority);
            let first = strings.host_of(&shared);
            assert_eq!(&*first, host, "{authority}");
            assert!(Arc::ptr_eq(&first, &strings.host_of(&shared)));
            // Another copy of the same text: the same answer, found afresh.
            assert_eq!(&*strings.host_of(&Arc::from(authority)), host);
        }
        // Every slot taken by other authorities, then the first again.
        let first: Arc<str> = Arc::from("first:1");
        let _ = strings.host_of(&first);
        for i in 0..HOST_SLOTS * 4 {
            let _ = strings.host_of(&Arc::from(format!("h{i}:1")));
        }
        assert_eq!(&*strings.host_of(&first), "first");
    }

    #[test]
    fn a_targets_remembered_name_and_route_are_those_found_afresh() {
        let mut strings = Interner::default();
        let target: Arc<str> = Arc::from("/users/42");
        for (method, server) in [
            ("GET", true),
            ("GET", false),
            ("POST", true),
            ("BREW", true),
        ] {
            assert!(strings.target_named(&target, method, server).is_none());
            let found = strings.named_route(method, &target, server);
            strings.remember_target(&target, method, server, &found);
        }
        for (method, server) in [
            ("GET", true),
            ("GET", false),
            ("POST", true),
            ("BREW", true),
        ] {
            let Some(again) = strings.target_named(&target, method, server) else {
                // Two keys may share a slot; the one kept last is found.
                continue;
            };
            let afresh = Interner::default().named_route(method, &target, server);
            assert_eq!(described(&again), described(&afresh), "{method} {server}");
        }
        let last = strings
            .target_named(&target, "BREW", true)
            .expect("kept last");
        assert_eq!(&*last.name, "BREW /users/{id}");
        // The same text in another copy is not the remembered one.
        assert!(
            strings
                .target_named(&Arc::from("/users/42"), "BREW", true)
                .is_none()
        );
        // A CLIENT span has no route; its SERVER twin keeps its own.
        let client = strings.named_route("GET", "/a", false);
        let server = strings.named_route("GET", "/a", true);
        let a: Arc<str> = Arc::from("/a");
        strings.remember_target(&a, "GET", false, &client);
        strings.remember_target(&a, "GET", true, &server);
        assert!(
            strings
                .target_named(&a, "GET", false)
                .expect("client")
                .route
                .is_none()
        );
        assert_eq!(
            strings
                .target_named(&a, "GET", true)
                .expect("server")
                .route
                .as_deref(),
            Some("/a")
        );
    }
}
