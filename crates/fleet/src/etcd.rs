//! A small etcd v3 client over the generated gRPC code: ranges, puts, transactions, leases and
//! watches, against any member of a cluster.
//!
//! Every member gets a lazily connected channel. A call goes to the member that answered last;
//! when it cannot be reached (or is not ready, as during an election), the next member is tried, so
//! one member down never fails a call that another can serve. Unary calls are bounded by a timeout;
//! watches and keep-alives are streams and are not (HTTP/2 keep-alive pings find a dead member).
//! With `user`/`password`, a token from etcd's `Authenticate` goes with every call and is renewed
//! when etcd says it is no longer valid. TLS is rustls with the given CA (and client certificate).
//!
//! This module knows nothing of handover's keys: see `keys` and `records` for that.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use handover_core::config::FleetConfig;
use parking_lot::RwLock;
use tokio::sync::mpsc;
use tokio_stream_shim::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::proto::etcdserverpb::auth_client::AuthClient;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::lease_client::LeaseClient;
use crate::proto::etcdserverpb::watch_client::WatchClient;
use crate::proto::etcdserverpb::{
    AuthenticateRequest, CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest,
    LeaseKeepAliveRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest,
    RangeResponse, RequestOp, TxnRequest, TxnResponse, WatchCreateRequest, WatchRequest, WatchResponse,
    request_op, watch_request,
};

pub use crate::proto::mvccpb::{Event, KeyValue, event::EventType};

/// Longest a unary call (range, put, txn, lease grant) may take on one member.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a connection to a member may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 pings that notice a member that stopped answering (a watch would otherwise hang). etcd
/// closes connections that ping more often than `--grpc-keepalive-min-time` (5 s by default) or
/// while no stream is open, so: every 10 s, only with streams open.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why etcd could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    /// No member could be reached or answered in time.
    #[error("etcd unreachable ({endpoints}): {last}")]
    Unreachable {
        /// The members tried.
        endpoints: String,
        /// The last error seen.
        last: String,
    },
    /// etcd answered with an error (authentication, permission, a malformed request...).
    #[error("etcd refused: {0}")]
    Refused(String),
    /// A TLS file could not be read or used.
    #[error("etcd TLS: {0}")]
    Tls(String),
}

/// Credentials for etcd's authentication.
#[derive(Clone)]
struct Credentials {
    user: String,
    password: String,
}

/// A client of one etcd cluster.
pub struct Etcd {
    /// One channel per member, in configuration order.
    channels: Vec<Channel>,
    /// The members' URLs, for messages.
    endpoints: Vec<String>,
    /// The member that answered last (calls start there).
    current: AtomicUsize,
    /// User and password, when etcd's authentication is on.
    credentials: Option<Credentials>,
    /// The token etcd gave for them.
    token: RwLock<Option<MetadataValue<tonic::metadata::Ascii>>>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

/// What a watch delivers.
#[derive(Debug)]
pub enum WatchEvent {
    /// Changes of one revision or more, in order.
    Events(Vec<Event>),
    /// Nothing changed up to this revision (progress notification).
    Progress(i64),
    /// The start revision was compacted away: list again.
    Compacted(i64),
}

/// An open watch: events in order until it ends (an error means watch again from the last
/// revision seen, or list again).
pub struct Watch {
    /// Keeps the request stream open (dropping it ends the watch).
    _requests: mpsc::Sender<WatchRequest>,
    responses: tonic::Streaming<WatchResponse>,
}

impl Watch {
    /// The next events; `Err` when the stream broke (member gone, cancelled by etcd).
    pub async fn next(&mut self) -> Result<WatchEvent, EtcdError> {
        loop {
            let response = match self.responses.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Err(unreachable_error("watch stream closed by etcd")),
                Err(status) => return Err(classify(&status)),
            };
            if response.compact_revision > 0 {
                return Ok(WatchEvent::Compacted(response.compact_revision));
            }
            if response.canceled {
                return Err(EtcdError::Refused(format!(
                    "watch cancelled: {}",
                    response.cancel_reason
                )));
            }
            if response.created {
                continue;
            }
            if response.events.is_empty() {
                let revision = response.header.map_or(0, |h| h.revision);
                return Ok(WatchEvent::Progress(revision));
            }
            return Ok(WatchEvent::Events(response.events));
        }
    }
}

/// A lease kept alive over one stream.
pub struct KeepAlive {
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: tonic::Streaming<crate::proto::etcdserverpb::LeaseKeepAliveResponse>,
    id: i64,
}

