//! Who may call what: bearer tokens with scopes.
//!
//! Every `/v1` route and `/metrics` needs `Authorization: Bearer <token>`;
//! only the health endpoints, the status page's HTML shell and the OpenAPI
//! document are open (they hold no personnel data). A token is stored in
//! the config only as its blake3 hash (`[[api.tokens]]`, made by
//! `bulwark token`), with a name (the audit trail records it) and scopes:
//!
//! | scope | allows |
//! |---|---|
//! | `read` | every `GET /v1/…` read of the schedule, ledger, evidence, cluster, status |
//! | `schedule` | routine writes: people, blocks, assignments, swaps, retirements, batches of those |
//! | `approve` | final approvals, leave, emergency coverage and emergency swaps |
//! | `operator` | backups (`/v1/admin/backup`), archiving, the audit trail |
//! | `chaos` | `/v1/admin/chaos` (reading and pulling fault levers) |
//! | `metrics` | `/metrics` (give Prometheus this one alone) |
//!
//! Scopes do not imply each other. The legacy `[api] token` is one token
//! named `default` with every scope. A missing or unknown token answers
//! 401 UNAUTHORIZED; a known token without the scope answers 403
//! FORBIDDEN naming the scope; a facility with no token configured answers
//! 403 API_CLOSED. The presented token is hashed and compared with every
//! configured hash in constant time ([`blake3::Hash`]'s equality), all of
//! them, so the time taken does not say which one matched.

use std::sync::Arc;

use axum::http::{header, HeaderMap, Method, StatusCode};
use bulwark_actors::schedule::{namespace_of, Op};
use serde::{Deserialize, Serialize};

use super::error::ApiError;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Reads under `/v1`.
    Read,
    /// Routine schedule writes.
    Schedule,
    /// Final approvals, leave, emergency coverage.
    Approve,
    /// Backups, archiving, the audit trail.
    Operator,
    /// The chaos levers.
    Chaos,
    /// `/metrics`.
    Metrics,
}

/// Every scope, in order.
pub const SCOPES: [Scope; 6] = [
    Scope::Read,
    Scope::Schedule,
    Scope::Approve,
    Scope::Operator,
    Scope::Chaos,
    Scope::Metrics,
];

impl Scope {
    /// The scope's name in configs, errors and the OpenAPI document.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Schedule => "schedule",
            Scope::Approve => "approve",
            Scope::Operator => "operator",
            Scope::Chaos => "chaos",
            Scope::Metrics => "metrics",
        }
    }

    /// The scope named `s`.
    pub fn parse(s: &str) -> Result<Scope, String> {
        SCOPES.into_iter().find(|c| c.name() == s).ok_or_else(|| {
            let names: Vec<&str> = SCOPES.iter().map(|c| c.name()).collect();
            format!("unknown scope {s:?} (one of {})", names.join(", "))
        })
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// The scope a schedule operation needs (a batch: checked per command
    /// by [`Caller::allows_op`]).
    /// Ids of a chaos namespace are written with the chaos scope only.
    pub fn of_op(op: &Op) -> Scope {
        if op_ids(op).any(|id| namespace_of(id).is_some()) {
            return Scope::Chaos;
        }
        match op {
            Op::Approve { .. } | Op::Leave { .. } | Op::EmergencyCoverage { .. } => Scope::Approve,
            Op::Archive { .. } | Op::Checkpoint | Op::Validator(_) => Scope::Operator,
            Op::DropNamespace { .. } | Op::Drill { .. } => Scope::Chaos,
            _ => Scope::Schedule,
        }
    }
}

