//! The vocabulary of handover: VMs, backends, pools and listeners.
//!
//! A **VM** is the unit that migrates. A **backend** is an address that serves traffic for one VM,
//! with a weight, inside a **pool**. A **listener** accepts client traffic (L4 `tcp` or L7 `http`)
//! and routes it to one pool. A backend's identity is its position in its pool (its [`BackendKey`]);
//! its weight, phase, health and even its address are state that changes over time.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Identifier of a virtual machine, as the hypervisor or the operator names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VmId(String);

/// A VM id in the OpenAPI document: a string with the rules of [`VmId::new`] (written by hand,
/// because the derive cannot give a newtype a pattern).
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for VmId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "Identifier of a virtual machine: 1 to 128 letters, digits, '.', '_', '-' or ':'.",
            ))
            .min_length(Some(1))
            .max_length(Some(Self::MAX_LEN))
            .pattern(Some(Self::PATTERN))
            .examples([serde_json::json!("vm-a")])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for VmId {}

/// Why a string is not a valid VM id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmIdError {
    /// Empty id.
    #[error("VM id is empty")]
    Empty,
    /// Longer than [`VmId::MAX_LEN`].
    #[error("VM id is longer than {} characters", VmId::MAX_LEN)]
    TooLong,
    /// A character outside `A-Z a-z 0-9 . _ - :`.
    #[error("VM id {0:?} has a character other than letters, digits, '.', '_', '-' or ':'")]
    BadCharacter(String),
}

impl VmId {
    /// Longest accepted id.
    pub const MAX_LEN: usize = 128;

    /// The accepted ids as a regular expression (ECMA-262, as JSON Schema reads it).
    pub const PATTERN: &'static str = "^[A-Za-z0-9._:-]+$";

    /// Validates and wraps an id.
    pub fn new(id: impl Into<String>) -> Result<Self, VmIdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(VmIdError::Empty);
        }
        if id.len() > Self::MAX_LEN {
            return Err(VmIdError::TooLong);
        }
        if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
        {
            return Err(VmIdError::BadCharacter(id));
        }
        Ok(Self(id))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Stable identity of a backend: its pool and its index in that pool's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BackendKey {
    /// Pool name.
    pub pool: String,
    /// Index in `pools.<pool>.backends`.
    pub index: usize,
}

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// L7: HTTP/1.1, one backend chosen per request.
    Http,
    /// L4: TCP, one backend chosen per connection.
    Tcp,
}

/// Backend selection algorithm of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Smooth weighted round robin (nginx's algorithm), lock-free through a precomputed schedule.
    RoundRobin,
    /// Weighted least connections: the backend with the fewest active connections per unit of weight.
    LeastConnections,
    /// Power of two choices over peak-EWMA latency times outstanding work (linkerd, Finagle).
    P2cEwma,
}

/// How the share of new work falls when a drain starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrainShape {
    /// Straight to the target.
    Step,
    /// Linearly from full share to the target over the drain window.
    Linear,
}

/// What existing traffic keeps going to a draining VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Keep {
    /// Open client connections stay (L4 flows; L7 requests in flight). L7 routes new requests elsewhere.
    Connections,
    /// Like `connections`, and L7 clients pinned by the pool's sticky cookie keep reaching the VM.
    Sessions,
    /// Only requests already sent finish; L7 also closes idle upstream connections to the VM at once.
    InFlight,
}

/// How a VM comes back after a failed or cancelled migration, or a missed deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestoreMode {
    /// With the pool's ramp, as after a completed migration.
    Ramp,
    /// Straight back to full weight (the VM never left, its caches are warm).
    Immediate,
}

/// A socket address formatted for humans and JSON.
pub fn format_addr(addr: &SocketAddr) -> String {
    addr.to_string()
}

/// A unix socket (a path, or `unix:PATH`) or a TCP address (`tcp:HOST:PORT`): where QEMU's QMP
/// monitor or HAProxy's runtime API listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum Endpoint {
    /// A unix socket path (`/run/vm-a.qmp` or `unix:/run/vm-a.qmp`).
    Unix(PathBuf),
    /// A TCP address (`tcp:HOST:PORT`).
    Tcp(String),
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(address) = text.strip_prefix("tcp:") {
            let (host, port) = address.rsplit_once(':').ok_or_else(|| {
                format!("invalid socket {text:?}: expected a path, unix:PATH or tcp:HOST:PORT")
            })?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(format!(
                    "invalid socket {text:?}: expected a path, unix:PATH or tcp:HOST:PORT"
                ));
            }
            return Ok(Self::Tcp(address.to_string()));
        }
        let path = text.strip_prefix("unix:").unwrap_or(text);
        if path.is_empty() {
            return Err("empty socket path".to_string());
        }
        Ok(Self::Unix(PathBuf::from(path)))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp(address) => write!(f, "tcp:{address}"),
        }
    }
}

impl From<Endpoint> for String {
    fn from(address: Endpoint) -> Self {
        address.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_ids_are_validated() {
        assert!(VmId::new("vm-a").is_ok());
        assert!(VmId::new("rack1:vm_7.prod").is_ok());
        assert_eq!(VmId::new(""), Err(VmIdError::Empty));
        assert!(matches!(VmId::new("vm a"), Err(VmIdError::BadCharacter(_))));
        assert!(matches!(VmId::new("vm/../a"), Err(VmIdError::BadCharacter(_))));
        assert_eq!(VmId::new("x".repeat(129)), Err(VmIdError::TooLong));
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            "/run/vm-a.qmp".parse(),
            Ok(Endpoint::Unix("/run/vm-a.qmp".into()))
        );
        assert_eq!("unix:/run/x".parse(), Ok(Endpoint::Unix("/run/x".into())));
        assert_eq!(
            "tcp:127.0.0.1:4444".parse(),
            Ok(Endpoint::Tcp("127.0.0.1:4444".into()))
        );
        assert_eq!(Endpoint::Tcp("h:1".into()).to_string(), "tcp:h:1");
        assert!("tcp:localhost".parse::<Endpoint>().is_err());
        assert!("".parse::<Endpoint>().is_err());
        assert!("unix:".parse::<Endpoint>().is_err());
    }
}
