//! The driver's compare-and-repair loop (`sync`, `run`) against a runtime API that answers as
//! HAProxy 2.6.12 (Debian 12) does: `show servers state` in the format recorded from it, and the
//! `set server` / `set weight` commands applied to its table. A "reload" puts every server back to
//! its configuration and changes the worker PID, as a real reload does.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use handover_core::balancer::Balancer;
use handover_core::model::VmId;
use handover_core::phase::{EndReason, PhaseCommand};
use table::Table;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use super::HaproxyBalancer;

/// The header line HAProxy 2.6.12 prints for `show servers state`.
const HEADER: &str = "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port";

mod table {
    //! The fake HAProxy's table.

    use std::sync::Mutex;

    /// One server as HAProxy holds it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Server {
        pub name: &'static str,
        pub addr: String,
        pub port: u16,
        pub admin: u32,
        pub uweight: u32,
        pub iweight: u32,
    }

    /// Servers of backend `be`, the commands received, the worker PID.
    #[derive(Debug, Default)]
    pub struct Table {
        pub state: Mutex<(Vec<Server>, Vec<String>, u32)>,
    }
}

use table::Server;

fn configured() -> Vec<Server> {
    (1..=3)
        .map(|i| Server {
            name: ["s1", "s2", "s3"][i - 1],
            addr: "127.0.0.1".into(),
            port: 19000 + i as u16,
            admin: 0,
            uweight: 4,
            iweight: 4,
        })
        .collect()
}

/// A fake HAProxy runtime API on a unix socket.
struct Fake {
    table: Arc<Table>,
    socket: PathBuf,
}

