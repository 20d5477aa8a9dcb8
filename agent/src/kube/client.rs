//! A GET to the Kubernetes API server as a pod's service account: HTTPS verified against the
//! account's CA, its token as a bearer token (read anew for each request: projected tokens
//! rotate), the body bounded.

use std::{net::IpAddr, sync::Arc, time::Duration};

use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};

use super::KubeError;

/// Where a pod's service account keeps its token, CA and namespace.
pub const ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A pod list of a node with hundreds of pods is a few MiB; more is refused, not buffered.
const MAX_BODY: usize = 64 << 20;

/// How long a request (connect, TLS, response) may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The API server, as reached from the agent's pod.
pub struct ApiServer {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    token_path: String,
}

impl ApiServer {
    /// The API server a pod reaches: `KUBERNETES_SERVICE_HOST` and `…_PORT` (set in every pod),
    /// verified with the service account's `ca.crt`.
    ///
    /// # Errors
    /// Not in a pod (no such variables), or the service account's CA cannot be read.
    pub fn in_cluster() -> Result<Self, KubeError> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| KubeError::NotInPod)?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(443);
        Self::new(
            &host,
            port,
            &format!("{ACCOUNT_DIR}/ca.crt"),
            &format!("{ACCOUNT_DIR}/token"),
        )
    }

    /// The API server at `host:port`, its certificate verified against the PEM certificates in
    /// `ca_path`, requests carrying the token in `token_path`.
    ///
    /// # Errors
    /// The CA file cannot be read or holds no certificate, or `host` is no valid server name.
    pub fn new(host: &str, port: u16, ca_path: &str, token_path: &str) -> Result<Self, KubeError> {
        let ca = |reason: String| KubeError::Ca {
            path: ca_path.to_string(),
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_path)
            .map_err(|e| ca(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| ca(e.to_string()))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(ca("no certificate in it".to_string()));
        }
        // Deprecated only for lacking post-quantum key exchange, which the API server's TLS does
        // not need; the provider that has it (aws-lc-rs) would add cmake and a long C build.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ca(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // A pod reaches the API server by its service IP, which its certificate names.
        let server_name = host.parse::<IpAddr>().map_or_else(
            |_| {
                ServerName::try_from(host.to_string())
                    .map_err(|_| KubeError::Host(host.to_string()))
            },
            |ip| Ok(ServerName::IpAddress(ip.into())),
        )?;
        Ok(Self {
            host: host.to_string(),
            port,
            server_name,
            tls: Arc::new(tls),
            token_path: token_path.to_string(),
        })
    }

    /// The body of `GET path_and_query`, when the answer is 200.
    ///
    /// # Errors
    /// Connection, TLS, a status other than 200, a body over 64 MiB, or the timeout.
    pub async fn get(&self, path_and_query: &str) -> Result<bytes::Bytes, KubeError> {
        tokio::time::timeout(TIMEOUT, self.get_unbounded(path_and_query))
            .await
            .map_err(|_| KubeError::Request(format!("no answer within {TIMEOUT:?}")))?
    }

    async fn get_unbounded(&self, path_and_query: &str) -> Result<bytes::Bytes, KubeError> {
        let request_error = |e: &dyn std::fmt::Display| KubeError::Request(e.to_string());
        let token = std::fs::read_to_string(&self.token_path).map_err(|e| KubeError::Token {
            path: self.token_path.clone(),
            reason: e.to_string(),
        })?;
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| request_error(&e))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| request_error(&e))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(tls))
                .await
                .map_err(|e| request_error(&e))?;
        let driver = tokio::spawn(connection);
        let host = match self.server_name {
            ServerName::IpAddress(_) if self.host.contains(':') => format!("[{}]", self.host),
            _ => self.host.clone(),
        };
        let request = hyper::Request::get(path_and_query)
            .header(hyper::header::HOST, format!("{host}:{}", self.port))
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            )
            // Metadata only where the API server offers it (1.15+), else the full objects: both
            // parse as a list of items with `metadata`.
            .header(
                hyper::header::ACCEPT,
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json",
            )
            .header(hyper::header::USER_AGENT, "sockspan")
            .body(Empty::new())
            .map_err(|e| request_error(&e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| request_error(&e))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| request_error(&*e))?
            .to_bytes();
        driver.abort();
        if status != hyper::StatusCode::OK {
            // The API's Status message says why (e.g. RBAC's "cannot list resource pods").
            let message: String = String::from_utf8_lossy(&body).chars().take(300).collect();
            return Err(KubeError::Status(status.as_u16(), message));
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    //! The client against a real TLS server (rustls, a CA and certificate made by `openssl`):
    //! what is checked is this client's TLS, token and status handling. No Kubernetes API
    //! server runs on the machines sockspan is tested on; the pod list's parsing is tested in
    //! `pod_list` with a list of the API's shape.

    use std::{path::Path, process::Command};

    use rustls_pki_types::PrivateKeyDer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Runs `openssl` with `args` (split at spaces) in `dir`.
    fn openssl(dir: &Path, args: &str) {
        let args: Vec<&str> = args.split_whitespace().collect();
        let status = Command::new("openssl")
            .args(&args)
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs (apt-get install openssl; cargo xtask setup installs it)");
        assert!(status.success(), "openssl {args:?}");
    }

    /// A CA and a certificate it signed for 127.0.0.1 (as an API server's names its service
    /// IP), in `dir`; a second, unrelated CA beside them.
    fn certificates(dir: &Path) {
        const EC: &str = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
        for (name, subject) in [("ca", "test-ca"), ("other", "other")] {
            openssl(
                dir,
                &format!(
                    "req -x509 {EC} -keyout {name}.key -out {name}.crt -days 2 -subj /CN={subject}"
                ),
            );
        }
        openssl(
            dir,
            &format!("req {EC} -keyout server.key -out server.csr -subj /CN=apiserver"),
        );
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("write");
        openssl(
            dir,
            "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt \
             -days 2 -extfile san.ext",
        );
        std::fs::write(dir.join("token"), "secret-token\n").expect("write");
    }

    /// Serves `connections` requests: 200 with a pod list for the right bearer token, else 403
    /// (as the API server does). Returns the port.
    async fn serve(dir: &Path, connections: usize) -> u16 {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join("server.crt"))
                .expect("cert")
                .collect::<Result<_, _>>()
                .expect("cert");
        let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("key");
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            for _ in 0..connections {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&request).to_lowercase();
                let (status, body) = if request.contains("authorization: bearer secret-token\r\n")
                    && request.starts_with("get /api/v1/pods?fieldselector=spec.nodename%3dnode-1 ")
                {
                    ("200 OK", include_str!("fixtures/pod_list.json"))
                } else {
                    (
                        "403 Forbidden",
                        r#"{"kind":"Status","message":"pods is forbidden"}"#,
                    )
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
        port
    }

    #[tokio::test]
    async fn lists_over_verified_tls_with_the_token_and_reports_refusals() {
        let dir = std::env::temp_dir().join(format!("sockspan-kube-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        certificates(&dir);
        let path = |name: &str| dir.join(name).display().to_string();
        let port = serve(&dir, 3).await;
        let path_and_query = "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1";

        let server =
            ApiServer::new("127.0.0.1", port, &path("ca.crt"), &path("token")).expect("client");
        let body = server.get(path_and_query).await.expect("listed");
        let pods = super::super::pod_list::parse(&body).expect("a pod list");
        assert_eq!(pods.len(), 7);

        // A wrong token: the API's refusal, with its message.
        std::fs::write(dir.join("token"), "stale\n").expect("write");
        let err = server
            .get(path_and_query)
            .await
            .expect_err("refused")
            .to_string();
        assert!(err.contains("403") && err.contains("forbidden"), "{err}");

        // A server whose certificate the CA did not sign is not trusted.
        let other =
            ApiServer::new("127.0.0.1", port, &path("other.crt"), &path("token")).expect("client");
        let err = other
            .get(path_and_query)
            .await
            .expect_err("untrusted")
            .to_string();
        assert!(err.to_lowercase().contains("certificate"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
