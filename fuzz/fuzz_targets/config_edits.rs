//! `config_edits`: the structure-aware variant of `config_reader`. The input is a list of edits
//! (decoded with `arbitrary`) applied to a valid configuration (`examples/handover.toml`,
//! `examples/haproxy-fleet.toml`, `examples/fleet.toml`, or one with every other section): set a
//! value anywhere to another of any type (field names, policy words, durations, addresses and VM
//! ids are likely), remove one, add a key to a table, repeat an array element. The edited document
//! is written out as TOML and checked like `config_reader` checks text, so the fuzzer spends its
//! time in validation and start-up rather than in TOML syntax.

#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use toml::{Table, Value};

const BASES: [&str; 4] = [
    include_str!("../../examples/handover.toml"),
    include_str!("../../examples/haproxy-fleet.toml"),
    include_str!("../corpus/config_reader/every-section.toml"),
    include_str!("../../examples/fleet.toml"),
];

/// Every field name the configuration knows, and a few it does not.
const KEYS: &[&str] = &[
    "control",
    "bind",
    "token",
    "migration",
    "deadline",
    "drain_timeout",
    "listeners",
    "name",
    "kind",
    "pool",
    "response_timeout",
    "client_timeout",
    "idle_timeout",
    "pools",
    "algorithm",
    "drain",
    "target",
    "shape",
    "window",
    "keep",
    "ramp",
    "aggression",
    "min_percent",
    "restore",
    "drained_threshold",
    "guard",
    "min_active",
    "max_concurrent",
    "on_violation",
    "connect_timeout",
    "retries",
    "sticky",
    "cookie",
    "health",
    "path",
    "expect",
    "interval",
    "timeout",
    "rise",
    "fall",
    "outlier",
    "consecutive_failures",
    "ejection",
    "blackout_grace",
    "backends",
    "address",
    "vm",
    "weight",
    "peers",
    "url",
    "qmp",
    "socket",
    "poll_interval",
    "state",
    "file",
    "haproxy",
    "vms",
    "server_name_is_vm",
    "step",
    "nginx",
    "upstream",
    "reload",
    "extra",
    "servers",
    "access_log",
    "to",
    "format",
    "template",
    "libvirt",
    "uri",
    "virsh",
    "fleet",
    "etcd",
    "node",
    "prefix",
    "lease",
    "ack_timeout",
    "user",
    "password",
    "cacert",
    "cert",
    "key",
    "web",
    "db",
    "web/s1",
    "",
    "a.b",
    "Name",
];

/// Words that the configuration's string fields take.
const WORDS: &[&str] = &[
    "http",
    "tcp",
    "round_robin",
    "least_connections",
    "p2c_ewma",
    "step",
    "linear",
    "connections",
    "sessions",
    "in-flight",
    "ramp",
    "immediate",
    "queue",
    "refuse",
    "2xx",
    "5xx",
    "200",
    "web",
    "db",
    "vm-a",
    "vm-b",
    "embedded",
    "lb-1",
    "edge-2",
    "/healthz",
    "/run/x.sock",
    "unix:/run/x.qmp",
    "tcp:127.0.0.1:4444",
    "tcp:",
    "unix:",
    "http://127.0.0.1:9090",
    "https://h:1/",
    "127.0.0.1:9090",
    "127.0.0.1:0",
    "0.0.0.0:80",
    "[::1]:9001",
    "web/s2",
    "127.0.0.1:9001",
    "10s",
    "0s",
    "1ms",
    "999999999999h",
    "18446744073709551615ms",
    "1.5s",
    "",
    " ",
    "vm a",
    "nginx",
    "json",
    "text",
    "stdout",
    "off",
    "/var/log/x.log",
    "{client} {status}",
    "{nope}",
    "{{",
    "}",
    "{total_ms}{ttfb_ms}",
    "qemu:///system",
    "http://127.0.0.1:2379",
    "https://127.0.0.1:2379",
    "lb-1",
    "/handover",
];

/// A value to put into the document.
#[derive(Debug, Arbitrary)]
enum Val {
    Word(u8),
    Text(String),
    Duration(u64, u8),
    Address(u8, u16),
    Integer(i64),
    Small(u8),
    Float(f64),
    Bool(bool),
    Array(Vec<Val>),
    Table(Vec<(Key, Val)>),
}

/// A key to add to a table.
#[derive(Debug, Arbitrary)]
enum Key {
    Known(u8),
    Text(String),
}

#[derive(Debug, Arbitrary)]
enum Edit {
    /// Replace the value at a path.
    Set { at: u16, value: Val },
    /// Remove the value at a path.
    Remove { at: u16 },
    /// Add a key to a table.
    Add { at: u16, key: Key, value: Val },
    /// Append a copy of an element of an array.
    Repeat { at: u16, which: u8 },
}

#[derive(Debug, Arbitrary)]
struct Input {
    base: u8,
    edits: Vec<Edit>,
}

impl Key {
    fn text(&self) -> String {
        match self {
            Key::Known(i) => KEYS[usize::from(*i) % KEYS.len()].to_string(),
            Key::Text(s) => s.clone(),
        }
    }
}

