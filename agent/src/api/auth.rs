//! Who may read the API: anyone on the host when it listens on loopback; only holders of the
//! bearer token when a token is configured, which is required for any other address (span data
//! shows every service's traffic on the node).

use std::{net::SocketAddr, path::Path, sync::Arc};

use axum::{
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::Response,
};

use super::ApiError;

/// Shortest token accepted: 128 bits of hex or base64 is 22-32 characters.
const MIN_TOKEN_LEN: usize = 16;

/// Where the API listens and the token it requires, if any.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub addr: SocketAddr,
    token: Option<Arc<str>>,
}

impl ApiConfig {
    /// Reads the token from `token_file` (one line; surrounding whitespace ignored).
    pub fn new(addr: SocketAddr, token_file: Option<&Path>) -> Result<Self, ApiError> {
        let token = match token_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ApiError::TokenFile {
                    path: path.to_path_buf(),
                    source,
                })?;
                Some(Arc::from(text.trim()))
            }
        };
        let config = Self { addr, token };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ApiError> {
        match &self.token {
            None if !self.addr.ip().is_loopback() => Err(ApiError::NotLoopback(self.addr)),
            Some(token)
                if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Err(ApiError::WeakToken { min: MIN_TOKEN_LEN })
            }
            _ => Ok(()),
        }
    }

    pub fn token(&self) -> Option<Arc<str>> {
        self.token.clone()
    }
}

/// Compares without an early exit, so response time does not reveal how much of a guess matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Lets a request through when it carries `Authorization: Bearer <token>`; 401 otherwise. The
/// page and its assets hold no data and are served to all, so a browser can ask for the token.
pub async fn require_token(
    State(token): State<Arc<str>>,
    request: Request,
    next: Next,
) -> Response {
    if super::ui::is_public(request.uri().path()) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if presented.is_some_and(|p| same(p.as_bytes(), token.as_bytes())) {
        return next.run(request).await;
    }
    let mut refused = super::envelope::error(
        StatusCode::UNAUTHORIZED,
        "this API needs `Authorization: Bearer <token>` (the token in the agent's --ui-token-file)",
    );
    refused.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"sockspan\""),
    );
    refused
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token file in the temp dir, removed on drop.
    struct TokenFile(std::path::PathBuf);

    impl Drop for TokenFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn token_file(text: &str) -> TokenFile {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("sockspan-token-{}-{n}", std::process::id()));
        std::fs::write(&path, text).expect("write token file");
        TokenFile(path)
    }

    #[test]
    fn loopback_needs_no_token_and_other_addresses_do() {
        let loopback: SocketAddr = "127.0.0.1:16686".parse().expect("addr");
        let any: SocketAddr = "0.0.0.0:16686".parse().expect("addr");
        assert!(ApiConfig::new(loopback, None).is_ok());
        let err = ApiConfig::new(any, None).expect_err("non-loopback without a token");
        assert!(err.to_string().contains("--ui-token-file"), "{err}");
        let file = token_file("  0123456789abcdef0123\n");
        let config = ApiConfig::new(any, Some(&file.0)).expect("with a token");
        assert_eq!(config.token().as_deref(), Some("0123456789abcdef0123"));
    }

    #[test]
    fn weak_or_missing_tokens_are_refused_by_name() {
        let any: SocketAddr = "[::]:16686".parse().expect("addr");
        let short = token_file("hunter2");
        let err = ApiConfig::new(any, Some(&short.0)).expect_err("short token");
        assert!(err.to_string().contains("at least 16"), "{err}");
        let spaced = token_file("0123456789 abcdef0123");
        assert!(ApiConfig::new(any, Some(&spaced.0)).is_err());
        let err =
            ApiConfig::new(any, Some(Path::new("/nonexistent/token"))).expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/token"), "{err}");
    }

    #[test]
    fn comparison_needs_the_whole_token() {
        assert!(same(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same(b"0123456789abcdef", b"0123456789abcdeX"));
        assert!(!same(b"0123456789abcdef", b"0123456789abcde"));
        assert!(!same(b"", b"x"));
    }
}
