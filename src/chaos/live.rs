//! A live cluster: every facility's HTTP API by URL (`bulwark chaos run`).

use super::{ChaosCall, ChaosCluster, Reply};
use std::sync::Arc;

/// Largest answer the agent reads, in bytes.
pub const ANSWER_LEN_MAX: usize = 8 * 1024 * 1024;

/// Facilities reached over HTTP.
#[derive(Clone)]
pub struct HttpCluster {
    names: Arc<[String]>,
    urls: Arc<[String]>,
    client: reqwest::Client,
}

/// Why the cluster could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LiveError {
    /// A facility's `/v1/cluster` did not answer.
    #[error("{url}: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Fewer than two URLs, or one facility given twice.
    #[error("{0}")]
    Members(String),
}

impl HttpCluster {
    /// Asks each URL's `/v1/cluster` for its facility's id.
    /// `client` carries the token ([`crate::client::ApiArgs::client`]).
    pub async fn connect(
        urls: Vec<String>,
        client: reqwest::Client,
    ) -> Result<HttpCluster, LiveError> {
        let mut names = Vec::new();
        for url in &urls {
            let unreachable = |reason: String| LiveError::Unreachable {
                url: url.clone(),
                reason,
            };
            let v: serde_json::Value = client
                .get(format!("{}/v1/cluster", url.trim_end_matches('/')))
                .send()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .json()
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let name = v
                .get("facility")
                .and_then(|f| f.as_str())
                .ok_or_else(|| unreachable("no facility in /v1/cluster".into()))?;
            if names.iter().any(|n| n == name) {
                return Err(LiveError::Members(format!("{name} given twice")));
            }
            names.push(name.to_string());
        }
        if names.len() < 2 {
            return Err(LiveError::Members(
                "give every facility's API (--api URL, at least two)".into(),
            ));
        }
        Ok(HttpCluster {
            names: names.into(),
            urls: urls
                .into_iter()
                .map(|u| u.trim_end_matches('/').to_string())
                .collect(),
            client,
        })
    }
}

impl ChaosCluster for HttpCluster {
    fn size(&self) -> usize {
        self.names.len()
    }

    fn name(&self, i: usize) -> String {
        self.names[i].clone()
    }

    async fn call(&self, i: usize, call: ChaosCall) -> Reply {
        let url = format!("{}{}", self.urls[i], call.path);
        let mut req = self.client.request(call.method, url);
        if let Some(key) = call.key {
            req = req.header("idempotency-key", key);
        }
        if let Some(body) = call.body {
            req = req.json(&body);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let bytes = resp.bytes().await.unwrap_or_default();
                let body = if bytes.len() > ANSWER_LEN_MAX {
                    serde_json::Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
                };
                Reply { status, body }
            }
            Err(_) => Reply {
                status: 0,
                body: serde_json::Value::Null,
            },
        }
    }

    fn unix_ms(&self) -> u64 {
        use bulwark_runtime::Clock;
        bulwark_runtime::RealClock.unix_ms()
    }
}