impl Val {
    fn to_toml(&self, depth: usize) -> Value {
        match self {
            Val::Word(i) => Value::String(WORDS[usize::from(*i) % WORDS.len()].to_string()),
            Val::Text(s) => Value::String(s.clone()),
            Val::Duration(n, unit) => {
                let unit = ["ms", "s", "m", "h", "d", "", "us", "ns"][usize::from(*unit) % 8];
                Value::String(format!("{n}{unit}"))
            }
            Val::Address(ip, port) => {
                let ip = [
                    "127.0.0.1",
                    "10.0.0.1",
                    "[::1]",
                    "0.0.0.0",
                    "[fd00::7]",
                    "localhost",
                ][usize::from(*ip) % 6];
                Value::String(format!("{ip}:{port}"))
            }
            Val::Integer(n) => Value::Integer(*n),
            Val::Small(n) => Value::Integer(i64::from(*n)),
            Val::Float(f) => Value::Float(*f),
            Val::Bool(b) => Value::Boolean(*b),
            Val::Array(items) if depth < 4 => {
                Value::Array(items.iter().map(|v| v.to_toml(depth + 1)).collect())
            }
            Val::Table(entries) if depth < 4 => Value::Table(
                entries
                    .iter()
                    .map(|(k, v)| (k.text(), v.to_toml(depth + 1)))
                    .collect(),
            ),
            Val::Array(_) | Val::Table(_) => Value::Integer(0),
        }
    }
}

/// One step of a path into the document.
#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

/// Every path in the document, depth first.
fn paths(value: &Value, prefix: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    match value {
        Value::Table(table) => {
            for (k, v) in table {
                prefix.push(Seg::Key(k.clone()));
                out.push(prefix.clone());
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                prefix.push(Seg::Index(i));
                out.push(prefix.clone());
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn get_mut<'v>(value: &'v mut Value, path: &[Seg]) -> Option<&'v mut Value> {
    path.iter().try_fold(value, |v, seg| match (v, seg) {
        (Value::Table(t), Seg::Key(k)) => t.get_mut(k),
        (Value::Array(a), Seg::Index(i)) => a.get_mut(*i),
        _ => None,
    })
}

fn apply(doc: &mut Value, edit: &Edit) {
    let mut all = vec![Vec::new()];
    paths(doc, &mut Vec::new(), &mut all);
    let pick = |at: u16, keep: &dyn Fn(&Value) -> bool, doc: &mut Value| -> Option<Vec<Seg>> {
        let fitting: Vec<&Vec<Seg>> = all
            .iter()
            .filter(|p| get_mut(doc, p).is_some_and(|v| keep(v)))
            .collect();
        (!fitting.is_empty()).then(|| fitting[usize::from(at) % fitting.len()].clone())
    };
    match edit {
        Edit::Set { at, value } => {
            if let Some(path) = pick(*at, &|_| true, doc).filter(|p| !p.is_empty()) {
                *get_mut(doc, &path).unwrap() = value.to_toml(0);
            }
        }
        Edit::Remove { at } => {
            if let Some(path) = pick(*at, &|_| true, doc).filter(|p| !p.is_empty()) {
                let (last, parent) = path.split_last().unwrap();
                match (get_mut(doc, parent).unwrap(), last) {
                    (Value::Table(t), Seg::Key(k)) => {
                        t.remove(k);
                    }
                    (Value::Array(a), Seg::Index(i)) => {
                        a.remove(*i);
                    }
                    _ => {}
                }
            }
        }
        Edit::Add { at, key, value } => {
            if let Some(path) = pick(*at, &|v| v.is_table(), doc)
                && let Some(Value::Table(t)) = get_mut(doc, &path)
            {
                t.insert(key.text(), value.to_toml(0));
            }
        }
        Edit::Repeat { at, which } => {
            let nonempty = |v: &Value| v.as_array().is_some_and(|a| !a.is_empty());
            if let Some(path) = pick(*at, &nonempty, doc)
                && let Some(Value::Array(a)) = get_mut(doc, &path)
            {
                let copy = a[usize::from(*which) % a.len()].clone();
                a.push(copy);
            }
        }
    }
}

/// The bases as TOML documents, parsed once.
fn bases() -> &'static [Table] {
    static PARSED: OnceLock<Vec<Table>> = OnceLock::new();
    PARSED.get_or_init(|| {
        BASES
            .iter()
            .map(|text| text.parse::<Table>().expect("the bases are valid TOML"))
            .collect()
    })
}

fuzz_target!(|input: Input| {
    let bases = bases();
    let mut doc = Value::Table(bases[usize::from(input.base) % bases.len()].clone());
    for edit in input.edits.iter().take(8) {
        apply(&mut doc, edit);
    }
    let Value::Table(table) = doc else {
        unreachable!("the root stays a table")
    };
    // A document TOML cannot write (a table inside an array of values, say) is no input.
    if let Ok(text) = toml::to_string(&table) {
        handover_fuzz::config::check(&text);
    }
});
