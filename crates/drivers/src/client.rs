//! A small client of handover's control API, used by the peer driver and by the CLI
//! (`handover notify`, `handover status`). Errors say whether the node could not be reached,
//! did not answer in time, or answered with an error (whose JSON body is kept).

use std::time::Duration;

use bytes::Bytes;
use handover_core::api::ErrorBody;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest reply body read.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connection refused, reset, DNS...
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// Base URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// No full reply within the timeout.
    #[error("{url} did not answer within {timeout:?}")]
    Timeout {
        /// Base URL.
        url: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The node answered with an error status.
    #[error("{status}: {}", .body.error)]
    Status {
        /// HTTP status.
        status: StatusCode,
        /// The error body.
        body: ErrorBody,
    },
    /// The reply was not what the API returns.
    #[error("unexpected reply from {url}: {reason}")]
    Protocol {
        /// Base URL.
        url: String,
        /// Why.
        reason: String,
    },
}

/// A client bound to one control API.
#[derive(Debug, Clone)]
pub struct ControlClient {
    base: String,
    token: Option<String>,
    timeout: Duration,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl ControlClient {
    /// A client for `base` (`http://host:port`), with an optional bearer token and a per-call timeout.
    pub fn new(base: impl Into<String>, token: Option<String>, timeout: Duration) -> Self {
        Self::with_timeouts(base, token, timeout, timeout)
    }

    /// A client whose connect timeout is shorter than its per-call timeout (a call may be held
    /// while the node waits for drained; a node that is down should be noticed at once).
    pub fn with_timeouts(
        base: impl Into<String>,
        token: Option<String>,
        connect: Duration,
        timeout: Duration,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect));
        let http = Client::builder(TokioExecutor::new()).build(connector);
        Self {
            base: base.into().trim_end_matches('/').to_string(),
            token,
            timeout,
            http,
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path`, decoding the JSON reply.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (status, body) = self.call(Method::GET, path, None).await?;
        self.decode(status, &body)
    }

    /// `GET path`, returning the raw text (e.g. `/metrics`).
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let (status, body) = self.call(Method::GET, path, None).await?;
        if !status.is_success() {
            return Err(self.status_error(status, &body));
        }
        String::from_utf8(body.to_vec()).map_err(|e| self.protocol(e.to_string()))
    }

    /// `POST path` with a JSON body; returns the status with the decoded reply.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<(StatusCode, T), ClientError> {
        let json = serde_json::to_vec(body).map_err(|e| self.protocol(e.to_string()))?;
        let (status, reply) = self.call(Method::POST, path, Some(json)).await?;
        Ok((status, self.decode(status, &reply)?))
    }

    /// `DELETE path`, decoding the JSON reply.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (status, reply) = self.call(Method::DELETE, path, None).await?;
        self.decode(status, &reply)
    }

    /// `PUT path` with a JSON body.
    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let json = serde_json::to_vec(body).map_err(|e| self.protocol(e.to_string()))?;
        let (status, reply) = self.call(Method::PUT, path, Some(json)).await?;
        self.decode(status, &reply)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.protocol(format!("invalid request: {e}")))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| ClientError::Unreachable {
                    url: self.base.clone(),
                    reason: error_chain(&e),
                })?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| self.protocol(format!("reading the reply: {e}")))?
                .to_bytes();
            Ok((status, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                url: self.base.clone(),
                timeout: self.timeout,
            }),
        }
    }

    fn decode<T: DeserializeOwned>(&self, status: StatusCode, body: &[u8]) -> Result<T, ClientError> {
        if !status.is_success() {
            return Err(self.status_error(status, body));
        }
        serde_json::from_slice(body).map_err(|e| self.protocol(format!("{e} in {}", preview(body))))
    }

    fn status_error(&self, status: StatusCode, body: &[u8]) -> ClientError {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(body) => ClientError::Status { status, body },
            Err(_) => ClientError::Status {
                status,
                body: ErrorBody {
                    error: preview(body),
                    field: None,
                    balancers: Vec::new(),
                },
            },
        }
    }

    fn protocol(&self, reason: String) -> ClientError {
        ClientError::Protocol {
            url: self.base.clone(),
            reason,
        }
    }
}

/// The first 200 characters of a body, for error messages.
fn preview(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.chars().count() > 200 {
        format!("{}…", text.chars().take(200).collect::<String>())
    } else {
        text.to_string()
    }
}

/// An error with its sources, `a: b: c`.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
