//! The API's server loop: HTTP/1.1 over TCP, with TLS when the config
//! gives a certificate, and limits that keep a facility serving when
//! clients misbehave.
//!
//! - **TLS**: rustls, TLS 1.3 only, the certificate and key from
//!   `[api.tls]` (`bulwark keygen` writes an ECDSA P-256 pair and prints
//!   its pin). Plain HTTP listens only on loopback unless the config
//!   allows otherwise ([`check_plain`]).
//! - **Connections**: at most [`Limits::connections_max`] open at once;
//!   one over the cap is closed at once, counted
//!   (`bulwark_api_connections_refused_total`). One request at a time per
//!   connection (HTTP/1.1, no HTTP/2).
//! - **Slow or idle clients**: a connection must finish its TLS handshake
//!   within [`Limits::handshake_timeout`], and each request's headers
//!   within [`Limits::header_read_timeout`] of the previous answer (an
//!   idle keep-alive connection is closed then too); headers over
//!   [`Limits::header_bytes_max`] are refused (431). (Every request is
//!   answered within [`Limits::request_timeout`], 503 TIMED_OUT past it:
//!   the API's front layer does that, [`super::ApiState::with_request_timeout`].)
//! - **Stop**: `shutdown` stops accepting, and connections finish the
//!   request in hand.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bulwark_transport::identity::Pin;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The server's limits (`[api]` keys of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once.
    pub connections_max: usize,
    /// Time to finish a TLS handshake.
    pub handshake_timeout: Duration,
    /// Time to send a request's headers (from the connection's start or
    /// the previous answer): slow, half-sent and idle connections end then.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers).
    pub header_bytes_max: usize,
    /// Time to answer a request, whatever it waits on.
    pub request_timeout: Duration,
    /// Connections open at once from one remote address (0: no cap), so
    /// one host cannot take every slot; loopback peers (a local proxy)
    /// are not capped when `loopback_exempt`.
    pub connections_per_ip_max: usize,
    /// See `connections_per_ip_max`.
    pub loopback_exempt: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections_max: 4_096,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            header_bytes_max: 16 * 1024,
            request_timeout: Duration::from_secs(30),
            connections_per_ip_max: 256,
            loopback_exempt: true,
        }
    }
}

/// Open connections by remote address.
#[derive(Default)]
struct PerIp {
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

impl PerIp {
    /// Takes a slot for `ip` if it has fewer than `max` open.
    fn take(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<IpSlot> {
        let mut open = self.open.lock().expect("per-ip lock");
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            map: self.clone(),
            ip,
        })
    }
}

/// One connection's place in its address's count; given back on drop.
struct IpSlot {
    map: Arc<PerIp>,
    ip: std::net::IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.map.open.lock().expect("per-ip lock");
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Smallest head buffer hyper takes.
pub const HEADER_BYTES_MIN: usize = 8 * 1024;

/// `[api.tls]`: the API's certificate and key (PEM; relative paths are
/// relative to the config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// The private key (PKCS#8).
    pub key: std::path::PathBuf,
}

/// Why the API cannot listen as configured.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A certificate or key file is unusable.
    #[error("{path}: {reason}")]
    Tls {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A plain-HTTP listener on a non-loopback address, not allowed.
    #[error(
        "http_listen {0} is not a loopback address and [api.tls] is not set: the API would \
         send personnel data and tokens in clear. Give [api.tls] cert and key (`bulwark keygen` \
         writes a pair), or set [api] allow_plain_http = true if a TLS proxy in front does it"
    )]
    PlainOffLoopback(SocketAddr),
}

/// Refuses a plain listener off loopback unless `allowed` (then warns).
pub fn check_plain(addr: SocketAddr, tls: bool, allowed: bool) -> Result<(), ServeError> {
    if tls || addr.ip().is_loopback() {
        return Ok(());
    }
    if !allowed {
        return Err(ServeError::PlainOffLoopback(addr));
    }
    tracing::warn!(
        %addr,
        "the API serves plain HTTP off loopback (allow_plain_http = true): tokens and \
         personnel data cross the network in clear unless a TLS proxy is in front"
    );
    Ok(())
}

