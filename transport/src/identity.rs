//! A facility's identity: an ed25519 key, a self-signed certificate naming
//! the facility, and the pin (blake3 of the certificate) its peers list.
//!
//! There is no CA. Each facility's config lists every peer's pin; the QUIC
//! verifiers accept exactly those certificates, in both directions.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use thiserror::Error;

use crate::FacilityId;

/// File name of the private key written by [`Identity::write_pem`].
pub const KEY_FILE: &str = "facility.key";
/// File name of the certificate written by [`Identity::write_pem`].
pub const CERT_FILE: &str = "facility.crt";

/// The DNS name a facility's certificate is issued for.
pub fn server_name(id: &FacilityId) -> String {
    format!("{id}.bulwark")
}

/// A facility's key and certificate.
#[derive(Clone)]
pub struct Identity {
    /// The facility this identity belongs to.
    pub id: FacilityId,
    cert: CertificateDer<'static>,
    key_pkcs8: Vec<u8>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id)
            .field("pin", &self.pin())
            .finish_non_exhaustive()
    }
}

/// Why an identity could not be made, written or read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Key or certificate generation failed.
    #[error("cannot generate identity: {0}")]
    Generate(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl Identity {
    /// Makes a new ed25519 key and a self-signed certificate for `id`.
    pub fn generate(id: FacilityId) -> Result<Identity, IdentityError> {
        let gen = |e: rcgen::Error| IdentityError::Generate(e.to_string());
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(gen)?;
        let mut params = rcgen::CertificateParams::new(vec![server_name(&id)]).map_err(gen)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, id.as_str());
        let cert = params.self_signed(&key).map_err(gen)?;
        Ok(Identity {
            id,
            cert: cert.der().clone(),
            key_pkcs8: key.serialize_der(),
        })
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The private key, for rustls.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }

    /// The pin peers list for this facility.
    pub fn pin(&self) -> Pin {
        Pin::of(&self.cert)
    }

    /// Writes `facility.key` (mode 0600 on Unix) and `facility.crt` into `dir`,
    /// refusing to overwrite an existing key.
    pub fn write_pem(&self, dir: &Path) -> Result<(), IdentityError> {
        std::fs::create_dir_all(dir).map_err(|source| IdentityError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let key_path = dir.join(KEY_FILE);
        let cert_path = dir.join(CERT_FILE);
        let key_pem = pem_block("PRIVATE KEY", &self.key_pkcs8);
        let cert_pem = pem_block("CERTIFICATE", &self.cert);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Io { path, source }
        };
        let mut f = opts.open(&key_path).map_err(io(&key_path))?;
        std::io::Write::write_all(&mut f, key_pem.as_bytes()).map_err(io(&key_path))?;
        f.sync_all().map_err(io(&key_path))?;
        std::fs::write(&cert_path, cert_pem).map_err(io(&cert_path))?;
        Ok(())
    }

    /// Reads a certificate and key written by [`Identity::write_pem`] and
    /// checks that the certificate is issued for `id` and that the key is
    /// the one it certifies.
    pub fn read_pem(id: FacilityId, cert: &Path, key: &Path) -> Result<Identity, IdentityError> {
        let invalid = |path: &Path, reason: String| IdentityError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let cert_der = CertificateDer::from_pem_file(cert)
            .map_err(|e| invalid(cert, format!("not a PEM certificate: {e}")))?;
        let key_der = PrivatePkcs8KeyDer::from_pem_file(key)
            .map_err(|e| invalid(key, format!("not a PEM PKCS#8 private key: {e}")))?;
        let end_entity = webpki::EndEntityCert::try_from(&cert_der)
            .map_err(|e| invalid(cert, format!("unreadable certificate: {e}")))?;
        let name = ServerName::try_from(server_name(&id))
            .map_err(|e| invalid(cert, format!("bad server name: {e}")))?;
        end_entity
            .verify_is_valid_for_subject_name(&name)
            .map_err(|_| invalid(cert, format!("certificate is not issued for facility {id}")))?;
        // Prove that the key belongs to the certificate: sign, then verify.
        let signing = rustls::crypto::ring::sign::any_eddsa_type(&key_der)
            .map_err(|e| invalid(key, format!("not an ed25519 key: {e}")))?;
        let signer = signing
            .choose_scheme(&[rustls::SignatureScheme::ED25519])
            .ok_or_else(|| invalid(key, "not an ed25519 key".into()))?;
        let challenge = b"bulwark identity self-check";
        let sig = signer
            .sign(challenge)
            .map_err(|e| invalid(key, format!("cannot sign: {e}")))?;
        end_entity
            .verify_signature(webpki::ring::ED25519, challenge, &sig)
            .map_err(|_| {
                invalid(
                    key,
                    format!("key does not match certificate {}", cert.display()),
                )
            })?;
        Ok(Identity {
            id,
            cert: cert_der,
            key_pkcs8: key_der.secret_pkcs8_der().to_vec(),
        })
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der))
}

