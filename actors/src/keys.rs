//! Vote keys: the ed25519 keys facilities sign proposals and votes with.
//!
//! A facility's vote key is its own key, separate from the key behind its
//! QUIC certificate (docs/DECISIONS.md): the ledger must stay verifiable
//! from the vote keys alone for as long as it is kept, while TLS
//! certificates are rotated on their own schedule; and a leaked TLS key
//! (which sits in the network stack) must not let anyone sign history.
//!
//! Every signed message carries a domain tag, so bytes signed as a proposal
//! can never pass as a vote. Signatures are checked with `verify_strict`
//! over the bytes that were received, never over a re-encoding.

use std::collections::BTreeMap;
use std::sync::Arc;

use bulwark_transport::FacilityId;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// What a signature is over; prefixed to the signed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// A proposal (a Raft entry's payload).
    Proposal,
    /// A validator's vote.
    Vote,
}

impl Domain {
    fn tag(self) -> &'static [u8] {
        match self {
            Domain::Proposal => b"bulwark/proposal/v1\0",
            Domain::Vote => b"bulwark/vote/v1\0",
        }
    }

    /// The bytes actually signed: the domain tag, then `body`.
    pub fn message(self, body: &[u8]) -> Vec<u8> {
        let tag = self.tag();
        let mut m = Vec::with_capacity(tag.len() + body.len());
        m.extend_from_slice(tag);
        m.extend_from_slice(body);
        m
    }
}

/// An ed25519 signature (64 bytes), serialized as bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sig(pub [u8; 64]);

impl std::fmt::Debug for Sig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sig({}…)", hex_prefix(&self.0))
    }
}

fn hex_prefix(b: &[u8]) -> String {
    b.iter().take(6).map(|x| format!("{x:02x}")).collect()
}

impl Serialize for Sig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Sig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Sig, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Sig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Sig, E> {
                let arr: [u8; 64] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(Sig(arr))
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Sig, E> {
                self.visit_bytes(v)
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Sig, E> {
                self.visit_bytes(&v)
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Why a signature or key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// No vote key is known for the facility.
    #[error("no vote key known for facility {0}")]
    UnknownSigner(FacilityId),
    /// The signature does not verify (strictly) over the bytes received.
    #[error("signature by {0} does not verify")]
    BadSignature(FacilityId),
    /// A key's text form is not `ed25519:<64 hex digits>` or not a valid
    /// point.
    #[error("invalid vote key: {0}")]
    Invalid(String),
}

/// The vote keys of every facility of the cluster: who may sign.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicKeys {
    keys: BTreeMap<FacilityId, VerifyingKey>,
}

impl PublicKeys {
    /// A set from `(facility, key)` pairs.
    pub fn new(keys: impl IntoIterator<Item = (FacilityId, VerifyingKey)>) -> PublicKeys {
        PublicKeys {
            keys: keys.into_iter().collect(),
        }
    }

    /// The key of `f`.
    pub fn get(&self, f: &FacilityId) -> Option<&VerifyingKey> {
        self.keys.get(f)
    }

    /// How many facilities may sign (the validator set's size, n).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is known.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The facilities, in order.
    pub fn facilities(&self) -> impl Iterator<Item = &FacilityId> {
        self.keys.keys()
    }

    /// Checks `sig` by `signer` over `domain` + `body`.
    pub fn verify(
        &self,
        signer: &FacilityId,
        domain: Domain,
        body: &[u8],
        sig: &Sig,
    ) -> Result<(), KeyError> {
        let key = self
            .get(signer)
            .ok_or_else(|| KeyError::UnknownSigner(signer.clone()))?;
        key.verify_strict(&domain.message(body), &Signature::from_bytes(&sig.0))
            .map_err(|_| KeyError::BadSignature(signer.clone()))
    }

    /// Checks many `(signer, body, sig)` in one ed25519 batch verification.
    /// `Ok` only if every one verifies; on `Err`, check them one by one to
    /// find the bad ones. Batch verification is not strict about small-order
    /// keys, so keys are checked to be non-weak when parsed.
    pub fn verify_batch(
        &self,
        domain: Domain,
        items: &[(&FacilityId, &[u8], &Sig)],
    ) -> Result<(), KeyError> {
        let mut messages = Vec::with_capacity(items.len());
        let mut sigs = Vec::with_capacity(items.len());
        let mut keys = Vec::with_capacity(items.len());
        for (signer, body, sig) in items {
            let key = self
                .get(signer)
                .ok_or_else(|| KeyError::UnknownSigner((*signer).clone()))?;
            messages.push(domain.message(body));
            sigs.push(Signature::from_bytes(&sig.0));
            keys.push(*key);
        }
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        ed25519_dalek::verify_batch(&refs, &sigs, &keys).map_err(|_| {
            KeyError::BadSignature(
                items
                    .first()
                    .map(|i| i.0.clone())
                    .unwrap_or_else(|| "unknown".parse().expect("valid id")),
            )
        })
    }
}

/// Parses `ed25519:<64 hex digits>` (the form configs and `keygen` use).
pub fn parse_public(text: &str) -> Result<VerifyingKey, KeyError> {
    let hex = text
        .strip_prefix("ed25519:")
        .ok_or_else(|| KeyError::Invalid("expected ed25519:<64 hex digits>".into()))?;
    let bytes: [u8; 32] = decode_hex32(hex)?;
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|e| KeyError::Invalid(format!("not a key: {e}")))?;
    if key.is_weak() {
        return Err(KeyError::Invalid("a weak (small-order) key".into()));
    }
    Ok(key)
}