impl KeepAlive {
    /// Renews the lease once; returns its TTL in seconds (0: the lease is gone).
    pub async fn renew(&mut self) -> Result<i64, EtcdError> {
        self.requests
            .send(LeaseKeepAliveRequest { id: self.id })
            .await
            .map_err(|_| unreachable_error("keep-alive stream closed"))?;
        match tokio::time::timeout(CALL_TIMEOUT, self.responses.message()).await {
            Ok(Ok(Some(response))) => Ok(response.ttl),
            Ok(Ok(None)) => Err(unreachable_error("keep-alive stream closed by etcd")),
            Ok(Err(status)) => Err(classify(&status)),
            Err(_) => Err(unreachable_error("no keep-alive answer in time")),
        }
    }
}

fn unreachable_error(message: &str) -> EtcdError {
    EtcdError::Unreachable {
        endpoints: String::new(),
        last: message.to_string(),
    }
}

/// Whether another member could do better (the call never reached a healthy member).
fn is_retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled | Code::Aborted
    ) || status.message().contains("leader changed")
        || status.message().contains("no leader")
}

fn is_auth_expired(status: &Status) -> bool {
    status.code() == Code::Unauthenticated
        || status.message().contains("invalid auth token")
        || status.message().contains("user name is empty")
}

fn classify(status: &Status) -> EtcdError {
    if is_retryable(status) {
        unreachable_error(&describe(status))
    } else {
        EtcdError::Refused(describe(status))
    }
}

fn describe(status: &Status) -> String {
    let message = status.message();
    let mut text = if message.is_empty() {
        format!("{:?}", status.code())
    } else {
        message.to_string()
    };
    // Transport errors keep their cause (refused, TLS handshake...) in the source chain.
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn with_token<T>(message: T, token: Option<MetadataValue<tonic::metadata::Ascii>>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("token", token);
    }
    request
}

/// The end of the range of every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A range read of one key.
pub fn get_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

/// A range read of every key under a prefix.
pub fn prefix_op(prefix: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            ..Default::default()
        })),
    }
}

/// A put (with a lease when `lease` is not 0).
pub fn put_op(key: &str, value: Vec<u8>, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value,
            lease,
            ..Default::default()
        })),
    }
}

/// A delete of one key.
pub fn delete_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

/// A delete of every key under a prefix.
pub fn delete_prefix_op(prefix: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            ..Default::default()
        })),
    }
}

/// Holds when the key's last modification is `revision` (0: the key does not exist).
pub fn mod_revision_is(key: &str, revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.as_bytes().to_vec(),
        range_end: Vec::new(),
        target_union: Some(TargetUnion::ModRevision(revision)),
    }
}

/// Holds when at least one key exists under `prefix` (a range compare on create revisions: etcd
/// compares every key of the range, and a range with no key compares as revision 0).
pub fn prefix_not_empty(prefix: &str) -> Compare {
    Compare {
        result: CompareResult::Greater as i32,
        target: CompareTarget::Create as i32,
        key: prefix.as_bytes().to_vec(),
        range_end: prefix_end(prefix.as_bytes()),
        target_union: Some(TargetUnion::CreateRevision(0)),
    }
}

/// The key-values a range response (one of a transaction's responses) carries.
pub fn range_kvs(response: &TxnResponse, index: usize) -> Vec<KeyValue> {
    use crate::proto::etcdserverpb::response_op::Response;
    match response.responses.get(index).and_then(|r| r.response.as_ref()) {
        Some(Response::ResponseRange(range)) => range.kvs.clone(),
        _ => Vec::new(),
    }
}

