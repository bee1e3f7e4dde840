"""The loads a run puts on a proxy, and what is measured meanwhile:

- closed loop (wrk, one thread): throughput, latency at that throughput, proxy CPU per request;
  over TLS too (keep-alive, or a new connection and a full handshake per request);
- HTTP/2 over TLS (h2load, one thread): the same, with streams multiplexed on a few connections;
- open loop (handover-loadgen): latency at a fixed rate, the same for every proxy;
- idle connections: memory per connection;
- callgrind: user-space instructions per request at a fixed rate, nearly deterministic whatever
  else the machine does.

Every measured run also records the CPU the rest of the machine used ("foreign": neither the proxy,
the backends nor the load generator) and the CPU time the hypervisor stole: both are noise."""

import glob
import json
import os
import re
import resource
import socket
import subprocess
import time

from . import targets
from .system import cpu_seconds, cpu_split, machine_seconds, memory_kib


def parse_wrk(text):
    def duration_ms(value):
        match = re.match(r"([\d.]+)(us|ms|s)", value)
        number, unit = float(match.group(1)), match.group(2)
        return number / 1000 if unit == "us" else number * 1000 if unit == "s" else number

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    p50 = duration_ms(re.search(r"\s50%\s+(\S+)", text).group(1))
    p99 = duration_ms(re.search(r"\s99%\s+(\S+)", text).group(1))
    errors = 0
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if match:
        errors += sum(int(x) for x in match.groups())
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if match:
        errors += int(match.group(1))
    return rps, requests, p50, p99, errors


def measured(command, pids, backend_pids):
    """Runs the load command; returns (its stdout, what the proxy and the machine did meanwhile:
    a function of the request count giving a run's CPU and noise fields)."""
    user_before, system_before = cpu_split(pids)
    cpu_before = user_before + system_before
    busy_before, steal_before = machine_seconds()
    backend_before = cpu_seconds(backend_pids)
    ru_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.time() - started
    ru_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user_after, system_after = cpu_split(pids)
    cpu = user_after + system_after - cpu_before
    user_share = (user_after - user_before) / cpu if cpu > 0 else 0.0
    load_cpu = (ru_after.ru_utime - ru_before.ru_utime) + (ru_after.ru_stime - ru_before.ru_stime)
    busy_after, steal_after = machine_seconds()
    backend = cpu_seconds(backend_pids) - backend_before
    foreign = max(0.0, (busy_after - busy_before) - cpu - load_cpu - backend) / elapsed
    steal = (steal_after - steal_before) / elapsed

    def cpu_fields(requests):
        return {
            "user_share": user_share,
            "proxy_cpu_cores": cpu / elapsed,
            "cpu_us_per_request": cpu / max(requests, 1) * 1e6,
            "foreign_cores": foreign,
            "steal_cores": steal,
        }

    return out.stdout, cpu_fields


def loadgen_command(loadgen, rate, connections, seconds, warmup):
    """handover-loadgen at `rate` requests/s over `connections` to the HTTP listener."""
    return [loadgen, "--target", f"127.0.0.1:{targets.HTTP_PORT}", "--rate", str(rate),
            "--connections", str(connections), "--seconds", str(seconds), "--warmup", str(warmup)]


def run_wrk(port, connections, extra, seconds, pids, backend_pids, scheme="http"):
    """Closed loop: `wrk -t1 -c<connections>` for `seconds`, after a second of warm-up."""
    url = f"{scheme}://127.0.0.1:{port}/"
    subprocess.run(["wrk", "-t1", f"-c{connections}", "-d1s", *extra, url], capture_output=True, check=False)
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *extra, url]
    text, cpu_fields = measured(command, pids, backend_pids)
    rps, requests, p50, p99, errors = parse_wrk(text)
    return {"rps": rps, "requests": requests, "p50_ms": p50, "p99_ms": p99, "errors": errors,
            **cpu_fields(requests)}


def run_h2load(port, connections, streams, seconds, pids, backend_pids, work):
    """HTTP/2 over TLS: `h2load -t1 -c<connections> -m<streams>` for `seconds` after a second of
    warm-up; latencies from its per-request log."""
    log_file = os.path.join(work, "h2load.log")
    command = ["h2load", "-t1", f"-c{connections}", f"-m{streams}", f"-D{seconds}", "--warm-up-time=1",
               f"--log-file={log_file}", f"https://127.0.0.1:{port}/"]
    text, cpu_fields = measured(command, pids, backend_pids)
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text).group(1))
    total, _, _, succeeded, failed, errored = (int(x) for x in re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
        text).groups())
    ok = int(re.search(r"status codes: (\d+) 2xx", text).group(1))
    latencies = sorted(int(line.split()[2]) / 1000 for line in open(log_file) if len(line.split()) >= 3)
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0
    return {"rps": rps, "requests": succeeded, "p50_ms": pick(0.5), "p99_ms": pick(0.99),
            "errors": failed + errored + (succeeded - ok), **cpu_fields(succeeded)}


