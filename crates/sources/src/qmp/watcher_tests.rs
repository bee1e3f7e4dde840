//! The QMP watcher across reconnects, against a monitor that speaks QMP on a unix socket: when
//! the QEMU that comes back after a lost connection is a *new* one (no migration, status `none`)
//! the migration in progress is reported failed at once; when the same QEMU comes back with the
//! migration still active, nothing is reported.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handover_core::balancer::BoxFuture;
use handover_core::migration::MigrationProgress;
use handover_core::model::{Endpoint, VmId};
use handover_core::phase::Notice;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{MigrationSink, QmpWatcher};

/// Records the notices the watcher sends.
#[derive(Default)]
struct Recorder(Mutex<Vec<(Notice, Instant)>>);

impl MigrationSink for Recorder {
    fn notice<'a>(&'a self, _vm: &'a VmId, notice: Notice) -> BoxFuture<'a, Result<(), String>> {
        self.0.lock().unwrap().push((notice, Instant::now()));
        Box::pin(async { Ok(()) })
    }

    fn progress<'a>(&'a self, _vm: &'a VmId, _progress: MigrationProgress) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

impl Recorder {
    fn notices(&self) -> Vec<Notice> {
        self.0.lock().unwrap().iter().map(|(n, _)| *n).collect()
    }
}

fn socket() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "handover-qmp-unit-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A QEMU monitor serving one connection at `path`: greeting, capabilities, and `query-migrate`
/// answered with `migration` (`{}` when no migration ever ran) and counted in `queries`; it hangs
/// up when `hang_up` fires.
async fn monitor(path: PathBuf, migration: Value, queries: Arc<AtomicUsize>, hang_up: oneshot::Receiver<()>) {
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    drop(listener);
    let _ = std::fs::remove_file(&path);
    let (read, mut write) = stream.into_split();
    write
        .write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 0, \"major\": 10}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n")
        .await
        .unwrap();
    let mut lines = BufReader::new(read).lines();
    let serve = async {
        while let Ok(Some(line)) = lines.next_line().await {
            let request: Value = serde_json::from_str(&line).unwrap();
            let answer = match request["execute"].as_str() {
                Some("query-migrate") => {
                    queries.fetch_add(1, Ordering::Relaxed);
                    migration.clone()
                }
                _ => json!({}),
            };
            let reply = json!({ "return": answer, "id": request["id"] });
            if write.write_all(format!("{reply}\r\n").as_bytes()).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = serve => {}
        _ = hang_up => {}
    }
}

fn active() -> Value {
    json!({ "status": "active", "ram": { "total": 67108864, "transferred": 1048576, "remaining": 66060288 } })
}

async fn wait_for(recorder: &Recorder, what: &str, condition: impl Fn(&[Notice]) -> bool) {
    let started = Instant::now();
    while !condition(&recorder.notices()) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: {:?}",
            recorder.notices()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn watcher(path: &std::path::Path) -> QmpWatcher {
    QmpWatcher {
        address: Endpoint::Unix(path.to_path_buf()),
        vm: VmId::new("vm-a").unwrap(),
        poll_interval: Duration::from_millis(50),
        command_timeout: Duration::from_secs(5),
        probe: false,
    }
}

#[tokio::test]
async fn a_new_qemu_after_a_lost_connection_fails_the_migration_at_once() {
    let path = socket();
    let (hang_up, first_hangs_up) = oneshot::channel();
    let first = tokio::spawn(monitor(path.clone(), active(), Arc::default(), first_hangs_up));
    let recorder = Arc::new(Recorder::default());
    let cancel = CancellationToken::new();
    let watching = tokio::spawn(watcher(&path).run(recorder.clone(), cancel.clone()));

    wait_for(&recorder, "the running migration is followed", |n| {
        n == [Notice::Prepare, Notice::Started]
    })
    .await;
    // QEMU goes away mid-migration and a new one (no migration) takes its socket.
    hang_up.send(()).unwrap();
    first.await.unwrap();
    let (_keep, second_hangs_up) = oneshot::channel();
    let second = tokio::spawn(monitor(path.clone(), json!({}), Arc::default(), second_hangs_up));
    wait_for(&recorder, "the migration is reported failed", |n| {
        n == [Notice::Prepare, Notice::Started, Notice::Failed]
    })
    .await;
    cancel.cancel();
    watching.await.unwrap();
    second.abort();
}

#[tokio::test]
async fn the_same_qemu_back_with_the_migration_active_reports_nothing_new() {
    let path = socket();
    let (hang_up, first_hangs_up) = oneshot::channel();
    let first = tokio::spawn(monitor(path.clone(), active(), Arc::default(), first_hangs_up));
    let recorder = Arc::new(Recorder::default());
    let cancel = CancellationToken::new();
    let watching = tokio::spawn(watcher(&path).run(recorder.clone(), cancel.clone()));
    wait_for(&recorder, "the running migration is followed", |n| {
        n == [Notice::Prepare, Notice::Started]
    })
    .await;
    hang_up.send(()).unwrap();
    first.await.unwrap();
    // The same migration still active on reconnect; it then completes.
    let (hang_up, second_hangs_up) = oneshot::channel();
    let queries = Arc::new(AtomicUsize::new(0));
    let second = tokio::spawn(monitor(path.clone(), active(), queries.clone(), second_hangs_up));
    // The watcher reconnected and asked for the migration's state (the first query), then
    // polled it a few times.
    let started = Instant::now();
    while queries.load(Ordering::Relaxed) < 3 {
        assert!(started.elapsed() < Duration::from_secs(20), "no reconnect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        recorder.notices(),
        vec![Notice::Prepare, Notice::Started],
        "nothing new for the same migration"
    );
    hang_up.send(()).unwrap();
    second.await.unwrap();
    cancel.cancel();
    watching.await.unwrap();
}