impl Etcd {
    /// A client of the cluster in `config` (no connection is made yet).
    pub fn new(config: &FleetConfig) -> Result<Arc<Self>, EtcdError> {
        let tls = match &config.cacert {
            Some(ca) => {
                let ca = std::fs::read(ca)
                    .map_err(|e| EtcdError::Tls(format!("fleet.cacert {}: {e}", ca.display())))?;
                let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
                if let (Some(cert), Some(key)) = (&config.cert, &config.key) {
                    let cert = std::fs::read(cert)
                        .map_err(|e| EtcdError::Tls(format!("fleet.cert {}: {e}", cert.display())))?;
                    let key = std::fs::read(key)
                        .map_err(|e| EtcdError::Tls(format!("fleet.key {}: {e}", key.display())))?;
                    tls = tls.identity(Identity::from_pem(cert, key));
                }
                Some(tls)
            }
            None => None,
        };
        let mut channels = Vec::new();
        for url in &config.etcd {
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| EtcdError::Refused(format!("invalid endpoint {url}: {e}")))?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(false);
            if let Some(tls) = &tls {
                endpoint = endpoint
                    .tls_config(tls.clone())
                    .map_err(|e| EtcdError::Tls(format!("{url}: {e}")))?;
            }
            channels.push(endpoint.connect_lazy());
        }
        Ok(Arc::new(Self {
            channels,
            endpoints: config.etcd.clone(),
            current: AtomicUsize::new(0),
            credentials: config.user.clone().map(|user| Credentials {
                user,
                password: config.password.clone().unwrap_or_default(),
            }),
            token: RwLock::new(None),
        }))
    }

    /// The members' URLs.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    async fn authenticate(&self, channel: Channel) -> Result<(), Status> {
        let Some(credentials) = &self.credentials else {
            return Ok(());
        };
        let response = AuthClient::new(channel)
            .authenticate(AuthenticateRequest {
                name: credentials.user.clone(),
                password: credentials.password.clone(),
            })
            .await?
            .into_inner();
        let token = MetadataValue::try_from(response.token.as_str())
            .map_err(|_| Status::internal("etcd gave a token that is not ASCII"))?;
        *self.token.write() = Some(token);
        Ok(())
    }

    /// Runs `call` on the current member, then on each other member while the failure is one
    /// another member could avoid; authenticates first (and again when the token expired).
    async fn with_failover<T, F, Fut>(&self, call: F) -> Result<T, EtcdError>
    where
        F: Fn(Channel, Option<MetadataValue<tonic::metadata::Ascii>>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let start = self.current.load(Ordering::Relaxed);
        let count = self.channels.len();
        let mut last = String::from("no member tried");
        for step in 0..count {
            let index = (start + step) % count;
            let channel = self.channels[index].clone();
            let attempt = async {
                let missing = self.credentials.is_some() && self.token.read().is_none();
                if missing {
                    self.authenticate(channel.clone()).await?;
                }
                let token = self.token.read().clone();
                match call(channel.clone(), token).await {
                    Err(status) if self.credentials.is_some() && is_auth_expired(&status) => {
                        self.authenticate(channel.clone()).await?;
                        let token = self.token.read().clone();
                        call(channel, token).await
                    }
                    other => other,
                }
            };
            let outcome = match tokio::time::timeout(CALL_TIMEOUT, attempt).await {
                Ok(outcome) => outcome,
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "no answer within {} ms",
                    CALL_TIMEOUT.as_millis()
                ))),
            };
            match outcome {
                Ok(value) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Ok(value);
                }
                Err(status) if is_retryable(&status) => {
                    last = format!("{}: {}", self.endpoints[index], describe(&status));
                }
                Err(status) => return Err(EtcdError::Refused(describe(&status))),
            }
        }
        Err(EtcdError::Unreachable {
            endpoints: self.endpoints.join(", "),
            last,
        })
    }

    /// Every key under `prefix`, and the revision the read saw.
    pub async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        let response: RangeResponse = self
            .with_failover(|channel, token| {
                let request = with_token(
                    RangeRequest {
                        key: prefix.as_bytes().to_vec(),
                        range_end: prefix_end(prefix.as_bytes()),
                        ..Default::default()
                    },
                    token,
                );
                async move {
                    KvClient::new(channel)
                        .range(request)
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await?;
        let revision = response.header.map_or(0, |h| h.revision);
        Ok((response.kvs, revision))
    }

    /// How many keys there are under `prefix`.
    pub async fn count(&self, prefix: &str) -> Result<u64, EtcdError> {
        let response: RangeResponse = self
            .with_failover(|channel, token| {
                let request = with_token(
                    RangeRequest {
                        key: prefix.as_bytes().to_vec(),
                        range_end: prefix_end(prefix.as_bytes()),
                        count_only: true,
                        ..Default::default()
                    },
                    token,
                );
                async move {
                    KvClient::new(channel)
                        .range(request)
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await?;
        Ok(response.count.max(0) as u64)
    }

    /// Seconds left on a lease (`None`: etcd no longer knows it).
    pub async fn time_to_live(&self, id: i64) -> Result<Option<i64>, EtcdError> {
        let response = self
            .with_failover(|channel, token| {
                let request = with_token(LeaseTimeToLiveRequest { id, keys: false }, token);
                async move {
                    LeaseClient::new(channel)
                        .lease_time_to_live(request)
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await?;
        Ok((response.ttl > 0).then_some(response.ttl))
    }

    /// Puts one key (with a lease when `lease` is not 0); returns the revision of the write.
    pub async fn put(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<i64, EtcdError> {
        let response = self
            .with_failover(|channel, token| {
                let request = with_token(
                    PutRequest {
                        key: key.as_bytes().to_vec(),
                        value: value.clone(),
                        lease,
                        ..Default::default()
                    },
                    token,
                );
                async move { KvClient::new(channel).put(request).await.map(|r| r.into_inner()) }
            })
            .await?;
        Ok(response.header.map_or(0, |h| h.revision))
    }

    /// A transaction: `success` if every comparison holds, else `failure`.
    pub async fn txn(
        &self,
        compare: Vec<Compare>,
        success: Vec<RequestOp>,
        failure: Vec<RequestOp>,
    ) -> Result<TxnResponse, EtcdError> {
        self.with_failover(|channel, token| {
            let request = with_token(
                TxnRequest {
                    compare: compare.clone(),
                    success: success.clone(),
                    failure: failure.clone(),
                },
                token,
            );
            async move { KvClient::new(channel).txn(request).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// Compacts the history up to `revision` (tests and operators).
    pub async fn compact(&self, revision: i64) -> Result<(), EtcdError> {
        self.with_failover(|channel, token| {
            let request = with_token(
                CompactionRequest {
                    revision,
                    physical: true,
                },
                token,
            );
            async move { KvClient::new(channel).compact(request).await.map(|_| ()) }
        })
        .await
    }

    /// Grants a lease of `ttl` seconds; returns its id.
    pub async fn grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        let response = self
            .with_failover(|channel, token| {
                let request = with_token(LeaseGrantRequest { ttl, id: 0 }, token);
                async move {
                    LeaseClient::new(channel)
                        .lease_grant(request)
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await?;
        if !response.error.is_empty() {
            return Err(EtcdError::Refused(response.error));
        }
        Ok(response.id)
    }

    /// Revokes a lease (its keys are deleted at once).
    pub async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.with_failover(|channel, token| {
            let request = with_token(LeaseRevokeRequest { id }, token);
            async move { LeaseClient::new(channel).lease_revoke(request).await.map(|_| ()) }
        })
        .await
    }

    /// Opens a keep-alive stream for a lease and renews it once; returns the stream and the TTL
    /// left (0: etcd no longer knows the lease). etcd answers a stream's headers with its first
    /// message, so the first renewal is sent before the stream is opened.
    pub async fn keep_alive(&self, id: i64) -> Result<(KeepAlive, i64), EtcdError> {
        self.with_failover(|channel, token| {
            let (tx, rx) = mpsc::channel(4);
            let request = with_token(ReceiverStream::new(rx), token);
            async move {
                tx.send(LeaseKeepAliveRequest { id })
                    .await
                    .map_err(|_| Status::cancelled("keep-alive request stream closed"))?;
                let mut responses = LeaseClient::new(channel)
                    .lease_keep_alive(request)
                    .await?
                    .into_inner();
                let ttl = match responses.message().await? {
                    Some(first) => first.ttl,
                    None => return Err(Status::unavailable("keep-alive stream closed at once")),
                };
                Ok((
                    KeepAlive {
                        requests: tx,
                        responses,
                        id,
                    },
                    ttl,
                ))
            }
        })
        .await
    }

    /// Watches every key under `prefix` from `start_revision` on, with progress notifications.
    pub async fn watch(&self, prefix: &str, start_revision: i64) -> Result<Watch, EtcdError> {
        self.with_failover(|channel, token| {
            let (tx, rx) = mpsc::channel(4);
            let create = WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                    key: prefix.as_bytes().to_vec(),
                    range_end: prefix_end(prefix.as_bytes()),
                    start_revision,
                    progress_notify: true,
                    prev_kv: true,
                    ..Default::default()
                })),
            };
            let request = with_token(ReceiverStream::new(rx), token);
            async move {
                tx.send(create)
                    .await
                    .map_err(|_| Status::cancelled("watch request stream closed"))?;
                let mut responses = WatchClient::new(channel).watch(request).await?.into_inner();
                // The first message confirms the watch (or says the revision was compacted).
                match responses.message().await? {
                    Some(first) if first.compact_revision > 0 => Err(Status::out_of_range(format!(
                        "compacted:{}",
                        first.compact_revision
                    ))),
                    Some(first) if first.created => Ok(Watch {
                        _requests: tx,
                        responses,
                    }),
                    Some(other) if other.canceled => Err(Status::failed_precondition(format!(
                        "watch refused: {}",
                        other.cancel_reason
                    ))),
                    Some(_) => Err(Status::internal("watch: unexpected first message")),
                    None => Err(Status::unavailable("watch stream closed at once")),
                }
            }
        })
        .await
    }
}

/// The compaction revision of a `watch` that failed because its start revision was compacted.
pub fn compacted_revision(error: &EtcdError) -> Option<i64> {
    match error {
        EtcdError::Refused(message) => message.strip_prefix("compacted:")?.parse().ok(),
        _ => None,
    }
}

/// `tokio-stream`'s `ReceiverStream`, which tonic needs for client streams, without the crate.
mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::sync::mpsc;

    /// A stream of what an mpsc receiver yields.
    pub struct ReceiverStream<T>(mpsc::Receiver<T>);

    impl<T> ReceiverStream<T> {
        pub fn new(receiver: mpsc::Receiver<T>) -> Self {
            Self(receiver)
        }
    }

    impl<T> futures_util::Stream for ReceiverStream<T> {
        type Item = T;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}
