//! Binary upgrade through the real binary, under load: a new `handover run --upgrade-from` takes
//! over the listening sockets (and the control API's) of the running one over a unix socket; no
//! connection is refused, no request fails, the long-lived connections of the old process keep
//! working until their clients close them, then the old process exits; a VM draining before the
//! upgrade is still draining after it.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::backends::{HttpBackend, TcpBackend, TcpClient};
use common::eventually;
use common::harness;
use handover_drivers::ControlClient;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A `handover run` started by the test, killed if the test ends first.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn start(config: &Path, ready: &Path, log: &Path, extra: &[&str]) -> Process {
        let child = Command::new(common::binary())
            .args(["run", "--config"])
            .arg(config)
            .arg("--ready-file")
            .arg(ready)
            .args(["--shutdown-grace", "60s"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        Process {
            child,
            log: log.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ready file's JSON, once it is there.
fn ready(path: &Path, process: &mut Process) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return serde_json::from_str(&text).unwrap();
        }
        assert!(process.exited().is_none(), "exited early:\n{}", process.log());
        assert!(Instant::now() < deadline, "not ready:\n{}", process.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    vm_c: AtomicU64,
    errors: parking_lot::Mutex<Vec<String>>,
    echoes: AtomicU64,
}

/// A new connection per request until stopped; a refused connect or a failed request counts.
async fn client(address: SocketAddr, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let result = async {
            let stream = TcpStream::connect(address)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(connection);
            let request = hyper::Request::get("/")
                .header("host", "test")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("send: {e}"))?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            if status != 200 {
                return Err(format!("status {status}"));
            }
            Ok::<_, String>(String::from_utf8_lossy(&body).trim().to_string())
        }
        .await;
        match result {
            Ok(vm) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                if vm == "vm-c" {
                    tally.vm_c.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                tally.errors.lock().push(e);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn long_lived(mut client: TcpClient, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let vm = client.vm.clone();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        match client.echo(&format!("ping {n}")).await {
            Some(answer) if answer == format!("{vm} ping {n}") => {
                tally.echoes.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                tally
                    .errors
                    .lock()
                    .push(format!("long-lived to {vm} broke: {other:?}"));
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn pool_requests(control: &ControlClient) -> u64 {
    let pools: serde_json::Value = control.get("/v1/pools").await.unwrap();
    pools
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "web")
        .flat_map(|p| p["backends"].as_array().unwrap().iter())
        .map(|b| b["requests_total"].as_u64().unwrap())
        .sum()
}

fn main() {
    harness::main(vec![
        harness::test_async("a_binary_upgrade_under_load_refuses_nothing_keeps_phases_and_the_old_process_exits_when_its_connections_end", a_binary_upgrade_under_load_refuses_nothing_keeps_phases_and_the_old_process_exits_when_its_connections_end),
    ])
}

async fn a_binary_upgrade_under_load_refuses_nothing_keeps_phases_and_the_old_process_exits_when_its_connections_end()
 {
    let web = [
        HttpBackend::start("vm-a").await,
        HttpBackend::start("vm-b").await,
        HttpBackend::start("vm-c").await,
    ];
    let ta = TcpBackend::start("ta").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("handover.toml");
    let mut text = format!(
        "[control]\nbind = \"127.0.0.1:0\"\n\n[state]\nfile = \"{}\"\n\n\
         [[listeners]]\nname = \"web\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n\n\
         [[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\npool = \"tcp\"\n\n\
         [pools.tcp]\n[[pools.tcp.backends]]\naddress = \"{}\"\nvm = \"vm-t\"\n\n[pools.web]\n",
        dir.path().join("state.json").display(),
        ta.address
    );
    for (backend, vm) in web.iter().zip(["vm-a", "vm-b", "vm-c"]) {
        text.push_str(&format!(
            "[[pools.web.backends]]\naddress = \"{}\"\nvm = \"{vm}\"\n",
            backend.address
        ));
    }
    std::fs::write(&config, text).unwrap();
    let socket = dir.path().join("upgrade.sock");
    let socket_arg = socket.to_str().unwrap();
    let (ready_old, ready_new) = (dir.path().join("old.json"), dir.path().join("new.json"));
    let mut old = Process::start(
        &config,
        &ready_old,
        &dir.path().join("old.log"),
        &["--upgrade-socket", socket_arg],
    );
    let before = ready(&ready_old, &mut old);
    let web_at: SocketAddr = before["listeners"]["web"].as_str().unwrap().parse().unwrap();
    let tcp_at: SocketAddr = before["listeners"]["tcp"].as_str().unwrap().parse().unwrap();
    let control_url = before["control"].as_str().unwrap().to_string();
    let control = ControlClient::new(&control_url, None, Duration::from_secs(30));

    // vm-c drains before the upgrade.
    let (status, reply) = control
        .post::<_, serde_json::Value>(
            "/v1/vms/vm-c/migration",
            &serde_json::json!({"phase": "prepare", "wait_drained": true, "timeout_ms": 10000}),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200, "{reply}");

    // Load: four clients opening a connection per request, four long-lived TCP connections.
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let stop_long = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(tokio::spawn(client(web_at, tally.clone(), stop.clone())));
    }
    let mut long = Vec::new();
    for _ in 0..4 {
        let connection = TcpClient::connect(tcp_at).await;
        long.push(tokio::spawn(long_lived(
            connection,
            tally.clone(),
            stop_long.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The upgrade.
    let mut new = Process::start(
        &config,
        &ready_new,
        &dir.path().join("new.log"),
        &["--upgrade-from", socket_arg, "--upgrade-socket", socket_arg],
    );
    let after = ready(&ready_new, &mut new);
    assert_ne!(after["pid"], before["pid"]);
    assert_eq!(
        after["listeners"], before["listeners"],
        "the same addresses, taken over"
    );
    assert_eq!(after["control"], before["control"]);
    assert!(
        eventually(Duration::from_secs(10), || async {
            old.log()
                .contains("the new process serves: this one stopped accepting")
        })
        .await,
        "{}",
        old.log()
    );

    // The new process serves the control API and the phases it read from the state file.
    let vm: serde_json::Value = control.get("/v1/vms/vm-c").await.unwrap();
    assert_eq!(vm["phase"], "draining", "{vm}");
    let served_before = pool_requests(&control).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let served_after = pool_requests(&control).await;
    assert!(
        served_after > served_before + 50,
        "the new process takes the new connections: {served_before} then {served_after}, {} answered, errors {:?}\nnew:\n{}\nold:\n{}",
        tally.ok.load(Ordering::Relaxed),
        tally.errors.lock(),
        new.log(),
        old.log()
    );

    // The old process keeps its long-lived connections (and stays) until their clients close them.
    assert!(
        old.exited().is_none(),
        "the old process left with connections open:\n{}",
        old.log()
    );
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    stop_long.store(true, Ordering::Relaxed);
    for task in long {
        task.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(status) = old.exited() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the old process did not exit:\n{}",
            old.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit}:\n{}", old.log());
    assert!(new.exited().is_none(), "{}", new.log());

    let errors = tally.errors.lock().clone();
    assert_eq!(tally.failed.load(Ordering::Relaxed), 0, "{errors:?}");
    assert!(tally.ok.load(Ordering::Relaxed) > 200);
    assert!(tally.echoes.load(Ordering::Relaxed) > 4 * 20);
    assert_eq!(
        tally.vm_c.load(Ordering::Relaxed),
        0,
        "the draining VM got new requests"
    );

    // The new process can itself be upgraded from: its upgrade socket answers.
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok());
    eprintln!(
        "upgrade: {} requests answered, {} long-lived echoes, 0 failed",
        tally.ok.load(Ordering::Relaxed),
        tally.echoes.load(Ordering::Relaxed)
    );
}
