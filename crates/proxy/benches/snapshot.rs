//! Micro-benchmarks of the proxy's per-request work besides the system calls: reading the pool
//! snapshot and picking a backend from it (with a VM draining or not), counting a request in
//! flight to its backend (what drain status reports), parsing and rewriting a request and a
//! response head, and a phase change applied to the running pools (weights solved, a new
//! snapshot swapped in). Run with `cargo bench -p handover-proxy`.

use std::sync::Arc;

use divan::{Bencher, black_box};
use handover_core::model::VmId;
use handover_core::phase::PhaseCommand;
use handover_proxy::backend::{RequestLine, Traffic};
use handover_proxy::buffer::Buffer;
use handover_proxy::http::head::{self, RequestContext, ResponseContext};
use handover_proxy::pools::Pools;

fn main() {
    divan::main();
}

const SIZES: [usize; 3] = [10, 100, 10_000];

/// Pools with one pool of `n` backends, one VM each, round robin.
fn pools(n: usize) -> Arc<Pools> {
    let mut config =
        String::from("[control]\nbind = \"127.0.0.1:0\"\n\n[pools.web]\nalgorithm = \"round_robin\"\n");
    for i in 0..n {
        config.push_str(&format!(
            "\n[[pools.web.backends]]\naddress = \"127.0.{}.{}:80\"\nvm = \"vm-{i}\"\n",
            i / 250,
            1 + i % 250
        ));
    }
    let config = handover_core::config::parse(&config).expect("a valid configuration");
    Pools::new(&config)
}

fn drain(pools: &Pools, vm: &str) {
    pools.apply(
        &VmId::new(vm).expect("a VM name"),
        PhaseCommand::Drain {
            elapsed_ms: 0,
            migrating: false,
            deadline_in_ms: 600_000,
            level: None,
        },
    );
}

/// What every request does before it connects: load the snapshot, pick a backend.
#[divan::bench(args = SIZES)]
fn snapshot_and_pick(bencher: Bencher<'_, '_>, n: usize) {
    let pools = pools(n);
    let pool = pools.pool("web").expect("the pool");
    let mut random = 1u64;
    bencher.bench_local(|| {
        random = handover_core::selection::mix64(random);
        let snapshot = pool.snapshot();
        black_box(snapshot.pick(random, &[]))
    });
}

/// The same with one VM draining: the drained backend is simply absent from the schedule.
#[divan::bench(args = SIZES)]
fn snapshot_and_pick_one_draining(bencher: Bencher<'_, '_>, n: usize) {
    let pools = pools(n);
    drain(&pools, "vm-0");
    let pool = pools.pool("web").expect("the pool");
    let mut random = 1u64;
    bencher.bench_local(|| {
        random = handover_core::selection::mix64(random);
        let snapshot = pool.snapshot();
        black_box(snapshot.pick(random, &[]))
    });
}

/// A notice applied to the data plane: drain then stable again, each a new snapshot.
#[divan::bench(args = SIZES)]
fn phase_change_applied(bencher: Bencher<'_, '_>, n: usize) {
    let pools = pools(n);
    let vm = VmId::new("vm-0").expect("a VM name");
    bencher.bench_local(|| {
        drain(&pools, "vm-0");
        black_box(pools.apply(&vm, PhaseCommand::Stable))
    });
}

/// What every L7 request adds for drain status: counted in flight (a slab entry under the
/// backend's lock, with its request line) and uncounted when done.
#[divan::bench]
fn request_tracked_in_flight(bencher: Bencher<'_, '_>) {
    let pools = pools(3);
    let pool = pools.pool("web").expect("the pool");
    let backend = pool.backends()[0].clone();
    let client = "127.0.0.1:40000".parse().expect("an address");
    let address = "127.0.0.1:80".parse().expect("an address");
    let started = tokio::time::Instant::now();
    bencher.bench_local(|| {
        let guard = backend.track(
            client,
            address,
            Traffic::Http(RequestLine::new("GET", "/")),
            started,
        );
        drop(black_box(guard));
    });
}

/// The request head wrk sends, parsed, checked and rewritten for the backend.
#[divan::bench]
fn request_head_parsed_and_rewritten(bencher: Bencher<'_, '_>) {
    let request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n";
    let context = RequestContext {
        client: "127.0.0.1",
        sticky_cookie: None,
        websocket: true,
    };
    let mut out = Buffer::take();
    bencher.bench_local(|| {
        out.clear();
        black_box(head::parse_request(black_box(request), &context, &mut out).expect("valid"))
    });
}

/// nginx's response head, parsed, checked and rewritten for the client.
#[divan::bench]
fn response_head_parsed_and_rewritten(bencher: Bencher<'_, '_>) {
    let response = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 30 Nov 2026 03:03:59 GMT\r\n\
Content-Type: text/plain\r\nContent-Length: 99\r\nConnection: keep-alive\r\n\r\n";
    let context = ResponseContext {
        is_head: false,
        client_version: 1,
        client_keep_alive: true,
        set_cookie: None,
        upgrade: false,
    };
    let mut out = Buffer::take();
    bencher.bench_local(|| {
        out.clear();
        black_box(head::parse_response(black_box(response), &context, &mut out).expect("valid"))
    });
}
