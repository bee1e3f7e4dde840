//! The `[fleet]` section: the etcd cluster that a fleet of handover nodes shares, this node's name
//! in it, and how long registrations and acknowledgements may take.
//!
//! TLS and username/password are given as etcd's own client (`etcdctl`) takes them: `https://`
//! endpoints with `cacert` (and `cert` + `key` for client certificates), `user` and `password`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::reader::{Doc, Field, Fields};
use super::{GuardAction, PoolConfig, or_default, positive};

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "/handover";

/// A fleet of handover nodes that find and tell each other through etcd.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetConfig {
    /// Members of the etcd cluster, `http://HOST:PORT` or `https://HOST:PORT`.
    pub etcd: Vec<String>,
    /// This node's name in the fleet; `None` means the host name (the binary fills it in).
    pub node: Option<String>,
    /// Key prefix, starting with `/`, without a trailing `/`.
    pub prefix: String,
    /// Registration lease TTL (whole seconds: etcd's leases count seconds).
    #[serde(with = "super::serde_duration")]
    pub lease: Duration,
    /// How long a notice waits for every serving node's acknowledgement.
    #[serde(with = "super::serde_duration")]
    pub ack_timeout: Duration,
    /// CA certificate (PEM) that signed the etcd members' certificates (`https://` endpoints).
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM), with `key`, when etcd asks clients for one.
    pub cert: Option<PathBuf>,
    /// Client private key (PEM).
    pub key: Option<PathBuf>,
    /// etcd user name (etcd's authentication), with `password`.
    pub user: Option<String>,
    /// The user's password.
    #[serde(skip_serializing)]
    pub password: Option<String>,
}

pub(super) fn read_fleet(doc: &mut Doc<'_, '_>, field: &Field<'_, '_>) -> Option<FleetConfig> {
    let mut t = Fields::of(doc, field)?;
    let path = field.path.clone();
    let etcd = t.require(doc, "etcd").and_then(|f| {
        let items = f.array(doc)?;
        if items.is_empty() {
            doc.error(
                &f.path,
                f.span(),
                "list at least one etcd member, e.g. [\"http://127.0.0.1:2379\"]",
            );
            return None;
        }
        let mut ok = true;
        let mut endpoints = Vec::new();
        for item in &items {
            let Some(text) = item.non_empty_string(doc) else {
                ok = false;
                continue;
            };
            match normalize_endpoint(&text) {
                Ok(url) => endpoints.push(url),
                Err(message) => {
                    doc.error(&item.path, item.span(), message);
                    ok = false;
                }
            }
        }
        ok.then_some(endpoints)
    });
    let node = match t.get("node") {
        Some(f) => f.non_empty_string(doc).and_then(|name| {
            if valid_node_name(&name) {
                Some(Some(name))
            } else {
                doc.error(
                    &f.path,
                    f.span(),
                    "node names use letters, digits, '.', '_' and '-' only (at most 64)",
                );
                None
            }
        }),
        None => Some(None),
    };
    let prefix = or_default(t.get("prefix"), DEFAULT_PREFIX.to_string(), |f| {
        let text = f.non_empty_string(doc)?;
        if !text.starts_with('/') || text.ends_with('/') || text.contains("//") {
            doc.error(
                &f.path,
                f.span(),
                "must start with '/' and not end with '/' (e.g. \"/handover\")",
            );
            return None;
        }
        Some(text)
    });
    let lease = or_default(t.get("lease"), Duration::from_secs(10), |f| {
        let d = f.duration(doc)?;
        if d < Duration::from_secs(2) || d.subsec_nanos() != 0 {
            doc.error(
                &f.path,
                f.span(),
                "must be whole seconds, at least \"2s\" (etcd counts lease TTLs in seconds)",
            );
            return None;
        }
        Some(d)
    });
    let ack_timeout = or_default(t.get("ack_timeout"), Duration::from_secs(2), |f| positive(doc, f));
    let mut file = |key: &str| match t.get(key) {
        Some(f) => f.non_empty_string(doc).map(|p| Some(PathBuf::from(p))),
        None => Some(None),
    };
    let cacert = file("cacert");
    let cert = file("cert");
    let key = file("key");
    let user = match t.get("user") {
        Some(f) => f.non_empty_string(doc).map(Some),
        None => Some(None),
    };
    let password = match t.get("password") {
        Some(f) => f.string(doc).map(Some),
        None => Some(None),
    };
    t.finish(doc);
    // Pairs are checked whatever else is wrong, so every error comes in one run.
    let mut ok = true;
    let pairs = [
        (
            cert.as_ref().map(Option::is_some),
            key.as_ref().map(Option::is_some),
            "cert",
            "key",
            "a client certificate needs both cert and key",
        ),
        (
            user.as_ref().map(Option::is_some),
            password.as_ref().map(Option::is_some),
            "user",
            "password",
            "etcd authentication needs both user and password",
        ),
    ];
    for (a, b, a_name, b_name, message) in pairs {
        if let (Some(a), Some(b)) = (a, b)
            && a != b
        {
            let missing = if a { b_name } else { a_name };
            doc.error(&format!("{path}.{missing}"), field.span(), message);
            ok = false;
        }
    }
    let config = FleetConfig {
        etcd: etcd?,
        node: node?,
        prefix: prefix?,
        lease: lease?,
        ack_timeout: ack_timeout?,
        cacert: cacert?,
        cert: cert?,
        key: key?,
        user: user?,
        password: password?,
    };
    let https = config.etcd.iter().filter(|e| e.starts_with("https://")).count();
    if https != 0 && https != config.etcd.len() {
        doc.error(
            &format!("{path}.etcd"),
            field.span(),
            "mix of http:// and https:// members: use one scheme for the whole cluster",
        );
        ok = false;
    }
    if https > 0 && config.cacert.is_none() {
        doc.error(
            &format!("{path}.cacert"),
            field.span(),
            "https:// members need cacert, the CA that signed their certificates",
        );
        ok = false;
    }
    if https == 0 && (config.cacert.is_some() || config.cert.is_some()) {
        doc.error(
            &format!("{path}.etcd"),
            field.span(),
            "cacert and cert are for https:// members; these are http://",
        );
        ok = false;
    }
    ok.then_some(config)
}

