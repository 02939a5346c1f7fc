//! The client side of the command API, used by the `cairn` CLI and the demo:
//! send `<kind>.<verb>` with a JSON body, get JSON or a structured error.

use std::time::Duration;

use bytes::Bytes;
use cairn_schema::{ApiError, subject};
use serde_json::Value;

use crate::bus::{self, Bus, REQUEST_ID_HEADER, USER_HEADER};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error.
    #[error("{0}")]
    Api(ApiError),
    #[error(transparent)]
    Bus(#[from] bus::Error),
    #[error("the reply is not JSON: {0}")]
    BadReply(String),
}

#[derive(Clone)]
pub struct Client {
    pub bus: Bus,
    pub tenant: String,
    pub user: String,
    pub timeout: Duration,
}

impl Client {
    pub fn new(bus: Bus, tenant: impl Into<String>) -> Client {
        let user = std::env::var("USER").unwrap_or_else(|_| "cli".into());
        Client {
            bus,
            tenant: tenant.into(),
            user,
            timeout: Duration::from_secs(60),
        }
    }

    /// Sends one command with a fresh request id.
    pub async fn call(&self, kind: &str, verb: &str, body: &Value) -> Result<Value, Error> {
        let id = crate::gateway::new_request_id();
        self.call_with_id(kind, verb, body, &id).await
    }

    /// Sends one command under a given request id (a retry reuses it).
    pub async fn call_with_id(
        &self,
        kind: &str,
        verb: &str,
        body: &Value,
        request_id: &str,
    ) -> Result<Value, Error> {
        let payload = Bytes::from(serde_json::to_vec(body).expect("json values serialize"));
        self.call_raw(
            &subject::request(&self.tenant, kind, verb),
            payload,
            Some(request_id),
        )
        .await
    }

    /// Sends one of the operator's commands on the admin subject space
    /// (`cairn.v1._admin.<kind>.<verb>`), with a fresh request id.
    pub async fn call_admin(&self, kind: &str, verb: &str, body: &Value) -> Result<Value, Error> {
        let id = crate::gateway::new_request_id();
        let payload = Bytes::from(serde_json::to_vec(body).expect("json values serialize"));
        self.call_raw(&subject::admin_request(kind, verb), payload, Some(&id))
            .await
    }

    /// Sends raw bytes to a subject; for tests and `cairn request`.
    pub async fn call_raw(
        &self,
        subject: &str,
        payload: Bytes,
        request_id: Option<&str>,
    ) -> Result<Value, Error> {
        let mut headers = vec![(USER_HEADER, self.user.as_str())];
        if let Some(id) = request_id {
            headers.push((REQUEST_ID_HEADER, id));
        }
        let reply = self
            .bus
            .request(subject, &headers, payload, self.timeout)
            .await?;
        let value: Value =
            serde_json::from_slice(&reply).map_err(|e| Error::BadReply(e.to_string()))?;
        match ApiError::from_reply(&value) {
            Some(e) => Err(Error::Api(e)),
            None => Ok(value),
        }
    }
}