impl Fake {
    async fn start() -> Fake {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let socket = std::env::temp_dir().join(format!(
            "handover-haproxy-unit-{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).unwrap();
        let table = Arc::new(Table::default());
        *table.state.lock().unwrap() = (configured(), Vec::new(), 100);
        let served = table.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                if BufReader::new(read).read_line(&mut line).await.is_err() {
                    continue;
                }
                let answer = answer(&served, line.trim());
                let _ = write.write_all(answer.as_bytes()).await;
            }
        });
        Fake { table, socket }
    }

    fn servers(&self) -> Vec<Server> {
        self.table.state.lock().unwrap().0.clone()
    }

    /// The `set` commands received so far.
    fn sets(&self) -> Vec<String> {
        let state = self.table.state.lock().unwrap();
        state
            .1
            .iter()
            .filter(|c| c.starts_with("set "))
            .cloned()
            .collect()
    }

    /// A reload: every server back to its configuration, a new worker.
    fn reload(&self) {
        let mut state = self.table.state.lock().unwrap();
        state.0 = configured();
        state.2 += 1;
    }

    fn balancer(&self, extra: &str) -> Arc<HaproxyBalancer> {
        let config = handover_core::config::parse(&format!(
            "[control]\nbind = \"127.0.0.1:0\"\n\n[[haproxy]]\nname = \"lb\"\nsocket = \"{}\"\nvms = {{ \"be/s1\" = \"vm-a\", \"127.0.0.1:19002\" = \"vm-b\" }}\nstep = \"50ms\"\n{extra}\n",
            self.socket.display()
        ))
        .unwrap();
        HaproxyBalancer::new(config.haproxy[0].clone())
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// HAProxy's answer to one command, applied to `table`.
fn answer(table: &Table, command: &str) -> String {
    let mut state = table.state.lock().unwrap();
    state.1.push(command.to_string());
    let pid = state.2;
    let servers = &mut state.0;
    let words: Vec<&str> = command.split_whitespace().collect();
    let find = |servers: &mut Vec<Server>, name: &str| {
        let name = name.strip_prefix("be/")?;
        servers.iter_mut().position(|s| s.name == name)
    };
    match words.as_slice() {
        ["show", "info"] => format!("Name: HAProxy\nVersion: 2.6.12-1+deb12u1\nPid: {pid}\n\n"),
        ["show", "servers", "state"] => {
            let mut out = format!("1\n{HEADER}\n");
            for (i, s) in servers.iter().enumerate() {
                out.push_str(&format!(
                    "3 be {} {} {} 2 {} {} {} 1 1 0 2 0 0 0 0 - {} - 0 0 - - 0\n",
                    i + 1,
                    s.name,
                    s.addr,
                    s.admin,
                    s.uweight,
                    s.iweight,
                    s.port
                ));
            }
            out + "\n"
        }
        ["set", "server", name, "state", state] => match find(servers, name) {
            Some(i) => {
                match *state {
                    "drain" => servers[i].admin |= 0x08,
                    "ready" => servers[i].admin &= !0x18,
                    _ => return "'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n".into(),
                }
                "\n".into()
            }
            None => "No such server.\n".into(),
        },
        ["set", "weight", name, weight] => match (find(servers, name), weight.parse::<u32>()) {
            (Some(i), Ok(w)) if w <= 256 => {
                servers[i].uweight = w;
                "\n".into()
            }
            (None, _) => "No such server.\n".into(),
            _ => "Integer value out of bounds.\n".into(),
        },
        ["set", "server", name, "addr", ip, "port", port] => match find(servers, name) {
            Some(i) => {
                let old = format!("{}:{}", servers[i].addr, servers[i].port);
                servers[i].addr = ip.to_string();
                servers[i].port = port.parse().unwrap();
                format!("IP changed from '{old}' to '{ip}', port changed\n")
            }
            None => "No such server.\n".into(),
        },
        _ => "Unknown command.\n".into(),
    }
}

fn vm(name: &str) -> VmId {
    VmId::new(name).unwrap()
}

fn drain() -> PhaseCommand {
    PhaseCommand::Drain {
        elapsed_ms: 0,
        migrating: false,
        deadline_in_ms: 3_600_000,
        level: None,
    }
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < Duration::from_secs(20), "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_drain_sets_only_that_servers_drain_state_and_a_second_sync_sends_nothing() {
    let fake = Fake::start().await;
    let balancer = fake.balancer("");
    let applied = balancer.apply(&vm("vm-a"), drain()).await.unwrap();
    assert!(applied.serves);
    assert_eq!(fake.sets(), vec!["set server be/s1 state drain".to_string()]);
    let servers = fake.servers();
    assert_eq!(servers[0].admin & 0x08, 0x08);
    assert_eq!(servers[0].uweight, 4, "a full drain keeps the weight");
    assert_eq!(servers[1].admin, 0);

    // The same command again: HAProxy already is as desired, so nothing is sent.
    balancer.apply(&vm("vm-a"), drain()).await.unwrap();
    assert_eq!(fake.sets().len(), 1, "{:?}", fake.sets());
}

#[tokio::test]
async fn a_vm_the_instance_does_not_serve_is_answered_serves_false_and_nothing_is_sent() {
    let fake = Fake::start().await;
    let balancer = fake.balancer("");
    let applied = balancer.apply(&vm("vm-z"), drain()).await.unwrap();
    assert!(!applied.serves);
    assert!(fake.sets().is_empty(), "{:?}", fake.sets());
}

#[tokio::test]
async fn a_reload_that_forgets_the_drain_is_repaired_by_the_step_loop() {
    let fake = Fake::start().await;
    let balancer = fake.balancer("");
    // vm-b is mapped by address: the second server.
    balancer.apply(&vm("vm-b"), drain()).await.unwrap();
    assert_eq!(fake.servers()[1].admin & 0x08, 0x08);
    let cancel = CancellationToken::new();
    let running = tokio::spawn(balancer.clone().run(cancel.clone()));

    fake.reload();
    assert_eq!(fake.servers()[1].admin, 0, "the reload forgot the drain");
    eventually("the step loop drains s2 again after the reload", || {
        fake.servers()[1].admin & 0x08 == 0x08
    })
    .await;
    assert_eq!(
        fake.sets(),
        vec!["set server be/s2 state drain".to_string(); 2],
        "only the drain, once before and once after the reload"
    );
    cancel.cancel();
    running.await.unwrap();
}

#[tokio::test]
async fn a_ramp_steps_the_weight_up_from_low_and_ends_at_the_configured_state() {
    let fake = Fake::start().await;
    let balancer = fake.balancer("ramp = { window = \"1s\" }");
    balancer.apply(&vm("vm-a"), drain()).await.unwrap();
    balancer
        .apply(
            &vm("vm-a"),
            PhaseCommand::Ramp {
                elapsed_ms: 0,
                reason: EndReason::Completed,
            },
        )
        .await
        .unwrap();
    let first = fake.servers()[0].clone();
    assert_eq!(first.admin & 0x18, 0, "ready again: {first:?}");
    assert!(
        first.uweight < first.iweight * 64,
        "the ramp starts below the full scaled weight: {first:?}"
    );
    let cancel = CancellationToken::new();
    let running = tokio::spawn(balancer.clone().run(cancel.clone()));
    eventually("the ramp ends at the configured weight", || {
        let s1 = fake.servers()[0].clone();
        s1.uweight == s1.iweight && s1.admin == 0
    })
    .await;
    // While ramping, s1's scaled weight only rose; the last command puts back its configured one.
    let weights: Vec<u32> = fake
        .sets()
        .iter()
        .filter_map(|c| c.strip_prefix("set weight be/s1 "))
        .map(|w| w.parse().unwrap())
        .collect();
    let (last, ramp) = weights.split_last().unwrap();
    assert_eq!(*last, 4, "{weights:?}");
    assert!(ramp.len() >= 2, "stepped: {weights:?}");
    assert!(ramp.windows(2).all(|w| w[0] <= w[1]), "rising: {weights:?}");
    // Every server is back as configured, and once stable the loop leaves HAProxy alone.
    assert_eq!(fake.servers(), configured());
    let settled = fake.sets().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.sets().len(), settled, "{:?}", fake.sets());
    cancel.cancel();
    running.await.unwrap();
}
