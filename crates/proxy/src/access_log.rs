//! Access logs: one line per L7 request and per L4 connection, written without ever blocking the
//! data plane. A connection hands an [`Entry`] (plain values, nothing formatted) to a bounded
//! channel with `try_send`; a writer thread per destination formats and writes it. When the channel
//! is full the entry is dropped and counted (`handover_access_log_dropped_total`): a slow disk
//! costs log lines, never requests. On SIGUSR1 the binary calls [`AccessLogs::reopen`] and every
//! file is reopened at its path (for logrotate).
//!
//! Not here: the setting (`core::config::access_log`), the metric's exposition (the binary).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use handover_core::config::access_log::{
    AccessLogConfig, AccessLogFormat, AccessLogTarget, LogField, TemplatePart,
};
use handover_core::phase::Phase;

use crate::backend::BackendRuntime;

/// Entries waiting for a writer, per destination.
const QUEUE: usize = 16 * 1024;

/// What one line says.
#[derive(Debug)]
pub struct Entry {
    /// When it ended.
    pub time: SystemTime,
    /// The client.
    pub client: SocketAddr,
    /// `http` or `tcp`.
    pub protocol: &'static str,
    /// `METHOD target` (L7).
    pub request: Option<String>,
    /// Response status (L7).
    pub status: Option<u16>,
    /// The backend chosen and where it was reached.
    pub backend: Option<(Arc<BackendRuntime>, SocketAddr)>,
    /// The VM's phase when the backend was chosen.
    pub phase: Option<Phase>,
    /// Bytes from the client.
    pub bytes_in: u64,
    /// Bytes to the client.
    pub bytes_out: u64,
    /// To the first byte of the response (L7) or to the backend connection (L4).
    pub ttfb: Option<Duration>,
    /// From the request or connection to its end.
    pub total: Duration,
    /// Why it failed.
    pub error: Option<String>,
}

/// One listener's access log.
#[derive(Debug, Clone)]
pub struct AccessLog {
    /// The listener's name, written on every line.
    listener: Arc<str>,
    /// Its destination's queue.
    sender: SyncSender<(Arc<str>, Entry)>,
    /// Entries dropped because the queue was full.
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Queues a line; never waits (a full queue drops it, counted).
    pub fn record(&self, entry: Entry) {
        match self.sender.try_send((self.listener.clone(), entry)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A destination: its writer thread's inputs.
#[derive(Debug)]
struct Destination {
    sender: SyncSender<(Arc<str>, Entry)>,
    reopen: Arc<AtomicBool>,
}

/// Every listener's access log, and the writers behind them.
#[derive(Debug, Default)]
pub struct AccessLogs {
    /// By listener name, with the configuration it was opened with (a reload may add or change
    /// one).
    logs: Mutex<HashMap<String, (AccessLogConfig, AccessLog)>>,
    /// Dropped entries by listener name.
    dropped: Mutex<Vec<(String, Arc<AtomicU64>)>>,
    /// One per file or stdout (listeners writing to the same place share it).
    destinations: Mutex<HashMap<AccessLogTarget, Destination>>,
}

impl AccessLogs {
    /// Opens every listener's destination (files are created or appended to) and starts a writer
    /// for each. `Err` names the listener and the file that cannot be opened.
    pub fn open<'a>(listeners: impl IntoIterator<Item = (&'a str, &'a AccessLogConfig)>) -> io::Result<Self> {
        let logs = Self::default();
        for (listener, config) in listeners {
            logs.ensure(listener, config)?;
        }
        Ok(logs)
    }

    /// The access log of `listener` as `config` says: the one it has if that is unchanged, else
    /// a new one (opening its destination if no other listener writes there).
    pub fn ensure(&self, listener: &str, config: &AccessLogConfig) -> io::Result<AccessLog> {
        if let Some((existing, log)) = self.logs.lock().expect("not poisoned").get(listener)
            && existing == config
        {
            return Ok(log.clone());
        }
        let sender = {
            let mut destinations = self.destinations.lock().expect("not poisoned");
            if let Some(destination) = destinations.get(&config.to) {
                destination.sender.clone()
            } else {
                let out = open(&config.to).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("listener {listener}: access log {}: {e}", describe(&config.to)),
                    )
                })?;
                let (sender, receiver) = sync_channel(QUEUE);
                let reopen = Arc::new(AtomicBool::new(false));
                let writer = Writer {
                    target: config.to.clone(),
                    format: config.format.clone(),
                    out: BufWriter::with_capacity(64 * 1024, out),
                    reopen: reopen.clone(),
                };
                std::thread::Builder::new()
                    .name("handover-access-log".into())
                    .spawn(move || writer.run(receiver))?;
                destinations.insert(
                    config.to.clone(),
                    Destination {
                        sender: sender.clone(),
                        reopen,
                    },
                );
                sender
            }
        };
        let dropped = {
            let mut all = self.dropped.lock().expect("not poisoned");
            match all.iter().find(|(name, _)| name == listener) {
                Some((_, count)) => count.clone(),
                None => {
                    let count = Arc::new(AtomicU64::new(0));
                    all.push((listener.to_string(), count.clone()));
                    count
                }
            }
        };
        let log = AccessLog {
            listener: Arc::from(listener),
            sender,
            dropped,
        };
        self.logs
            .lock()
            .expect("not poisoned")
            .insert(listener.to_string(), (config.clone(), log.clone()));
        Ok(log)
    }

    /// The access log of a listener, if it has one.
    pub fn of(&self, listener: &str) -> Option<AccessLog> {
        self.logs
            .lock()
            .expect("not poisoned")
            .get(listener)
            .map(|(_, log)| log.clone())
    }

    /// Entries dropped (queue full), by listener.
    pub fn dropped(&self) -> Vec<(String, u64)> {
        self.dropped
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(name, count)| (name.clone(), count.load(Ordering::Relaxed)))
            .collect()
    }

    /// Asks every file's writer to reopen its path before its next line (SIGUSR1, logrotate).
    pub fn reopen(&self) {
        for destination in self.destinations.lock().expect("not poisoned").values() {
            destination.reopen.store(true, Ordering::Release);
            // Wakes an idle writer so the old file is released now, not at the next request.
            let _ = destination.sender.try_send((Arc::from(""), Entry::wake()));
        }
    }
}