/// `http://HOST:PORT` or `https://HOST:PORT` (a trailing `/` is dropped).
fn normalize_endpoint(text: &str) -> Result<String, String> {
    let (scheme, rest) = text.split_once("://").ok_or_else(|| {
        format!("invalid etcd endpoint {text:?}: expected http://HOST:PORT or https://HOST:PORT")
    })?;
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "invalid etcd endpoint {text:?}: the scheme must be http or https"
        ));
    }
    let authority = rest.trim_end_matches('/');
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("invalid etcd endpoint {text:?}: the port is missing (e.g. :2379)"))?;
    if host.is_empty() || authority.contains('/') || port.parse::<u16>().is_err() {
        return Err(format!(
            "invalid etcd endpoint {text:?}: expected {scheme}://HOST:PORT"
        ));
    }
    Ok(format!("{scheme}://{authority}"))
}

/// Whether `name` can be a node name (it becomes part of etcd keys).
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// What fleet mode excludes: `[[peers]]` (the fleet finds every node itself) and a capacity guard
/// that queues (a queue would have to live in etcd; refuse works).
pub(super) fn cross_check(
    doc: &mut Doc<'_, '_>,
    fleet: Option<&FleetConfig>,
    has_peers: bool,
    pools: Option<&[PoolConfig]>,
) {
    if fleet.is_none() {
        return;
    }
    if has_peers {
        doc.error(
            "peers",
            None,
            "[[peers]] and [fleet] exclude each other: in a fleet every node is found through etcd",
        );
    }
    for pool in pools.unwrap_or_default() {
        if pool.guard.on_violation == GuardAction::Queue {
            doc.error(
                &format!("pools.{}.guard.on_violation", pool.name),
                None,
                "\"queue\" is not available with [fleet] (a notice is decided in one etcd transaction); use \"refuse\"",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    #[test]
    fn fleet_section_takes_the_issue_names_with_defaults() {
        let config = parse("[fleet]\netcd = [\"http://127.0.0.1:2379/\"]\n").unwrap();
        let fleet = config.fleet.unwrap();
        assert_eq!(fleet.etcd, vec!["http://127.0.0.1:2379".to_string()]);
        assert_eq!(fleet.node, None);
        assert_eq!(fleet.prefix, "/handover");
        assert_eq!(fleet.lease.as_secs(), 10);
        assert_eq!(fleet.ack_timeout.as_millis(), 2000);
    }

    #[test]
    fn fleet_errors_name_the_field_and_line() {
        let text = "[fleet]\netcd = [\"127.0.0.1:2379\"]\nnode = \"lb 1\"\nprefix = \"handover/\"\nlease = \"1500ms\"\nuser = \"root\"\n";
        let errors = parse(text).unwrap_err().to_string();
        assert!(
            errors.contains("line 2: fleet.etcd[0]: invalid etcd endpoint"),
            "{errors}"
        );
        assert!(errors.contains("line 3: fleet.node: node names use"), "{errors}");
        assert!(
            errors.contains("line 4: fleet.prefix: must start with '/'"),
            "{errors}"
        );
        assert!(
            errors.contains("line 5: fleet.lease: must be whole seconds"),
            "{errors}"
        );
        assert!(
            errors.contains("fleet.password: etcd authentication needs both"),
            "{errors}"
        );
    }

    #[test]
    fn https_members_need_a_ca_and_fleet_excludes_peers() {
        let errors = parse(
            "[fleet]\netcd = [\"https://10.0.0.1:2379\"]\n\n[[peers]]\nurl = \"http://127.0.0.1:9091\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            errors.contains("fleet.cacert: https:// members need cacert"),
            "{errors}"
        );
        let errors = parse(
            "[fleet]\netcd = [\"http://127.0.0.1:2379\"]\n\n[[peers]]\nurl = \"http://127.0.0.1:9091\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            errors.contains("peers: [[peers]] and [fleet] exclude each other"),
            "{errors}"
        );
    }
}
