//! How the CLI commands reach a facility's API: its URL, a bearer token,
//! and, for `https://`, which certificate to trust: a CA or certificate
//! file (`--ca`, the host name is checked) or the certificate's pin
//! (`--pin`, as `bulwark keygen` prints it; exactly that certificate).

use std::path::PathBuf;
use std::sync::Arc;

use bulwark_transport::identity::Pin;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Refuses an `http://` URL to anything but this host: a bearer token
/// would cross the network in clear.
pub fn check_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Ok(());
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let local = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if local {
        Ok(())
    } else {
        Err(format!(
            "{url}: plain http to another host would send the token in clear; use https \
             (with --ca or --pin)"
        ))
    }
}

/// The API options every client command takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ApiArgs {
    /// The bearer token (default: $BULWARK_TOKEN, else $BULWARK_API__TOKEN).
    #[arg(long, env = "BULWARK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// For https: a PEM file of the certificates to trust (the facility's
    /// api.crt, or the CA that signed it: `bulwark init` writes ca.crt;
    /// default $BULWARK_CA).
    #[arg(long, env = "BULWARK_CA", conflicts_with = "pin")]
    pub ca: Option<PathBuf>,
    /// For https: the pin of the facility's API certificate
    /// (`blake3:…`, printed by `bulwark keygen`).
    #[arg(long, env = "BULWARK_PIN")]
    pub pin: Option<Pin>,
}

impl ApiArgs {
    /// The token given, else `$BULWARK_API__TOKEN`.
    pub fn token(&self) -> Option<String> {
        self.token
            .clone()
            .or_else(|| std::env::var("BULWARK_API__TOKEN").ok())
            .filter(|t| !t.is_empty())
    }

    /// An HTTP client that sends the token with every request and trusts
    /// what `--ca`/`--pin` name (nothing else: there are no built-in roots).
    pub fn client(&self, timeout: std::time::Duration) -> Result<reqwest::Client, String> {
        let mut b = reqwest::Client::builder().timeout(timeout);
        if let Some(t) = self.token() {
            let mut v = HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| "the token has characters a header cannot carry".to_string())?;
            v.set_sensitive(true);
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, v);
            b = b.default_headers(h);
        }
        if let Some(tls) = self.tls()? {
            b = b.use_preconfigured_tls(tls);
        }
        b.build().map_err(|e| e.to_string())
    }

    fn tls(&self) -> Result<Option<rustls::ClientConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?;
        let cfg = match (&self.ca, &self.pin) {
            (Some(ca), _) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(ca)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
                for c in certs {
                    let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
                    roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("{}: no certificate in it", ca.display()));
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            (None, Some(pin)) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned {
                    pin: *pin,
                    provider,
                }))
                .with_no_client_auth(),
            (None, None) => return Ok(None),
        };
        Ok(Some(cfg))
    }
}

/// Trusts exactly the certificate with the pin.
#[derive(Debug)]
struct Pinned {
    pin: Pin,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Pin::of(end_entity) != self.pin {
            return Err(rustls::Error::General(format!(
                "the server's certificate is {}, not the pinned {}",
                Pin::of(end_entity),
                self.pin
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not accepted".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::check_url;

    #[test]
    fn a_token_goes_in_clear_only_to_this_host() {
        for ok in [
            "http://127.0.0.1:8401",
            "http://localhost:8401/v1",
            "http://[::1]:8401",
            "https://alpha.example:8401",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in ["http://10.0.0.5:8401", "http://alpha.example:8401/v1"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
