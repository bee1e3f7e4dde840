//! HAProxy's runtime API (the stats socket at `level admin`): one command per connection, the
//! answer read to the end. Parsers for `show info`, `show servers state`, `show stat` and
//! `show sess` read fields by their header names, so column order does not matter.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use handover_core::model::Endpoint;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest answer read.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// Why a runtime API call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// The socket could not be reached.
    #[error("cannot reach the runtime API at {0}: {1}")]
    Unreachable(String, String),
    /// No complete answer in time.
    #[error("the runtime API at {0} did not answer {1:?} within {2:?}")]
    Timeout(String, String, Duration),
    /// HAProxy refused the command.
    #[error("HAProxy refused {0:?}: {1}")]
    Refused(String, String),
    /// The answer is not what HAProxy sends.
    #[error("unexpected answer to {0:?}: {1}")]
    Garbage(String, String),
}

/// A runtime API endpoint.
#[derive(Debug, Clone)]
pub struct Runtime {
    endpoint: Endpoint,
    timeout: Duration,
}

impl Runtime {
    /// A client of `endpoint` with a per-command timeout.
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Self {
        Self { endpoint, timeout }
    }

    /// Runs one command and returns its answer.
    pub async fn command(&self, command: &str) -> Result<String, RuntimeError> {
        let run = async {
            match &self.endpoint {
                Endpoint::Unix(path) => {
                    let stream = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(|e| self.unreachable(e))?;
                    exchange(stream, command).await
                }
                Endpoint::Tcp(address) => {
                    let stream = tokio::net::TcpStream::connect(address)
                        .await
                        .map_err(|e| self.unreachable(e))?;
                    exchange(stream, command).await
                }
            }
            .map_err(|e| self.unreachable(e))
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(answer) => answer,
            Err(_) => Err(RuntimeError::Timeout(
                self.endpoint.to_string(),
                command.to_string(),
                self.timeout,
            )),
        }
    }

    /// Runs a command that answers nothing on success (`set server ...`, `set weight ...`).
    pub async fn set(&self, command: &str) -> Result<(), RuntimeError> {
        let answer = self.command(command).await?;
        let text = answer.trim();
        if text.is_empty() || text.starts_with("IP changed") || text.contains("no need to change") {
            Ok(())
        } else {
            Err(RuntimeError::Refused(
                command.to_string(),
                text.lines().next().unwrap_or(text).to_string(),
            ))
        }
    }

    fn unreachable(&self, error: std::io::Error) -> RuntimeError {
        RuntimeError::Unreachable(self.endpoint.to_string(), error.to_string())
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    command: &str,
) -> std::io::Result<String> {
    // One write: a peer that answers on the first bytes and closes must not turn the newline
    // into a broken pipe.
    let mut line = String::with_capacity(command.len() + 1);
    line.push_str(command);
    line.push('\n');
    stream.write_all(line.as_bytes()).await?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(MAX_ANSWER as u64)
        .read_to_end(&mut answer)
        .await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// `show info` as key → value.
pub fn parse_info(answer: &str) -> Result<HashMap<String, String>, String> {
    let info: HashMap<String, String> = answer
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    if !info.contains_key("Pid") {
        return Err(format!("no Pid in {:?}", preview(answer)));
    }
    Ok(info)
}

/// One server from `show servers state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    /// Backend name.
    pub backend: String,
    /// Server name.
    pub server: String,
    /// Current address.
    pub address: SocketAddr,
    /// Current (user) weight.
    pub weight: u32,
    /// Configured (initial) weight.
    pub initial_weight: u32,
    /// Administrative drain is set.
    pub draining: bool,
}

/// `show servers state`.
pub fn parse_servers_state(answer: &str) -> Result<Vec<ServerState>, String> {
    let mut lines = answer.lines().filter(|l| !l.trim().is_empty());
    match lines.next() {
        Some("1") => {}
        other => return Err(format!("expected format version 1, got {:?}", other.map(preview))),
    }
    let header: Vec<&str> = lines
        .next()
        .and_then(|l| l.strip_prefix('#'))
        .ok_or_else(|| format!("no header line in {:?}", preview(answer)))?
        .split_whitespace()
        .collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| format!("no column {name}"))
    };
    let (be, srv, addr, port, uw, iw, admin) = (
        column("be_name")?,
        column("srv_name")?,
        column("srv_addr")?,
        column("srv_port")?,
        column("srv_uweight")?,
        column("srv_iweight")?,
        column("srv_admin_state")?,
    );
    lines
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let get = |i: usize| {
                fields
                    .get(i)
                    .copied()
                    .ok_or_else(|| format!("short line {line:?}"))
            };
            let number = |i: usize| {
                get(i)?
                    .parse::<u32>()
                    .map_err(|_| format!("bad number in {line:?}"))
            };
            let ip: IpAddr = get(addr)?
                .parse()
                .map_err(|_| format!("bad address in {line:?}"))?;
            let port: u16 = get(port)?.parse().map_err(|_| format!("bad port in {line:?}"))?;
            Ok(ServerState {
                backend: get(be)?.to_string(),
                server: get(srv)?.to_string(),
                address: SocketAddr::new(ip, port),
                weight: number(uw)?,
                initial_weight: number(iw)?,
                // SRV_ADMF_DRAIN (0x08) or SRV_ADMF_IDRAIN (0x10).
                draining: number(admin)? & 0x18 != 0,
            })
        })
        .collect()
}