/// A pinned certificate: `blake3:` and 64 hex digits of the blake3 hash of
/// the certificate's DER.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pin([u8; 32]);

impl Pin {
    /// The pin of a certificate.
    pub fn of(cert: &CertificateDer<'_>) -> Pin {
        Pin(*blake3::hash(cert.as_ref()).as_bytes())
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("blake3:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pin({self})")
    }
}

/// Why a string is not a [`Pin`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid pin {0:?}: expected \"blake3:\" and 64 hex digits")]
pub struct InvalidPin(pub String);

impl FromStr for Pin {
    type Err = InvalidPin;

    fn from_str(s: &str) -> Result<Pin, InvalidPin> {
        let bad = || InvalidPin(s.chars().take(80).collect());
        let hex = s.strip_prefix("blake3:").ok_or_else(bad)?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Pin(out))
    }
}

impl serde::Serialize for Pin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Pin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Pin, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> FacilityId {
        s.parse().unwrap()
    }

    #[test]
    fn pin_round_trips_and_rejects_bad_text() {
        let ident = Identity::generate(id("alpha")).unwrap();
        let pin = ident.pin();
        assert_eq!(pin.to_string().parse::<Pin>().unwrap(), pin);
        for bad in [
            "",
            "blake3:",
            "sha256:00",
            &format!("blake3:{}", "z".repeat(64)),
        ] {
            assert!(bad.parse::<Pin>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pem_round_trip_checks_id_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::generate(id("alpha")).unwrap();
        a.write_pem(dir.path()).unwrap();
        let (cert, key) = (dir.path().join(CERT_FILE), dir.path().join(KEY_FILE));
        let back = Identity::read_pem(id("alpha"), &cert, &key).unwrap();
        assert_eq!(back.pin(), a.pin());
        assert_eq!(back.key_pkcs8, a.key_pkcs8);

        let err = Identity::read_pem(id("bravo"), &cert, &key).unwrap_err();
        assert!(
            err.to_string().contains("not issued for facility bravo"),
            "{err}"
        );

        // The key of another facility does not match alpha's certificate.
        let other = tempfile::tempdir().unwrap();
        Identity::generate(id("alpha"))
            .unwrap()
            .write_pem(other.path())
            .unwrap();
        let err = Identity::read_pem(id("alpha"), &cert, &other.path().join(KEY_FILE)).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");

        // A second keygen into the same directory refuses to overwrite.
        assert!(a.write_pem(dir.path()).is_err());
    }

    #[test]
    fn garbage_files_give_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"not pem at all").unwrap();
        let err = Identity::read_pem(id("alpha"), &junk, &junk).unwrap_err();
        assert!(matches!(err, IdentityError::Invalid { .. }), "{err:?}");
        assert!(err.to_string().contains("junk"));
    }
}