impl Entry {
    /// Not a line: wakes a writer.
    fn wake() -> Self {
        Self {
            time: SystemTime::UNIX_EPOCH,
            client: SocketAddr::from(([0, 0, 0, 0], 0)),
            protocol: "",
            request: None,
            status: None,
            backend: None,
            phase: None,
            bytes_in: 0,
            bytes_out: 0,
            ttfb: None,
            total: Duration::ZERO,
            error: None,
        }
    }
}

fn describe(target: &AccessLogTarget) -> String {
    match target {
        AccessLogTarget::Stdout => "stdout".into(),
        AccessLogTarget::File(path) => path.display().to_string(),
    }
}

/// Where a writer writes.
enum Out {
    Stdout(io::Stdout),
    File(File),
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Out::Stdout(s) => s.write(buf),
            Out::File(f) => f.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Out::Stdout(s) => s.flush(),
            Out::File(f) => f.flush(),
        }
    }
}

fn open(target: &AccessLogTarget) -> io::Result<Out> {
    match target {
        AccessLogTarget::Stdout => Ok(Out::Stdout(io::stdout())),
        AccessLogTarget::File(path) => open_file(path).map(Out::File),
    }
}

fn open_file(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// A destination's writer thread.
struct Writer {
    target: AccessLogTarget,
    format: AccessLogFormat,
    out: BufWriter<Out>,
    reopen: Arc<AtomicBool>,
}

impl Writer {
    fn run(mut self, entries: Receiver<(Arc<str>, Entry)>) {
        let mut line = String::with_capacity(512);
        let mut failing = false;
        while let Ok(first) = entries.recv() {
            let mut next = Some(first);
            while let Some((listener, entry)) = next {
                if self.reopen.swap(false, Ordering::AcqRel) {
                    self.reopen_file();
                }
                if !entry.protocol.is_empty() {
                    line.clear();
                    format_entry(&self.format, &listener, &entry, &mut line);
                    line.push('\n');
                    let written = self.out.write_all(line.as_bytes());
                    if let Err(e) = written {
                        if !failing {
                            tracing::error!(access_log = %describe(&self.target), error = %e, "cannot write the access log; lines are lost until it can");
                        }
                        failing = true;
                    } else {
                        failing = false;
                    }
                }
                next = entries.try_recv().ok();
            }
            // The queue is empty: what was written reaches the file now.
            let _ = self.out.flush();
        }
        let _ = self.out.flush();
    }

    fn reopen_file(&mut self) {
        let AccessLogTarget::File(path) = &self.target else {
            return;
        };
        let _ = self.out.flush();
        match open_file(path) {
            Ok(file) => self.out = BufWriter::with_capacity(64 * 1024, Out::File(file)),
            Err(e) => {
                tracing::error!(access_log = %path.display(), error = %e, "cannot reopen the access log; writing on to the old file")
            }
        }
    }
}

/// Formats one entry (without its newline).
pub fn format_entry(format: &AccessLogFormat, listener: &str, entry: &Entry, out: &mut String) {
    match format {
        AccessLogFormat::Json => {
            let mut object = serde_json::Map::new();
            for (name, field) in LogField::ALL {
                object.insert(name.to_string(), json_value(field, listener, entry));
            }
            out.push_str(&serde_json::Value::Object(object).to_string());
        }
        AccessLogFormat::Text(parts) => {
            for part in parts {
                match part {
                    TemplatePart::Literal(text) => out.push_str(text),
                    TemplatePart::Field(field) => match text_value(*field, listener, entry) {
                        Some(value) => out.push_str(&value),
                        None => out.push('-'),
                    },
                }
            }
        }
    }
}

fn method_and_target(entry: &Entry) -> (Option<&str>, Option<&str>) {
    match entry.request.as_deref().and_then(|r| r.split_once(' ')) {
        Some((method, target)) => (Some(method), Some(target)),
        None => (None, None),
    }
}

/// A field's value as text; `None` when it has none. Text values never contain a space or a
/// newline (they are percent-escaped), so a line splits into its fields.
fn text_value(field: LogField, listener: &str, entry: &Entry) -> Option<String> {
    let escape = |s: &str| {
        s.chars()
            .map(|c| match c {
                ' ' => "%20".to_string(),
                '\n' => "%0A".to_string(),
                '\r' => "%0D".to_string(),
                '"' => "%22".to_string(),
                c if c.is_control() => format!("%{:02X}", c as u32),
                c => c.to_string(),
            })
            .collect::<String>()
    };
    match json_value(field, listener, entry) {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(escape(&s)),
        other => Some(other.to_string()),
    }
}

fn json_value(field: LogField, listener: &str, entry: &Entry) -> serde_json::Value {
    use serde_json::Value;
    let ms = |d: Duration| Value::from((d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0);
    let (method, target) = method_and_target(entry);
    match field {
        LogField::Time => Value::from(rfc3339(entry.time)),
        LogField::Client => Value::from(entry.client.to_string()),
        LogField::Listener => Value::from(listener),
        LogField::Protocol => Value::from(entry.protocol),
        LogField::Method => method.map_or(Value::Null, Value::from),
        LogField::Target => target.map_or(Value::Null, Value::from),
        LogField::Status => entry.status.map_or(Value::Null, Value::from),
        LogField::Backend => entry
            .backend
            .as_ref()
            .map_or(Value::Null, |(_, a)| Value::from(a.to_string())),
        LogField::Vm => entry
            .backend
            .as_ref()
            .map_or(Value::Null, |(b, _)| Value::from(b.vm.to_string())),
        LogField::Phase => entry.phase.map_or(Value::Null, |p| Value::from(p.as_str())),
        LogField::BytesIn => Value::from(entry.bytes_in),
        LogField::BytesOut => Value::from(entry.bytes_out),
        LogField::TtfbMs => entry.ttfb.map_or(Value::Null, ms),
        LogField::TotalMs => ms(entry.total),
        LogField::Error => entry.error.as_deref().map_or(Value::Null, Value::from),
    }
}

/// `2026-12-01T09:15:52.807Z`.
fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use handover_core::config::access_log::parse_template;

    fn entry() -> Entry {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_116_227_747),
            client: "10.0.0.9:4711".parse().unwrap(),
            protocol: "http",
            request: Some("GET /a b".into()),
            status: Some(502),
            backend: None,
            phase: Some(Phase::Draining),
            bytes_in: 120,
            bytes_out: 64,
            ttfb: None,
            total: Duration::from_micros(1500),
            error: Some("no backend could be reached".into()),
        }
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(entry().time), "2026-12-01T09:10:27.747Z");
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn text_lines_follow_the_template_and_split_on_spaces() {
        let format = AccessLogFormat::Text(
            parse_template("{client} {method} {target} {status} {vm} {phase} {total_ms} {error}").unwrap(),
        );
        let mut line = String::new();
        format_entry(&format, "web", &entry(), &mut line);
        assert_eq!(
            line,
            "10.0.0.9:4711 GET /a%20b 502 - draining 1.5 no%20backend%20could%20be%20reached"
        );
    }

    #[test]
    fn json_lines_carry_every_field() {
        let mut line = String::new();
        format_entry(&AccessLogFormat::Json, "web", &entry(), &mut line);
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        for (name, _) in LogField::ALL {
            assert!(value.get(name).is_some(), "{name} missing: {line}");
        }
        assert_eq!(value["listener"], "web");
        assert_eq!(value["target"], "/a b");
        assert_eq!(value["vm"], serde_json::Value::Null);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (sender, _receiver) = sync_channel(1);
        let log = AccessLog {
            listener: Arc::from("web"),
            sender,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        log.record(entry());
        log.record(entry());
        log.record(entry());
        assert_eq!(log.dropped.load(Ordering::Relaxed), 2);
    }
}