/// One row of `show stat` (servers only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStat {
    /// Backend name.
    pub backend: String,
    /// Server name.
    pub server: String,
    /// Current sessions.
    pub current: u64,
    /// Sessions in total.
    pub total: u64,
    /// Status (`UP`, `DOWN`, `DRAIN`, `MAINT`, `no check`...).
    pub status: String,
    /// Effective weight.
    pub weight: u32,
}

/// `show stat`, server rows only.
pub fn parse_stat(answer: &str) -> Result<Vec<ServerStat>, String> {
    let mut lines = answer.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .ok_or_else(|| format!("no CSV header in {:?}", preview(answer)))?
        .split(',')
        .collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| format!("no column {name}"))
    };
    let (px, sv, scur, stot, status, weight) = (
        column("pxname")?,
        column("svname")?,
        column("scur")?,
        column("stot")?,
        column("status")?,
        column("weight")?,
    );
    let mut rows = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let get = |i: usize| fields.get(i).copied().unwrap_or("");
        if matches!(get(sv), "FRONTEND" | "BACKEND") {
            continue;
        }
        rows.push(ServerStat {
            backend: get(px).to_string(),
            server: get(sv).to_string(),
            current: get(scur).parse().unwrap_or(0),
            total: get(stot).parse().unwrap_or(0),
            status: get(status).to_string(),
            weight: get(weight).parse().unwrap_or(0),
        });
    }
    Ok(rows)
}

/// A session from `show sess`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Client address.
    pub client: String,
    /// Backend.
    pub backend: String,
    /// Server.
    pub server: String,
    /// Age in milliseconds.
    pub age_ms: u64,
}

/// `show sess`: sessions that reached a server.
pub fn parse_sessions(answer: &str) -> Vec<Session> {
    answer
        .lines()
        .filter_map(|line| {
            let field = |key: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .map(str::to_string)
            };
            let server = field("srv=")?;
            if server == "<none>" {
                return None;
            }
            Some(Session {
                client: field("src=")?,
                backend: field("be=")?,
                server,
                age_ms: field("age=").map(|a| parse_age(&a)).unwrap_or(0),
            })
        })
        .collect()
}

/// HAProxy's human durations (`3s`, `1m2s`, `2h3m`, `1d4h`) in milliseconds.
fn parse_age(text: &str) -> u64 {
    let mut total = 0u64;
    let mut number = 0u64;
    for c in text.chars() {
        if let Some(d) = c.to_digit(10) {
            number = number * 10 + u64::from(d);
        } else {
            let unit = match c {
                'd' => 86_400_000,
                'h' => 3_600_000,
                'm' => 60_000,
                's' => 1_000,
                _ => 0,
            };
            total += number * unit;
            number = 0;
        }
    }
    total
}

fn preview(text: &str) -> String {
    text.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from HAProxy 2.6.12 (Debian 12) on this machine.
    const SERVERS: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 be 1 s1 127.0.0.2 2 8 5 1 1 1 0 2 0 0 0 0 - 19001 - 0 0 - - 0\n3 be 2 s2 127.0.0.1 2 0 3 3 3 1 0 2 0 0 0 0 - 19002 - 0 0 - - 0\n\n";

    #[test]
    fn servers_state_is_read_by_column_name() {
        let servers = parse_servers_state(SERVERS).unwrap();
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].address, "127.0.0.2:19001".parse().unwrap());
        assert!(servers[0].draining);
        assert_eq!((servers[0].weight, servers[0].initial_weight), (5, 1));
        assert!(!servers[1].draining);
        assert!(parse_servers_state("Unknown command\n").is_err());
        assert!(parse_servers_state("1\n# be_id be_name\n3 be\n").is_err());
    }

    #[test]
    fn stat_rows_skip_frontends_and_backends() {
        let answer = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,status,weight\nfe,FRONTEND,,,1,1,,5,OPEN,\nbe,s1,0,0,3,4,,20,DRAIN,0\nbe,BACKEND,0,0,3,4,,20,UP,1\n";
        let rows = parse_stat(answer).unwrap();
        assert_eq!(
            rows,
            vec![ServerStat {
                backend: "be".into(),
                server: "s1".into(),
                current: 3,
                total: 20,
                status: "DRAIN".into(),
                weight: 0
            }]
        );
        assert!(parse_stat("garbage").is_err());
    }

    #[test]
    fn sessions_and_info_parse() {
        let sess = "0x55d0c9d7d2a0: proto=tcpv4 src=127.0.0.1:40612 fe=fe be=be srv=s1 ts=00 epoch=0 age=1m3s calls=2 rate=0\n0x55d0c9d7f000: proto=unix_stream src=unix:1 fe=GLOBAL be=<NONE> srv=<none> ts=00 age=0s\n";
        let sessions = parse_sessions(sess);
        assert_eq!(
            sessions,
            vec![Session {
                client: "127.0.0.1:40612".into(),
                backend: "be".into(),
                server: "s1".into(),
                age_ms: 63_000
            }]
        );
        let info = parse_info("Name: HAProxy\nVersion: 2.6.12\nPid: 25018\nUptime_sec: 2\n").unwrap();
        assert_eq!(info["Pid"], "25018");
        assert!(parse_info("hello").is_err());
    }
}
