//! Low-cardinality span names: `GET /users/{id}` for `GET /users/8812?x=1`.

/// What a byte can be part of, for [`is_identifier`]: bit 0 a digit, bit 1 a hex digit or `-`,
/// bit 2 a token character (letters, digits, `-`, `_`). One table load per byte instead of three
/// character-class tests (callgrind: ~450 instructions a path before).
const CLASSES: [u8; 256] = {
    let mut classes = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let digit = c.is_ascii_digit();
        let hexish = c.is_ascii_hexdigit() || c == b'-';
        let token = c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
        classes[b] = (digit as u8) | ((hexish as u8) << 1) | ((token as u8) << 2);
        b += 1;
    }
    classes
};

/// Whether a path segment looks like an identifier rather than a route word: a number, a UUID,
/// a long hex string, or a long token mixing letters and digits. One pass over the bytes: this
/// runs for every segment of every span's path.
fn is_identifier(segment: &[u8]) -> bool {
    if segment.is_empty() {
        return false;
    }
    let (mut digits, mut all) = (0usize, 0b111u8);
    for &b in segment {
        let class = CLASSES[usize::from(b)];
        digits += usize::from(class & 1);
        all &= class;
    }
    let (hexish, token) = (all & 0b010 != 0, all & 0b100 != 0);
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
pub fn route_of(target: &str) -> String {
    let mut route = String::new();
    push_route_of_path(path_of(target), &mut route);
    route
}

/// Appends the route of a target's path ([`path_of`]) already found to `out`; whether it is the
/// path itself (no segment is an identifier: most routes). Appended to the caller's buffer: this
/// runs for every span, and a route of its own per span was an allocation here and a free on the
/// store's writer thread.
pub fn push_route_of_path(path: &str, out: &mut String) -> bool {
    if path.is_empty() {
        out.push('/');
        return false;
    }
    // Segments split on the bytes (`/` is ASCII, so each is a `str` boundary): a `str::split`
    // by char searched for each separator anew, a visible share of the pipeline (callgrind).
    // Copied in runs: up to the first identifier segment, then between them.
    let mut copied = 0;
    let mut start = 0;
    for segment in path.as_bytes().split(|&b| b == b'/') {
        let end = start + segment.len();
        if is_identifier(segment) {
            out.push_str(&path[copied..start]);
            out.push_str("{id}");
            copied = end;
        }
        start = end + 1;
    }
    out.push_str(&path[copied..]);
    copied == 0
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
        let mut out = String::from("GET ");
        assert!(push_route_of_path("/api/v2/predict", &mut out));
        assert_eq!(out, "GET /api/v2/predict");
        out.truncate(4);
        assert!(!push_route_of_path("/users/8812", &mut out));
        assert_eq!(out, "GET /users/{id}");
        assert_eq!(route_of("/8812/a/"), "/{id}/a/");
        assert_eq!(route_of("/a//12/b"), "/a//{id}/b");
        assert_eq!(route_of("/ab12cd34ef56ab78cd"), "/{id}");
        assert_eq!(route_of("/deadbeef"), "/deadbeef");
        assert_eq!(route_of("/v1_release_candidate2"), "/{id}");
        assert_eq!(route_of("/caf\u{e9}/12"), "/caf\u{e9}/{id}");
    }
}
