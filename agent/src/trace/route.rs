//! Low-cardinality span names: `GET /users/{id}` for `GET /users/8812?x=1`.

use std::borrow::Cow;

/// Whether a path segment looks like an identifier rather than a route word: a number, a UUID,
/// a long hex string, or a long token mixing letters and digits. One pass over the bytes: this
/// runs for every segment of every span's path.
fn is_identifier(segment: &[u8]) -> bool {
    if segment.is_empty() {
        return false;
    }
    let (mut digits, mut hexish, mut token) = (0usize, true, true);
    for &b in segment {
        digits += usize::from(b.is_ascii_digit());
        hexish &= b.is_ascii_hexdigit() || b == b'-';
        token &= b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    }
    digits == segment.len()
        || (digits > 0 && ((hexish && segment.len() >= 8) || (token && segment.len() >= 16)))
}

/// The path of a request target (no query or fragment; an absolute-form URL loses its origin).
#[must_use]
pub fn path_of(target: &str) -> &str {
    // Origin form (`/path?query`), nearly every request, skips the search for a scheme.
    let target = match (!target.starts_with('/'))
        .then(|| target.find("://"))
        .flatten()
    {
        Some(i) => target[i + 3..]
            .find('/')
            .map_or("/", |j| &target[i + 3 + j..]),
        None => target,
    };
    // On the bytes: a search for a set of chars goes char by char, decoding UTF-8.
    let end = target
        .bytes()
        .position(|b| b == b'?' || b == b'#')
        .unwrap_or(target.len());
    &target[..end]
}

/// The route: the path with identifier segments replaced by `{id}`.
#[cfg(any(test, feature = "fuzz"))]
#[must_use]
pub fn route_of(target: &str) -> Cow<'_, str> {
    route_of_path(path_of(target))
}

/// [`route_of`] for a target's path ([`path_of`]) already found. Borrowed from the path when no
/// segment is an identifier (most routes): this runs for every span, and a copy per span was an
/// allocation here and a free on the store's writer thread.
#[must_use]
pub fn route_of_path(path: &str) -> Cow<'_, str> {
    if path.is_empty() {
        return Cow::Borrowed("/");
    }
    // Segments split on the bytes (`/` is ASCII, so each is a `str` boundary): a `str::split`
    // by char searched for each separator anew, a visible share of the pipeline (callgrind).
    let mut route: Option<String> = None;
    let mut start = 0;
    for segment in path.as_bytes().split(|&b| b == b'/') {
        let end = start + segment.len();
        if is_identifier(segment) {
            let route = route.get_or_insert_with(|| {
                let mut route = String::with_capacity(path.len() + 8);
                route.push_str(&path[..start]);
                route
            });
            route.push_str("{id}");
        } else if let Some(route) = &mut route {
            route.push_str(&path[start..end]);
        }
        if end < path.len()
            && let Some(route) = &mut route
        {
            route.push('/');
        }
        start = end + 1;
    }
    route.map_or(Cow::Borrowed(path), Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapses_ids_and_keeps_words() {
        assert_eq!(route_of("/users/8812?x=1"), "/users/{id}");
        assert_eq!(
            route_of("/orders/3f2504e0-4f89-11d3-9a0c-0305e82c3301/items"),
            "/orders/{id}/items"
        );
        assert_eq!(route_of("/blobs/deadbeef01"), "/blobs/{id}");
        assert_eq!(route_of("/api/v2/predict"), "/api/v2/predict");
        assert_eq!(route_of("/static/app.js"), "/static/app.js");
        assert_eq!(route_of("http://example.com/a/12#frag"), "/a/{id}");
        assert_eq!(route_of("*"), "*");
        assert_eq!(route_of(""), "/");
        assert_eq!(path_of("/p?q"), "/p");
        assert!(matches!(
            route_of("/api/v2/predict?x=1"),
            Cow::Borrowed("/api/v2/predict")
        ));
        assert!(matches!(route_of("/users/8812"), Cow::Owned(_)));
        assert_eq!(route_of("/8812/a/"), "/{id}/a/");
        assert_eq!(route_of("/a//12/b"), "/a//{id}/b");
        assert_eq!(route_of("/ab12cd34ef56ab78cd"), "/{id}");
        assert_eq!(route_of("/deadbeef"), "/deadbeef");
        assert_eq!(route_of("/v1_release_candidate2"), "/{id}");
        assert_eq!(route_of("/caf\u{e9}/12"), "/caf\u{e9}/{id}");
    }
}