/// The people and blocks `op` names (a batch: none; its commands are
/// checked one by one).
fn op_ids(op: &Op) -> impl Iterator<Item = &str> {
    let ids: Vec<&str> = match op {
        Op::AddPerson(p) => vec![p.id.as_str()],
        Op::AddBlock(b) => vec![b.id.as_str()],
        Op::Assign { person, block }
        | Op::Unassign { person, block }
        | Op::EmergencyCoverage { block, person } => vec![person.as_str(), block.as_str()],
        Op::Swap {
            a,
            a_block,
            b,
            b_block,
        } => vec![a.as_str(), a_block.as_str(), b.as_str(), b_block.as_str()],
        Op::Leave { person, .. } | Op::RetirePerson { person, .. } => vec![person.as_str()],
        Op::Reconcile {
            block,
            remove,
            cover,
        } => {
            let mut v = vec![block.as_str(), cover.as_str()];
            v.extend(remove.iter().map(|p| p.as_str()));
            v
        }
        Op::RetireBlock { block } => vec![block.as_str()],
        Op::Approve { .. }
        | Op::Batch(_)
        | Op::Archive { .. }
        | Op::DropNamespace { .. }
        | Op::Drill { .. }
        | Op::Checkpoint
        | Op::Validator(_) => vec![],
    };
    ids.into_iter()
}

/// The scope a route needs; `None`: open to everyone.
pub fn required(method: &Method, path: &str) -> Option<Scope> {
    let is_get = method == Method::GET || method == Method::HEAD;
    match path {
        "/metrics" => return Some(Scope::Metrics),
        "/v1/openapi.json" => return None,
        _ => {}
    }
    let v1 = path.strip_prefix("/v1/")?;
    let mut parts = v1.split('/');
    let first = parts.next().unwrap_or("");
    Some(match (is_get, first, parts.next()) {
        (_, "admin", Some("chaos")) => Scope::Chaos,
        (_, "admin", _) | (_, "audit", _) | (false, "archive", _) => Scope::Operator,
        (true, _, _) => Scope::Read,
        (false, "approvals" | "leave" | "emergency", _) => Scope::Approve,
        (false, _, _) => Scope::Schedule,
    })
}

/// A configured token: its name, the blake3 hash of the token, its scopes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Recorded in the audit trail: who it was given to.
    pub name: String,
    /// 64 hex digits: blake3 of the token (`bulwark token` prints it).
    pub hash: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
}

/// Longest token name.
pub const TOKEN_NAME_LEN_MAX: usize = 64;
/// Most tokens a facility holds.
pub const TOKENS_MAX: usize = 256;

impl TokenConfig {
    /// Checks the name, the hash and the scopes.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || self.name.len() > TOKEN_NAME_LEN_MAX
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
        {
            return Err(format!(
                "name {:?}: 1 to {TOKEN_NAME_LEN_MAX} of A-Z a-z 0-9 - _ . @",
                self.name
            ));
        }
        parse_hash(&self.hash).map_err(|e| format!("{}: {e}", self.name))?;
        if self.scopes.is_empty() {
            return Err(format!("{}: give it at least one scope", self.name));
        }
        Ok(())
    }
}

fn parse_hash(s: &str) -> Result<blake3::Hash, String> {
    blake3::Hash::from_hex(s.trim()).map_err(|_| "hash is not 64 hex digits (blake3)".to_string())
}

/// The hash a config stores for `token`.
pub fn hash_token(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// Shortest token accepted (legacy `[api] token` included).
pub const TOKEN_LEN_MIN: usize = 16;

/// A fresh random token: 32 bytes, hex.
pub fn new_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

struct Entry {
    name: Arc<str>,
    hash: blake3::Hash,
    scopes: u8,
}

/// The facility's tokens.
#[derive(Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

/// Who is calling: the token's name and scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name.
    pub name: Arc<str>,
    scopes: u8,
}

impl Caller {
    /// True if the token has `scope`.
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes & scope.bit() != 0
    }

    /// `Ok` if the token may run `op` (each command of a batch); else the
    /// 403 naming the first scope missing.
    pub fn allows_op(&self, op: &Op) -> Result<(), ApiError> {
        let need = match op {
            Op::Batch(ops) => ops.iter().map(Scope::of_op).find(|s| !self.allows(*s)),
            op => Some(Scope::of_op(op)).filter(|s| !self.allows(*s)),
        };
        match need {
            None => Ok(()),
            Some(s) => Err(forbidden(&self.name, s)),
        }
    }

    /// A caller with every scope (in-process callers: the simulation).
    pub fn everything(name: &str) -> Caller {
        Caller {
            name: name.into(),
            scopes: SCOPES.iter().fold(0, |a, s| a | s.bit()),
        }
    }
}

