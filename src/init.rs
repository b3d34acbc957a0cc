//! `bulwark init`: everything a new cluster needs, in one directory.
//!
//! `DIR/ca.crt` and `DIR/ca.key` are a certificate authority for the
//! cluster's API certificates: clients trust every facility's HTTPS with
//! `--ca DIR/ca.crt` (keep `ca.key` offline once the cluster is set up; it
//! signs new API certificates only). For each facility, `DIR/<id>/` gets
//! its QUIC identity (`facility.key`, `facility.crt`), its vote key
//! (`vote.key`), its API's HTTPS pair (`api.key`, `api.crt`, signed by the
//! CA) and a complete `facility.toml`: every peer's
//! address, pin and vote key filled in, the API's tokens (as hashes), HTTPS
//! on, and ports that do not collide when every facility runs on one host.
//! Three tokens are made and returned (to be printed once; only their
//! hashes are written):
//!
//! - `admin`: read, schedule, approve, operator;
//! - `app`: read, schedule (a scheduling application);
//! - `prometheus`: metrics.
//!
//! Nothing is overwritten: a directory that already holds a facility's
//! files is refused. Every config written is loaded back and validated
//! before `init` answers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use bulwark_actors::keys;
use bulwark_transport::identity::Identity;
use bulwark_transport::FacilityId;

use crate::config::FacilityConfig;
use crate::http::auth::{hash_token, new_token, Scope};

/// What `init` is asked for.
#[derive(Debug, Clone)]
pub struct InitSpec {
    /// Where the facilities' directories go.
    pub dir: PathBuf,
    /// The facilities, in order.
    pub facilities: Vec<FacilityId>,
    /// Each facility's IP address (one per facility); default: all on
    /// 127.0.0.1.
    pub hosts: Vec<IpAddr>,
    /// Facility `i` listens for QUIC on `base_port + i` and for HTTPS on
    /// `base_port + 1000 + i`.
    pub base_port: u16,
}

/// The default first port: QUIC 7401, 7402, …; HTTPS 8401, 8402, ….
pub const BASE_PORT: u16 = 7401;
/// Most facilities `init` writes.
pub const FACILITIES_MAX: usize = 64;

/// One facility written.
#[derive(Debug, Clone)]
pub struct Written {
    /// Its id.
    pub id: FacilityId,
    /// Its config file.
    pub config: PathBuf,
    /// Its API's address.
    pub http: SocketAddr,
    /// Its API certificate's pin (`--pin`).
    pub api_pin: String,
}

/// The CA file `init` writes in its directory.
pub const CA_FILE: &str = "ca.crt";

/// What `init` wrote, and the tokens it made (shown once, stored nowhere).
#[derive(Debug, Clone)]
pub struct Initialized {
    /// Each facility.
    pub facilities: Vec<Written>,
    /// (name, scopes, token).
    pub tokens: Vec<(String, Vec<Scope>, String)>,
}

/// Why `init` refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The request is not usable.
    #[error("{0}")]
    Invalid(String),
    /// A file could not be written.
    #[error("{path}: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn write_err(path: &Path, e: impl std::fmt::Display) -> InitError {
    InitError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Writes a secret file readable by its owner only (refuses to overwrite).
