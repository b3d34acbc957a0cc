//! The in-process harness as a chaos target: the same HTTP requests, served
//! by [`SimApi`] on virtual time.

use super::{ChaosCall, ChaosCluster, Reply};
use crate::sim::client;
use crate::sim::cluster::SimApi;
use axum::body::Body;
use axum::http::{header, Request};
use bulwark_runtime::{Clock, VirtualClock};
use std::sync::Arc;

/// A [`SimApi`] with the cluster's bearer token.
#[derive(Clone)]
pub struct SimTarget {
    api: SimApi,
    token: Arc<str>,
    clock: VirtualClock,
}

impl SimTarget {
    /// The target over `api`, writing with `token`.
    pub fn new(api: SimApi, token: &str) -> SimTarget {
        SimTarget {
            api,
            token: token.into(),
            clock: VirtualClock::new(),
        }
    }
}

impl ChaosCluster for SimTarget {
    fn size(&self) -> usize {
        self.api.ids().len()
    }

    fn name(&self, i: usize) -> String {
        self.api.ids()[i].to_string()
    }

    async fn call(&self, i: usize, call: ChaosCall) -> Reply {
        let mut req = Request::builder()
            .method(call.method)
            .uri(&call.path)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        if let Some(key) = &call.key {
            req = req.header("idempotency-key", key);
        }
        let req = match call.body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        };
        let Ok(req) = req else {
            return Reply {
                status: 400,
                body: serde_json::Value::Null,
            };
        };
        match self.api.try_call(i, req).await {
            Ok(resp) => {
                let (status, body) = client::json(resp).await;
                Reply {
                    status: status.as_u16(),
                    body,
                }
            }
            Err(_) => Reply {
                status: 0,
                body: serde_json::Value::Null,
            },
        }
    }

    fn unix_ms(&self) -> u64 {
        self.clock.unix_ms()
    }
}