/// The rustls server config of `files`: TLS 1.3 only, HTTP/1.1.
pub fn tls_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    let bad = |path: &Path, reason: String| ServeError::Tls {
        path: path.to_path_buf(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| bad(&files.cert, format!("not a PEM certificate file: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&files.cert, format!("not a PEM certificate file: {e}")))?;
    if chain.is_empty() {
        return Err(bad(&files.cert, "no certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| bad(&files.key, format!("not a PEM private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad(&files.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| bad(&files.key, format!("does not fit the certificate: {e}")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The pin of the first certificate in `cert` (what `--pin` takes).
pub fn pin_of(cert: &Path) -> Result<Pin, ServeError> {
    let der = CertificateDer::from_pem_file(cert).map_err(|e| ServeError::Tls {
        path: cert.to_path_buf(),
        reason: format!("not a PEM certificate: {e}"),
    })?;
    Ok(Pin::of(&der))
}

/// A certificate authority for the API certificates of one cluster
/// (`bulwark init`): clients trust every facility with one `--ca` file.
pub struct ApiCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

fn tls_err(path: &Path) -> impl Fn(rcgen::Error) -> ServeError + '_ {
    move |e| ServeError::Tls {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> ServeError + '_ {
    move |e| ServeError::Tls {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Writes `pem` to `path`, mode 0600, refusing to overwrite.
fn write_key(path: &Path, pem: &str) -> Result<(), ServeError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io_err(path))?;
    std::io::Write::write_all(&mut f, pem.as_bytes()).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

impl ApiCa {
    /// Makes a CA (ECDSA P-256) and writes `ca.crt` and `ca.key` (0600)
    /// into `dir`, refusing to overwrite.
    pub fn create(dir: &Path, name: &str) -> Result<ApiCa, ServeError> {
        let cert_path = dir.join("ca.crt");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(tls_err(&cert_path))?;
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(tls_err(&cert_path))?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("bulwark API CA ({name})"),
        );
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        write_key(&dir.join("ca.key"), &key.serialize_pem())?;
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, key).map_err(tls_err(&cert_path))?;
        std::fs::write(&cert_path, issuer.pem()).map_err(io_err(&cert_path))?;
        Ok(ApiCa { issuer })
    }
}

/// Writes `api.key` (mode 0600) and `api.crt` into `dir`: an ECDSA P-256
/// key (what browsers and curl take) and a certificate for `hosts` (names
/// or IP addresses; localhost and the loopback addresses are always in),
/// signed by `ca`, or self-signed. Refuses to overwrite a key. Returns the
/// certificate's pin.
pub fn write_api_pair(dir: &Path, hosts: &[String], ca: Option<&ApiCa>) -> Result<Pin, ServeError> {
    let key_path = dir.join("api.key");
    let cert_path = dir.join("api.crt");
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for h in hosts {
        if !names.contains(h) {
            names.push(h.clone());
        }
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(tls_err(&cert_path))?;
    let mut params = rcgen::CertificateParams::new(names).map_err(tls_err(&cert_path))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bulwark API");
    let cert = match ca {
        Some(ca) => params.signed_by(&key, &ca.issuer),
        None => params.self_signed(&key),
    }
    .map_err(tls_err(&cert_path))?;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    write_key(&key_path, &key.serialize_pem())?;
    std::fs::write(&cert_path, cert.pem()).map_err(io_err(&cert_path))?;
    Ok(Pin::of(cert.der()))
}

/// [`write_api_pair`], self-signed (`bulwark keygen`).
pub fn write_self_signed(dir: &Path, hosts: &[String]) -> Result<Pin, ServeError> {
    write_api_pair(dir, hosts, None)
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open
/// connections finish the request in hand (at most `drain`).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    let per_ip = Arc::new(PerIp::default());
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.header_bytes_max.max(HEADER_BYTES_MIN))
        .keep_alive(true);
    let http = Arc::new(http);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    metrics::counter!("bulwark_api_accept_errors_total").increment(1);
                    tracing::warn!(error = %e, "accepting an API connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let capped = limits.connections_per_ip_max > 0
            && !(limits.loopback_exempt && peer.ip().is_loopback());
        let ip_slot = match capped {
            true => match per_ip.take(peer.ip(), limits.connections_per_ip_max) {
                Some(s) => Some(s),
                None => {
                    metrics::counter!("bulwark_api_connections_refused_total", "why" => "per_ip")
                        .increment(1);
                    drop(tcp);
                    continue;
                }
            },
            false => None,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("bulwark_api_connections_refused_total", "why" => "cap").increment(1);
            drop(tcp);
            continue;
        };
        metrics::gauge!("bulwark_api_connections").increment(1.0);
        let _ = tcp.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        let http = http.clone();
        let acceptor = acceptor.clone();
        let handshake = limits.handshake_timeout;
        tokio::spawn(async move {
            let _slots = (slot, ip_slot);
            match acceptor {
                None => {
                    let conn = http.serve_connection(TokioIo::new(tcp), svc);
                    let _ = watcher.watch(conn).await;
                }
                Some(acceptor) => {
                    match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let conn = http.serve_connection(TokioIo::new(stream), svc);
                            let _ = watcher.watch(conn).await;
                        }
                        Ok(Err(_)) | Err(_) => {
                            metrics::counter!("bulwark_api_tls_handshake_failures_total")
                                .increment(1);
                        }
                    }
                }
            }
            metrics::gauge!("bulwark_api_connections").decrement(1.0);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(drain, graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(limits: Limits) -> SocketAddr {
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            app,
            None,
            limits,
            std::future::pending(),
            Duration::from_secs(1),
        ));
        addr
    }

    /// Reads until the server closes (or 10 s pass): what it sent.
    async fn read_all(t: &mut tokio::net::TcpStream) -> Option<String> {
        let mut out = Vec::new();
        match tokio::time::timeout(Duration::from_secs(10), t.read_to_end(&mut out)).await {
            Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
            Err(_) => None,
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut t = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        t.write_all(req.as_bytes()).await.unwrap();
        read_all(&mut t).await.expect("an answer")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_idle_oversized_and_excess_connections_end() {
        let limits = Limits {
            connections_max: 4,
            handshake_timeout: Duration::from_millis(300),
            header_read_timeout: Duration::from_millis(300),
            header_bytes_max: HEADER_BYTES_MIN,
            request_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let addr = start(limits).await;
        assert!(get(addr, "/").await.ends_with("ok"));
        // Four held open (idle, half a request): the cap is full, so a
        // fifth is closed at once without an answer.
        let mut held = Vec::new();
        for i in 0..4 {
            let mut t = tokio::net::TcpStream::connect(addr).await.unwrap();
            if i % 2 == 1 {
                t.write_all(b"GET / HTTP/1.1\r\nHost:").await.unwrap();
            }
            held.push(t);
        }
        // Let the server take them all before the fifth arrives.
        for t in &held {
            t.writable().await.unwrap();
        }
        let mut fifth = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = fifth.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let got = read_all(&mut fifth).await;
        // Either closed unanswered (over the cap) or, if one held
        // connection had already timed out, served: never left hanging.
        assert!(got.is_some(), "the fifth connection hangs");
        // The held ones close after the header timeout, unanswered
        // except for hyper's 408 on the half-sent ones.
        for mut t in held {
            let got = read_all(&mut t).await.expect("a slow connection left open");
            assert!(!got.contains("200 OK"), "{got}");
        }
        // Then the facility serves again.
        assert!(get(addr, "/").await.ends_with("ok"));
        // A head over the limit: 431.
        let mut t = tokio::net::TcpStream::connect(addr).await.unwrap();
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(HEADER_BYTES_MIN * 2)
        );
        let _ = t.write_all(big.as_bytes()).await;
        let got = read_all(&mut t).await.expect("an answer");
        assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_address_gets_at_most_its_share_of_connections() {
        let limits = Limits {
            connections_per_ip_max: 2,
            loopback_exempt: false,
            header_read_timeout: Duration::from_secs(30),
            ..Limits::default()
        };
        let addr = start(limits).await;
        let a = tokio::net::TcpStream::connect(addr).await.unwrap();
        let b = tokio::net::TcpStream::connect(addr).await.unwrap();
        a.writable().await.unwrap();
        b.writable().await.unwrap();
        // A third from the same address is closed unanswered, at once.
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let got = read_all(&mut third)
            .await
            .expect("closed, not left hanging");
        assert!(!got.contains("200 OK"), "{got}");
        // One of the two goes: a new one is served.
        drop(a);
        let got = until_served(addr).await;
        assert!(got.ends_with("ok"), "{got}");
        drop(b);
    }

    /// `get` until one is answered (the server frees a slot once it sees
    /// the close), at most 50 tries.
    async fn until_served(addr: SocketAddr) -> String {
        for _ in 0..50 {
            let mut t = tokio::net::TcpStream::connect(addr).await.unwrap();
            let _ = t
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            if let Some(got) = read_all(&mut t).await {
                if got.contains("200 OK") {
                    return got;
                }
            }
            tokio::task::yield_now().await;
        }
        panic!("never served again");
    }

    #[test]
    fn a_plain_listener_off_loopback_is_refused_unless_allowed() {
        let open: SocketAddr = "0.0.0.0:8401".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8401".parse().unwrap();
        assert!(matches!(
            check_plain(open, false, false),
            Err(ServeError::PlainOffLoopback(_))
        ));
        assert!(check_plain(open, true, false).is_ok());
        assert!(check_plain(open, false, true).is_ok());
        assert!(check_plain(local, false, false).is_ok());
    }

    #[test]
    fn a_written_pair_loads_and_its_pin_is_the_certificate_s() {
        let dir = tempfile::tempdir().unwrap();
        let pin = write_self_signed(dir.path(), &["alpha.example".into()]).unwrap();
        let files = TlsFiles {
            cert: dir.path().join("api.crt"),
            key: dir.path().join("api.key"),
        };
        assert!(tls_config(&files).is_ok());
        assert_eq!(pin_of(&files.cert).unwrap(), pin);
        // Never overwritten; a foreign file is a typed error.
        assert!(write_self_signed(dir.path(), &[]).is_err());
        std::fs::write(&files.key, b"not a key").unwrap();
        assert!(matches!(tls_config(&files), Err(ServeError::Tls { .. })));
    }
}