pub fn write_secret(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Writes the cluster `spec` describes.
pub fn init(spec: &InitSpec) -> Result<Initialized, InitError> {
    let n = spec.facilities.len();
    if !(1..=FACILITIES_MAX).contains(&n) {
        return Err(InitError::Invalid(format!(
            "give 1 to {FACILITIES_MAX} facilities"
        )));
    }
    for (i, f) in spec.facilities.iter().enumerate() {
        if spec.facilities[..i].contains(f) {
            return Err(InitError::Invalid(format!("{f} is listed twice")));
        }
    }
    let hosts: Vec<IpAddr> = match spec.hosts.len() {
        0 => vec![IpAddr::V4(Ipv4Addr::LOCALHOST); n],
        h if h == n => spec.hosts.clone(),
        h => {
            return Err(InitError::Invalid(format!(
                "{h} hosts for {n} facilities: give one per facility, in the same order"
            )))
        }
    };
    let port = |offset: usize| -> Result<u16, InitError> {
        u16::try_from(spec.base_port as usize + offset)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| InitError::Invalid(format!("base port {} is too high", spec.base_port)))
    };
    let mut addrs = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        addrs.push((
            SocketAddr::new(*host, port(i)?),
            SocketAddr::new(*host, port(1000 + i)?),
        ));
    }
    // Check every directory first: nothing is written if one is taken.
    for f in &spec.facilities {
        let d = spec.dir.join(f.as_str());
        if d.join("facility.toml").exists() || d.join("facility.key").exists() {
            return Err(InitError::Invalid(format!(
                "{} already holds a facility; init never overwrites one",
                d.display()
            )));
        }
    }
    let tokens: Vec<(String, Vec<Scope>, String)> = [
        (
            "admin",
            vec![
                Scope::Read,
                Scope::Schedule,
                Scope::Approve,
                Scope::Operator,
            ],
        ),
        ("app", vec![Scope::Read, Scope::Schedule]),
        ("prometheus", vec![Scope::Metrics]),
    ]
    .into_iter()
    .map(|(name, scopes)| (name.to_string(), scopes, new_token()))
    .collect();
    if spec.dir.join(CA_FILE).exists() {
        return Err(InitError::Invalid(format!(
            "{} already holds a cluster's CA; init never overwrites one",
            spec.dir.display()
        )));
    }
    let ca = crate::http::serve::ApiCa::create(&spec.dir, &spec.facilities[0].to_string())
        .map_err(|e| write_err(&spec.dir, e))?;
    // Keys first: every config names every peer's pin and vote key.
    struct Keys {
        pin: String,
        vote: String,
        api_pin: String,
    }
    let mut keys = Vec::new();
    for (i, f) in spec.facilities.iter().enumerate() {
        let d = spec.dir.join(f.as_str());
        std::fs::create_dir_all(&d).map_err(|e| write_err(&d, e))?;
        let identity = Identity::generate(f.clone()).map_err(|e| write_err(&d, e))?;
        identity.write_pem(&d).map_err(|e| write_err(&d, e))?;
        let vote = keys::generate_secret();
        let vote_path = d.join("vote.key");
        write_secret(&vote_path, &keys::format_secret(&vote))
            .map_err(|e| write_err(&vote_path, e))?;
        let api_pin = crate::http::serve::write_api_pair(&d, &[hosts[i].to_string()], Some(&ca))
            .map_err(|e| write_err(&d, e))?;
        keys.push(Keys {
            pin: identity.pin().to_string(),
            vote: keys::format_public(&vote.verifying_key()),
            api_pin: api_pin.to_string(),
        });
    }
    let mut written = Vec::new();
    // One id for the cluster, in every config.
    let cluster = bulwark_transport::quic::cluster_text(&rand::random::<[u8; 16]>());
    for (i, f) in spec.facilities.iter().enumerate() {
        let d = spec.dir.join(f.as_str());
        let (quic, http) = addrs[i];
        let mut text = format!(
            "# Written by `bulwark init`. Start with: bulwark node --config {}\n\n\
             [facility]\nid = \"{f}\"\ndata_dir = \"data\"\nquic_listen = \"{quic}\"\n\
             http_listen = \"{http}\"\nkey = \"facility.key\"\ncert = \"facility.crt\"\n\
             vote_key = \"vote.key\"\ncluster_id = \"{cluster}\"\n\n",
            d.join("facility.toml").display()
        );
        for (j, m) in spec.facilities.iter().enumerate() {
            if j == i {
                continue;
            }
            text += &format!(
                "[[peer]]\nid = \"{m}\"\naddr = \"{}\"\npin = \"{}\"\nvote_key = \"{}\"\n\n",
                addrs[j].0, keys[j].pin, keys[j].vote
            );
        }
        // The genesis validator set, written out: it stays the anchor of
        // the ledger whatever keys are rotated or facilities added later.
        text += "[consensus.genesis_vote_keys]\n";
        for (j, m) in spec.facilities.iter().enumerate() {
            text += &format!("{m} = \"{}\"\n", keys[j].vote);
        }
        text += "\n[api]\n\n[api.tls]\ncert = \"api.crt\"\nkey = \"api.key\"\n\n";
        for (name, scopes, token) in &tokens {
            let names: Vec<String> = scopes.iter().map(|s| format!("\"{}\"", s.name())).collect();
            text += &format!(
                "[[api.tokens]]\nname = \"{name}\"\nhash = \"{}\"\nscopes = [{}]\n\n",
                hash_token(token),
                names.join(", ")
            );
        }
        let config = d.join("facility.toml");
        std::fs::write(&config, text).map_err(|e| write_err(&config, e))?;
        FacilityConfig::load(&config)
            .map_err(|e| InitError::Invalid(format!("a written config does not load: {e}")))?;
        written.push(Written {
            id: f.clone(),
            config,
            http,
            api_pin: keys[i].api_pin.clone(),
        });
    }
    Ok(Initialized {
        facilities: written,
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path, names: &[&str]) -> InitSpec {
        InitSpec {
            dir: dir.to_path_buf(),
            facilities: names.iter().map(|n| n.parse().unwrap()).collect(),
            hosts: Vec::new(),
            base_port: BASE_PORT,
        }
    }

    #[test]
    fn every_config_names_every_peer_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let out = init(&spec(dir.path(), &["alpha", "bravo", "charlie"])).unwrap();
        assert_eq!(out.facilities.len(), 3);
        assert_eq!(out.tokens.len(), 3);
        let mut ports = Vec::new();
        for w in &out.facilities {
            let cfg = FacilityConfig::load(&w.config).unwrap();
            assert_eq!(cfg.peers.len(), 2);
            assert!(cfg.api.tls.is_some());
            assert_eq!(cfg.api.tokens.len(), 3);
            assert!(cfg.api.token.is_none(), "no plain token in a config");
            ports.push(cfg.facility.quic_listen.port());
            ports.push(cfg.facility.http_listen.port());
            // The tokens work against the hashes written.
            let tokens = cfg.tokens().unwrap();
            for (_, scopes, t) in &out.tokens {
                let mut h = axum::http::HeaderMap::new();
                h.insert("authorization", format!("Bearer {t}").parse().unwrap());
                assert!(tokens.check(&h, scopes[0]).is_ok());
            }
        }
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 6, "ports collide");
    }

    #[test]
    fn nothing_is_overwritten_and_bad_requests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        init(&spec(dir.path(), &["alpha"])).unwrap();
        let again = init(&spec(dir.path(), &["bravo", "alpha"])).unwrap_err();
        assert!(again.to_string().contains("never overwrites"), "{again}");
        assert!(
            !dir.path().join("bravo").exists(),
            "bravo written before the refusal"
        );
        assert!(init(&spec(dir.path(), &["x", "x"])).is_err());
        let mut s = spec(dir.path(), &["y", "z"]);
        s.hosts = vec!["10.0.0.1".parse().unwrap()];
        assert!(init(&s).is_err());
        s.hosts = Vec::new();
        s.base_port = 65_000;
        assert!(init(&s).is_err());
    }
}
