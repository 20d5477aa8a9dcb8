//! The web UI: a page and its scripts and styles, compiled into the agent (nothing to build or
//! install on the user's side). The page owns its paths: Jaeger's `/search?…`, `/trace/<id>`
//! (and `/trace/<a>...<b>` to compare two), `/dependencies`, plus `/blame?…`; each serves the
//! same page, which reads the path and the query, so every view can be reloaded and shared.

use axum::{
    Router,
    extract::Path,
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};

const PAGE: &str = include_str!("ui/index.html");

/// The page's assets: name, content type, text.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("ui/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/app.js"),
    ),
    (
        "util.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/util.js"),
    ),
    (
        "search.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/search.js"),
    ),
    (
        "scatter.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/scatter.js"),
    ),
    (
        "trace.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/trace.js"),
    ),
    (
        "details.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/details.js"),
    ),
    (
        "compare.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/compare.js"),
    ),
    (
        "map.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/map.js"),
    ),
    (
        "blame.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/blame.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("ui/favicon.svg"),
    ),
];

/// The paths the page answers (everything else under `/ui/` is an asset).
pub const PAGES: &[&str] = &["/", "/search", "/dependencies", "/map", "/blame"];

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, text)) => (
            [
                (header::CONTENT_TYPE, *kind),
                // The assets change with the agent's version only; a reload after an upgrade
                // must not mix old and new scripts.
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *text,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

async fn favicon() -> Response {
    asset(Path("favicon.svg".to_string())).await
}

/// Whether `path` is the page or one of its assets: they hold no span data, so a browser gets
/// them without the bearer token and can then ask for it.
#[must_use]
pub fn is_public(path: &str) -> bool {
    PAGES.contains(&path)
        || path.starts_with("/trace/")
        || path.starts_with("/ui/")
        || path == "/favicon.ico"
}

pub fn router() -> Router {
    let mut router = Router::new()
        .route("/trace/{id}", get(page))
        .route("/ui/{name}", get(asset))
        .route("/favicon.ico", get(favicon));
    for path in PAGES {
        router = router.route(path, get(page));
    }
    router
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_the_page_imports_is_served() {
        let sources: Vec<&str> = std::iter::once(PAGE)
            .chain(ASSETS.iter().map(|(_, _, text)| *text))
            .collect();
        for source in sources {
            for import in source
                .split(['"', '\''])
                .filter(|s| s.starts_with("./") || s.starts_with("/ui/"))
            {
                let name = import.trim_start_matches("./").trim_start_matches("/ui/");
                assert!(
                    ASSETS.iter().any(|(n, _, _)| *n == name),
                    "{import} is referenced but not served"
                );
            }
        }
    }

    #[test]
    fn pages_and_assets_are_public_and_data_is_not() {
        for path in ["/", "/search", "/trace/abc", "/ui/app.js", "/favicon.ico"] {
            assert!(is_public(path), "{path}");
        }
        for path in ["/api/services", "/metrics", "/api/traces/abc", "/ready"] {
            assert!(!is_public(path), "{path}");
        }
    }
}
