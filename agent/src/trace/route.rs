//! Low-cardinality span names: `GET /users/{id}` for `GET /users/8812?x=1`.

/// Whether a path segment looks like an identifier rather than a route word: a number, a UUID,
/// a long hex string, or a long token mixing letters and digits.
fn is_identifier(segment: &str) -> bool {
    if segment.is_empty() {
        return false;
    }
    let digits = segment.bytes().filter(u8::is_ascii_digit).count();
    if digits == segment.len() {
        return true;
    }
    let hexish = segment.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if hexish && segment.len() >= 8 && digits > 0 {
        return true;
    }
    segment.len() >= 16
        && digits > 0
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
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
    let end = target.find(['?', '#']).unwrap_or(target.len());
    &target[..end]
}

/// The route: the path with identifier segments replaced by `{id}`.
#[must_use]
pub fn route_of(target: &str) -> String {
    let path = path_of(target);
    if path.is_empty() {
        return "/".to_string();
    }
    // One pass into one allocation: this runs for every span.
    let mut route = String::with_capacity(path.len() + 8);
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            route.push('/');
        }
        route.push_str(if is_identifier(segment) {
            "{id}"
        } else {
            segment
        });
    }
    route
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
    }
}