def run_open(loadgen, rate, connections, seconds, pids, backend_pids):
    """Open loop: `rate` requests/s over `connections` keep-alive connections (a second of warm-up
    is part of the command and not counted in its latencies)."""
    command = loadgen_command(loadgen, rate, connections, seconds, 1)
    text, cpu_fields = measured(command, pids, backend_pids)
    report = json.loads(text)
    # CPU over the whole command (warm-up included) divided by every request it sent.
    sent = rate * (seconds + 1)
    return {"rps": report["achieved_rate"], "requests": report["requests"], "p50_ms": report["p50_ms"],
            "p99_ms": report["p99_ms"], "p999_ms": report["p999_ms"], "errors": report["errors"],
            **cpu_fields(sent)}


def run_idle(pids, count):
    """Opens `count` idle connections to the HTTP listener; returns KiB of proxy memory per connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    time.sleep(0.5)
    before = memory_kib(pids, "VmRSS")
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.connect(("127.0.0.1", targets.HTTP_PORT))
            sockets.append(s)
        time.sleep(2)
        # Every connection must still be open (a proxy that dropped them saved no memory).
        alive = 0
        for s in sockets:
            s.setblocking(False)
            try:
                alive += 0 if s.recv(1) == b"" else 1
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
        after = memory_kib(pids, "VmRSS")
    finally:
        for s in sockets:
            s.close()
    return {
        "connections": count,
        "alive": alive,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_connection": (after - before) / count,
        "foreign_cores": 0.0,
        "steal_cores": 0.0,
    }


# Functions of handover that exist for migration awareness on the per-request path: counting the
# request in flight (drain status), picking from the weighted snapshot, passive health with
# migration tolerance. Their inclusive cost is reported beside the total.
MIGRATION_AWARE = [
    "handover_proxy::backend::BackendRuntime::track",
    "<handover_proxy::backend::ActiveGuard as core::ops::drop::Drop>::drop",
    "handover_proxy::snapshot::PoolSnapshot::pick",
    "handover_proxy::pools::Pool::record_traffic",
]


def callgrind_totals(path):
    """Total instructions in a callgrind dump, and inclusive instructions per function name."""
    total = 0
    with open(path) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                total = int(line.split()[1])
    annotated = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", "--auto=no", path],
        capture_output=True, text=True, check=False,
    ).stdout
    inclusive = {}
    for line in annotated.splitlines():
        match = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+\S*?:(.*)$", line)
        if match:
            name = re.sub(r"\s*\[[^\]]*\]\s*$", "", match.group(2)).strip()
            inclusive[name] = inclusive.get(name, 0) + int(match.group(1).replace(",", ""))
    return total, inclusive


def run_instructions(kind, binary, work, draining, loadgen, rate=2000, seconds=5):
    """User-space instructions per request under callgrind, at the same fixed rate for every proxy
    (open loop, 8 keep-alive connections): the count of requests and the wall time are then the
    same for all, so per-request work and the proxies' timed housekeeping weigh alike. The counters
    are zeroed after a warm-up and dumped after the measured run."""
    for old in glob.glob(os.path.join(work, "callgrind.*")):
        os.remove(old)
    out = os.path.join(work, "callgrind.%p")
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    proc = targets.start(kind, binary, 1, work, draining=draining, valgrind=valgrind)
    try:
        subprocess.run(loadgen_command(loadgen, rate, 8, 2, 0), capture_output=True, check=False)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True, check=False)
        text = subprocess.run(loadgen_command(loadgen, rate, 8, seconds, 0), capture_output=True,
                              text=True).stdout
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=False)
        time.sleep(1)
    finally:
        targets.stop(proc)
    answered = json.loads(text)
    requests = answered["requests"] + answered["errors"]
    dumps = sorted(glob.glob(os.path.join(work, f"callgrind.{proc.pid}.*")))
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump for {kind} (see {work}/{kind}.log)")
    total, inclusive = callgrind_totals(dumps[-1])
    aware = {name: inclusive.get(name, 0) for name in MIGRATION_AWARE} if kind == "handover" else {}
    return {
        "requests": requests,
        "errors": answered["errors"],
        "rate": rate,
        "instructions_per_request": total / max(requests, 1),
        "migration_aware_per_request": {k: v / max(requests, 1) for k, v in aware.items()},
    }