fn forbidden(name: &str, scope: Scope) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
        format!(
            "the token {name:?} lacks the {:?} scope this request needs",
            scope.name()
        ),
    )
}

impl Tokens {
    /// The tokens of a config: the legacy `token` (named `default`, every
    /// scope) and each of `tokens`.
    pub fn new(legacy: Option<&str>, tokens: &[TokenConfig]) -> Result<Tokens, String> {
        let mut entries = Vec::new();
        if let Some(t) = legacy {
            entries.push(Entry {
                name: "default".into(),
                hash: blake3::hash(t.trim().as_bytes()),
                scopes: SCOPES.iter().fold(0, |a, s| a | s.bit()),
            });
        }
        for t in tokens {
            t.validate()?;
            if entries.iter().any(|e| *e.name == *t.name) {
                return Err(format!("the token name {:?} is used twice", t.name));
            }
            entries.push(Entry {
                name: t.name.as_str().into(),
                hash: parse_hash(&t.hash)?,
                scopes: t.scopes.iter().fold(0, |a, s| a | s.bit()),
            });
        }
        if entries.len() > TOKENS_MAX {
            return Err(format!("{} tokens; at most {TOKENS_MAX}", entries.len()));
        }
        Ok(Tokens { entries })
    }

    /// True if no token is configured (the API is closed).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Who `headers` authenticate as, and whether it may use `scope`.
    pub fn check(&self, headers: &HeaderMap, scope: Scope) -> Result<Caller, ApiError> {
        let caller = self.identify(headers, scope)?;
        caller.require(scope)?;
        Ok(caller)
    }

    /// Who `headers` authenticate as (`scope` is named in the refusal).
    pub fn identify(&self, headers: &HeaderMap, scope: Scope) -> Result<Caller, ApiError> {
        if self.entries.is_empty() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "API_CLOSED",
                "no API token is configured on this facility; add one with `bulwark token`",
            ));
        }
        let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", m);
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized(&format!(
                "this request needs Authorization: Bearer <token> with the {:?} scope",
                scope.name()
            )));
        };
        let given = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("Authorization is not a bearer token"))?;
        let h = blake3::hash(given.trim().as_bytes());
        let mut found = None;
        for e in &self.entries {
            // Constant-time equality, and every entry compared.
            if e.hash == h && found.is_none() {
                found = Some(e);
            }
        }
        let e = found.ok_or_else(|| unauthorized("unknown bearer token"))?;
        Ok(Caller {
            name: e.name.clone(),
            scopes: e.scopes,
        })
    }
}