/// The text form of a public key: `ed25519:<64 hex digits>`.
pub fn format_public(key: &VerifyingKey) -> String {
    let hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("ed25519:{hex}")
}

fn decode_hex32(hex: &str) -> Result<[u8; 32], KeyError> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(KeyError::Invalid("expected 64 hex digits".into()));
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).map_err(|_| KeyError::Invalid("not hex".into()))?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| KeyError::Invalid("not hex".into()))?;
    }
    Ok(out)
}

/// Parses a secret key file's text: 64 hex digits (the seed).
pub fn parse_secret(text: &str) -> Result<SigningKey, KeyError> {
    Ok(SigningKey::from_bytes(&decode_hex32(text)?))
}

/// The text form of a secret key: 64 hex digits and a newline.
pub fn format_secret(key: &SigningKey) -> String {
    let hex: String = key.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}\n")
}

/// A new secret key from the OS's randomness.
pub fn generate_secret() -> SigningKey {
    let seed: [u8; 32] = rand::random();
    SigningKey::from_bytes(&seed)
}

/// This facility's signing key and every facility's public key.
#[derive(Clone)]
pub struct Keyring {
    me: FacilityId,
    /// The keys this facility holds: its vote key first, then the one it
    /// rotates to (see `crate::epoch`).
    secrets: Arc<Vec<SigningKey>>,
    public: Arc<PublicKeys>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("me", &self.me)
            .field("signers", &self.public.len())
            .finish()
    }
}

impl Keyring {
    /// A keyring for `me`. `public` must hold `me`'s own public key, and it
    /// must match `secret`.
    pub fn new(
        me: FacilityId,
        secret: SigningKey,
        public: PublicKeys,
    ) -> Result<Keyring, KeyError> {
        match public.get(&me) {
            Some(k) if *k == secret.verifying_key() => {}
            Some(_) => {
                return Err(KeyError::Invalid(format!(
                    "the public key listed for {me} does not match its secret key"
                )))
            }
            None => return Err(KeyError::UnknownSigner(me)),
        }
        Ok(Keyring {
            me,
            secrets: Arc::new(vec![secret]),
            public: Arc::new(public),
        })
    }

    /// A keyring holding `secrets` (at least one: the vote key first) with
    /// `genesis` as the genesis set, which need not list `me` (a facility
    /// that joined later, or whose key was rotated).
    pub fn holding(me: FacilityId, secrets: Vec<SigningKey>, genesis: PublicKeys) -> Keyring {
        assert!(!secrets.is_empty(), "a keyring holds a key");
        Keyring {
            me,
            secrets: Arc::new(secrets),
            public: Arc::new(genesis),
        }
    }

    /// This keyring also holding `next` (the key it rotates to).
    pub fn and_next(&self, next: SigningKey) -> Keyring {
        let mut secrets = (*self.secrets).clone();
        if !secrets
            .iter()
            .any(|s| s.verifying_key() == next.verifying_key())
        {
            secrets.push(next);
        }
        Keyring {
            me: self.me.clone(),
            secrets: Arc::new(secrets),
            public: self.public.clone(),
        }
    }

    /// The public keys of the keys held, the vote key first.
    pub fn held(&self) -> Vec<VerifyingKey> {
        self.secrets.iter().map(|s| s.verifying_key()).collect()
    }

    /// Whether the secret of `key` is held.
    pub fn holds(&self, key: &VerifyingKey) -> bool {
        self.secrets.iter().any(|s| s.verifying_key() == *key)
    }

    /// Signs `body` in `domain` with the held key whose public key is
    /// `key`; None if none is held.
    pub fn sign_as(&self, key: &VerifyingKey, domain: Domain, body: &[u8]) -> Option<Sig> {
        self.secrets
            .iter()
            .find(|s| s.verifying_key() == *key)
            .map(|s| Sig(s.sign(&domain.message(body)).to_bytes()))
    }