impl Caller {
    /// `Ok` if the token has `scope`, else the 403 naming it.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.allows(scope) {
            return Ok(());
        }
        metrics::counter!("bulwark_api_forbidden_total", "scope" => scope.name()).increment(1);
        Err(forbidden(&self.name, scope))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn routes_need_the_scope_their_table_row_names() {
        let get = Method::GET;
        let post = Method::POST;
        for (m, p, want) in [
            (&get, "/v1/schedule", Some(Scope::Read)),
            (&get, "/v1/people/p1", Some(Scope::Read)),
            (&get, "/v1/status", Some(Scope::Read)),
            (&get, "/v1/audit", Some(Scope::Operator)),
            (&get, "/v1/admin/chaos", Some(Scope::Chaos)),
            (&post, "/v1/admin/chaos", Some(Scope::Chaos)),
            (&post, "/v1/people", Some(Scope::Schedule)),
            (&post, "/v1/batch", Some(Scope::Schedule)),
            (&post, "/v1/approvals", Some(Scope::Approve)),
            (&post, "/v1/leave", Some(Scope::Approve)),
            (&post, "/v1/emergency", Some(Scope::Approve)),
            (&post, "/v1/admin/backup", Some(Scope::Operator)),
            (&get, "/v1/admin/reviews", Some(Scope::Operator)),
            (&post, "/v1/admin/reviews/7", Some(Scope::Operator)),
            (&post, "/v1/archive", Some(Scope::Operator)),
            (&get, "/metrics", Some(Scope::Metrics)),
            (&get, "/v1/openapi.json", None),
            (&get, "/health/ready", None),
            (&get, "/", None),
        ] {
            assert_eq!(required(m, p), want, "{m} {p}");
        }
    }

    #[test]
    fn a_token_is_known_by_its_hash_and_allowed_only_its_scopes() {
        let t = new_token();
        let cfg = TokenConfig {
            name: "scheduler".into(),
            hash: hash_token(&t),
            scopes: vec![Scope::Read, Scope::Schedule],
        };
        let tokens = Tokens::new(None, &[cfg]).unwrap();
        let c = tokens.check(&headers(&t), Scope::Read).unwrap();
        assert_eq!(&*c.name, "scheduler");
        let e = tokens.check(&headers(&t), Scope::Approve).unwrap_err();
        assert_eq!(
            (e.status, e.body.code.as_str()),
            (StatusCode::FORBIDDEN, "FORBIDDEN")
        );
        assert!(e.body.message.contains("\"approve\""), "{}", e.body.message);
        let e = tokens
            .check(&headers("not-the-token-at-all"), Scope::Read)
            .unwrap_err();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        let e = tokens.check(&HeaderMap::new(), Scope::Read).unwrap_err();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        let e = Tokens::default()
            .check(&headers(&t), Scope::Read)
            .unwrap_err();
        assert_eq!(e.body.code, "API_CLOSED");
    }

    #[test]
    fn a_batch_needs_the_scope_of_each_command() {
        use bulwark_actors::schedule::{BlockId, PersonId};
        let c = Caller {
            name: "s".into(),
            scopes: Scope::Schedule.bit(),
        };
        let assign = Op::Assign {
            person: "p".parse::<PersonId>().unwrap(),
            block: "b".parse::<BlockId>().unwrap(),
        };
        let emergency = Op::EmergencyCoverage {
            person: "p".parse::<PersonId>().unwrap(),
            block: "b".parse::<BlockId>().unwrap(),
        };
        assert!(c.allows_op(&Op::Batch(vec![assign.clone()])).is_ok());
        let e = c
            .allows_op(&Op::Batch(vec![assign, emergency]))
            .unwrap_err();
        assert!(e.body.message.contains("approve"), "{}", e.body.message);
    }

    /// Ids of a chaos namespace, a namespace drop and a drill need the
    /// chaos scope; the schedule's own ids do not.
    #[test]
    fn chaos_namespaces_need_the_chaos_scope() {
        use bulwark_actors::schedule::{BlockId, PersonId};
        let assign = |p: &str, b: &str| Op::Assign {
            person: p.parse::<PersonId>().unwrap(),
            block: b.parse::<BlockId>().unwrap(),
        };
        assert_eq!(Scope::of_op(&assign("p", "b")), Scope::Schedule);
        assert_eq!(Scope::of_op(&assign("chaos:r:p", "b")), Scope::Chaos);
        assert_eq!(Scope::of_op(&assign("p", "chaos:r:b")), Scope::Chaos);
        let drop = Op::DropNamespace {
            namespace: "r".into(),
        };
        assert_eq!(Scope::of_op(&drop), Scope::Chaos);
        let c = Caller {
            name: "s".into(),
            scopes: Scope::Schedule.bit(),
        };
        assert!(c
            .allows_op(&Op::Batch(vec![assign("chaos:r:p", "chaos:r:b")]))
            .is_err());
    }

    #[test]
    fn bad_token_configs_are_refused() {
        let ok = TokenConfig {
            name: "a".into(),
            hash: hash_token("0123456789abcdef"),
            scopes: vec![Scope::Read],
        };
        assert!(Tokens::new(None, std::slice::from_ref(&ok)).is_ok());
        let twice = Tokens::new(None, &[ok.clone(), ok.clone()]).err().unwrap();
        assert!(twice.contains("twice"), "{twice}");
        let bad_hash = TokenConfig {
            hash: "abc".into(),
            ..ok.clone()
        };
        assert!(Tokens::new(None, &[bad_hash]).is_err());
        let no_scope = TokenConfig {
            scopes: vec![],
            ..ok.clone()
        };
        assert!(Tokens::new(None, &[no_scope]).is_err());
        let bad_name = TokenConfig {
            name: "a b".into(),
            ..ok
        };
        assert!(Tokens::new(None, &[bad_name]).is_err());
        assert!(Scope::parse("root").is_err());
    }
}