    /// Deterministic keys for tests and the harness: facility `f`'s secret
    /// is blake3 of `seed` and `f`. Never use outside tests.
    pub fn deterministic(members: &[FacilityId], seed: u64) -> BTreeMap<FacilityId, Keyring> {
        let secret = |f: &FacilityId| Keyring::deterministic_secret(f, seed);
        let public = PublicKeys::new(
            members
                .iter()
                .map(|f| (f.clone(), secret(f).verifying_key())),
        );
        members
            .iter()
            .map(|f| {
                let ring =
                    Keyring::new(f.clone(), secret(f), public.clone()).expect("own key listed");
                (f.clone(), ring)
            })
            .collect()
    }

    /// The secret [`Keyring::deterministic`] gives `f` for `seed`. Never
    /// use outside tests.
    pub fn deterministic_secret(f: &FacilityId, seed: u64) -> SigningKey {
        let mut h = blake3::Hasher::new();
        h.update(b"bulwark test vote key");
        h.update(&seed.to_le_bytes());
        h.update(f.as_str().as_bytes());
        SigningKey::from_bytes(h.finalize().as_bytes())
    }

    /// This facility.
    pub fn me(&self) -> &FacilityId {
        &self.me
    }

    /// The genesis set's public keys (the sets after it are in the
    /// ledger: `crate::epoch`).
    pub fn public(&self) -> &PublicKeys {
        &self.public
    }

    /// Signs `body` in `domain` with this facility's key.
    pub fn sign(&self, domain: Domain, body: &[u8]) -> Sig {
        Sig(self.secrets[0].sign(&domain.message(body)).to_bytes())
    }

    /// A keyring that signs as `me` with another facility's listed keys:
    /// for tests of forged signatures only.
    pub fn impostor(&self, claims: FacilityId) -> Keyring {
        Keyring {
            me: claims,
            secrets: self.secrets.clone(),
            public: self.public.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Vec<FacilityId> {
        ["alpha", "bravo", "charlie"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect()
    }

    #[test]
    fn sign_verify_and_domains_are_separate() {
        let rings = Keyring::deterministic(&ids(), 1);
        let a = &rings[&ids()[0]];
        let sig = a.sign(Domain::Vote, b"body");
        a.public()
            .verify(a.me(), Domain::Vote, b"body", &sig)
            .unwrap();
        assert_eq!(
            a.public().verify(a.me(), Domain::Proposal, b"body", &sig),
            Err(KeyError::BadSignature(a.me().clone()))
        );
        assert!(a
            .public()
            .verify(a.me(), Domain::Vote, b"bodz", &sig)
            .is_err());
        let b = &ids()[1];
        assert!(a.public().verify(b, Domain::Vote, b"body", &sig).is_err());
    }

    #[test]
    fn batch_verification_fails_if_any_signature_is_bad() {
        let rings = Keyring::deterministic(&ids(), 2);
        let sigs: Vec<(FacilityId, Vec<u8>, Sig)> = ids()
            .iter()
            .map(|f| {
                (
                    f.clone(),
                    f.as_str().as_bytes().to_vec(),
                    rings[f].sign(Domain::Vote, f.as_str().as_bytes()),
                )
            })
            .collect();
        let items: Vec<(&FacilityId, &[u8], &Sig)> =
            sigs.iter().map(|(f, b, s)| (f, b.as_slice(), s)).collect();
        rings[&ids()[0]]
            .public()
            .verify_batch(Domain::Vote, &items)
            .unwrap();
        let mut bad = sigs.clone();
        bad[1].2 .0[3] ^= 1;
        let items: Vec<(&FacilityId, &[u8], &Sig)> =
            bad.iter().map(|(f, b, s)| (f, b.as_slice(), s)).collect();
        assert!(rings[&ids()[0]]
            .public()
            .verify_batch(Domain::Vote, &items)
            .is_err());
    }

    #[test]
    fn key_text_round_trips_and_bad_text_is_refused() {
        let k = generate_secret();
        assert_eq!(
            parse_secret(&format_secret(&k)).unwrap().to_bytes(),
            k.to_bytes()
        );
        let p = k.verifying_key();
        assert_eq!(parse_public(&format_public(&p)).unwrap(), p);
        assert!(parse_public("ed25519:zz").is_err());
        assert!(parse_public(&format_public(&p)[8..]).is_err());
        assert!(parse_secret("00").is_err());
    }

    #[test]
    fn signature_serializes_as_64_bytes() {
        let s = Sig([9; 64]);
        let b = bulwark_storage::codec::encode(&s).unwrap();
        assert_eq!(b.len(), 65);
        assert_eq!(bulwark_storage::codec::decode::<Sig>(&b).unwrap(), s);
        let short = bulwark_storage::codec::encode(&vec![1u8; 10]).unwrap();
        assert!(bulwark_storage::codec::decode::<Sig>(&short).is_err());
    }
}
