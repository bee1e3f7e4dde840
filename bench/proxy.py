#!/usr/bin/env python3
"""Side-by-side data-plane benchmark: handover, HAProxy and nginx on this machine, in one run.

Every proxy gets the same CPU budget (1 worker/thread, then 2), the same three backends (one nginx
worker serving a 99-byte body on three ports) and the same wrk load. Runs alternate A B C, A B C
(rotated each repetition) so that drift spreads evenly; each run starts the proxy fresh. Per run:
req/s, p50/p99 (wrk), the proxy's CPU (utime+stime of all its processes from /proc) per request,
its peak RSS, and the CPU the rest of the machine used meanwhile ("foreign"; a run waits for a
quiet machine first and is repeated once when it was noisy).

Usage: bench/proxy.py [--reps 3] [--seconds 10] [--scenarios a,b] [--targets a,b] [--out DIR]
"""

import argparse
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
HANDOVER = os.path.join(CHECKOUT, "target", "release", "handover")
BACKENDS = [18001, 18002, 18003]
HTTP_PORT = 18080
TCP_PORT = 18090
CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY = "x" * 98

SCENARIOS = {
    # name: (listener, wrk connections, extra wrk args, description)
    "l7-keepalive-c32": ("http", 32, [], "L7 keep-alive, 32 connections"),
    "l7-keepalive-c128": ("http", 128, [], "L7 keep-alive, 128 connections"),
    "l7-close-c32": ("http", 32, ["-H", "Connection: close"], "L7 Connection: close, 32 connections"),
    "l4-keepalive-c32": ("tcp", 32, [], "L4 keep-alive, 32 connections"),
    "l4-close-c32": ("tcp", 32, ["-H", "Connection: close"], "L4 new connection per request, 32 connections"),
    "l7-drain-c32": ("http", 32, [], "L7 keep-alive, 32 connections, one of the three backends draining"),
    "idle-10k": ("http", 10000, None, "10,000 idle client connections (memory per connection)"),
}

# Scenarios that put one backend (vm-0 / s0 / the first server) in drain before the load.
DRAINING = {"l7-drain-c32"}

# Idle client connections held open by the memory scenario.
IDLE = "idle-10k"


def log(message):
    print(message, file=sys.stderr, flush=True)


# --- processes and /proc ---------------------------------------------------------------------


def children_of(pid):
    """pid and all its descendants."""
    found = [pid]
    try:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    if int(fields[1]) == pid:
                        found.extend(children_of(int(entry)))
                except OSError:
                    pass
    except OSError:
        pass
    return found


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / CLK_TCK


def memory_kib(pids, field):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def machine_busy_seconds():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / CLK_TCK


def wait_quiet(limit=0.15, longest=60):
    """Waits until the machine uses less than `limit` cores (at most `longest` seconds)."""
    started = time.time()
    while time.time() - started < longest:
        before = machine_busy_seconds()
        time.sleep(1)
        if machine_busy_seconds() - before < limit:
            return
    log(f"  (machine still busy after {longest} s; measuring anyway)")


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


# --- configurations --------------------------------------------------------------------------


def backend_conf(work):
    servers = "\n".join(
        f'  server {{ listen 127.0.0.1:{p} backlog=4096; location / {{ return 200 "{BODY}\\n"; }} }}'
        for p in BACKENDS
    )
    return f"""worker_processes 1; daemon off; pid {work}/backend.pid; worker_rlimit_nofile 20000;
error_log {work}/backend.err;
events {{ worker_connections 16384; }}
http {{
  default_type text/plain; keepalive_requests 10000000; keepalive_timeout 65s; access_log off;
{servers}
}}
"""


def nginx_conf(work, workers, draining=False):
    # nginx has no runtime API in its free version: a draining server is marked `down`.
    upstream = " ".join(
        f"server 127.0.0.1:{p}{' down' if draining and i == 0 else ''};" for i, p in enumerate(BACKENDS)
    )
    return f"""load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes {workers}; daemon off; pid {work}/nginx.pid; worker_rlimit_nofile 20000;
error_log {work}/nginx.err;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  upstream be {{ {upstream} keepalive 64; keepalive_requests 10000000; }}
  server {{ listen 127.0.0.1:{HTTP_PORT} backlog=4096;
    location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}
}}
stream {{
  upstream be_tcp {{ {upstream} }}
  server {{ listen 127.0.0.1:{TCP_PORT} backlog=4096; proxy_pass be_tcp; }}
}}
"""


def haproxy_conf(workers, work):
    servers = "\n".join(f"    server s{i} 127.0.0.1:{p}" for i, p in enumerate(BACKENDS))
    # 10,100 connections need 20,214 descriptors by HAProxy's count (two per connection) but idle
    # client connections use one each: this machine's hard limit of 20,000 is enough once HAProxy
    # is told not to refuse to start ("no strict-limits").
    return f"""global
    nbthread {workers}
    maxconn 10100
    ulimit-n 20000
    no strict-limits
    stats socket {work}/haproxy.sock mode 600 level admin
defaults
    timeout connect 5s
    timeout client 60s
    timeout server 30s
    maxconn 10100
frontend fe_http
    mode http
    bind 127.0.0.1:{HTTP_PORT}
    default_backend be
backend be
    mode http
    balance roundrobin
    http-reuse always
{servers}
frontend fe_tcp
    mode tcp
    bind 127.0.0.1:{TCP_PORT}
    default_backend be_tcp
backend be_tcp
    mode tcp
    balance roundrobin
{servers}
"""


def handover_conf():
    backends = "".join(
        f'\n[[pools.{pool}.backends]]\naddress = "127.0.0.1:{p}"\nvm = "vm-{i}"\n'
        for pool in ("web", "tcp")
        for i, p in enumerate(BACKENDS)
    )
    return f"""[control]
bind = "127.0.0.1:18099"

[[listeners]]
name = "web"
kind = "http"
bind = "127.0.0.1:{HTTP_PORT}"
pool = "web"

[[listeners]]
name = "tcp"
kind = "tcp"
bind = "127.0.0.1:{TCP_PORT}"
pool = "tcp"

[pools.web]
algorithm = "round_robin"

[pools.tcp]
algorithm = "round_robin"
{backends}"""


def start_proxy(target, workers, work, draining=False):
    """Starts a proxy (with its first backend draining if asked); returns the Popen."""
    if target == "handover":
        path = os.path.join(work, "handover.toml")
        with open(path, "w") as f:
            f.write(handover_conf())
        command = [HANDOVER, "run", "--config", path, "--workers", str(workers)]
        env = dict(os.environ, RUST_LOG="warn")
    elif target == "haproxy":
        path = os.path.join(work, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(haproxy_conf(workers, work))
        command = ["haproxy", "-db", "-f", path]
        env = None
    else:
        path = os.path.join(work, "nginx.conf")
        with open(path, "w") as f:
            f.write(nginx_conf(work, workers, draining))
        command = ["nginx", "-c", path, "-e", os.path.join(work, "nginx.err")]
        env = None
    proc = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(work, f"{target}.log"), "w"),
        env=env,
        start_new_session=True,
    )
    if not (wait_port(HTTP_PORT) and wait_port(TCP_PORT)):
        stop(proc)
        raise RuntimeError(f"{target} did not listen (see {work}/{target}.log)")
    time.sleep(0.3)
    if draining:
        drain_first_backend(target, work)
    return proc


def drain_first_backend(target, work):
    """Puts the first backend in drain: handover through its control API (a migration prepare),
    HAProxy through its runtime API. (nginx was started with it marked down.)"""
    if target == "handover":
        request = urllib.request.Request(
            "http://127.0.0.1:18099/v1/vms/vm-0/migration",
            data=json.dumps({"phase": "prepare"}).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as reply:
            if reply.status != 200:
                raise RuntimeError(f"handover refused the prepare: {reply.status}")
    elif target == "haproxy":
        with socket.socket(socket.AF_UNIX) as control:
            control.connect(os.path.join(work, "haproxy.sock"))
            control.sendall(b"set server be/s0 state drain\n")
            answer = control.recv(4096).decode().strip()
            if answer:
                raise RuntimeError(f"HAProxy refused the drain: {answer}")


def stop(proc):
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Ports must be free for the next proxy.
    deadline = time.time() + 5
    while time.time() < deadline and (wait_port(HTTP_PORT, 0.05) or wait_port(TCP_PORT, 0.05)):
        time.sleep(0.1)


# --- measurements ----------------------------------------------------------------------------


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


def run_wrk(scenario, seconds, pids):
    listener, connections, extra, _ = SCENARIOS[scenario]
    port = HTTP_PORT if listener == "http" else TCP_PORT
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *extra, f"http://127.0.0.1:{port}/"]
    # A second of warm-up (connections, pools), not measured.
    subprocess.run(["wrk", "-t1", f"-c{connections}", "-d1s", *extra, f"http://127.0.0.1:{port}/"],
                   capture_output=True, check=False)
    cpu_before, busy_before = cpu_seconds(pids), machine_busy_seconds()
    backend_before = cpu_seconds(BACKEND_PIDS)
    ru_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.time() - started
    ru_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu_seconds(pids) - cpu_before
    wrk_cpu = (ru_after.ru_utime - ru_before.ru_utime) + (ru_after.ru_stime - ru_before.ru_stime)
    busy = machine_busy_seconds() - busy_before
    backend = cpu_seconds(BACKEND_PIDS) - backend_before
    rps, requests, p50, p99, errors = parse_wrk(out.stdout)
    return {
        "rps": rps,
        "requests": requests,
        "p50_ms": p50,
        "p99_ms": p99,
        "errors": errors,
        "proxy_cpu_cores": cpu / elapsed,
        "cpu_us_per_request": cpu / max(requests, 1) * 1e6,
        "foreign_cores": max(0.0, busy - cpu - wrk_cpu - backend) / elapsed,
    }


# The backend nginx's processes (its CPU is not foreign).
BACKEND_PIDS = []


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
            s.connect(("127.0.0.1", HTTP_PORT))
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
    }


# --- the benchmark ---------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--targets", default="handover-1,haproxy-1,nginx-1,handover-2,haproxy-2,nginx-2")
    parser.add_argument("--out", default=os.path.join(CHECKOUT, "target", "bench", "proxy"))
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    targets = args.targets.split(",")
    for s in scenarios:
        if s not in SCENARIOS:
            sys.exit(f"--scenarios: unknown {s!r} (known: {', '.join(SCENARIOS)})")
    for t in targets:
        name, _, workers = t.partition("-")
        if name not in ("handover", "haproxy", "nginx") or workers not in ("1", "2"):
            sys.exit(f"--targets: {t!r} is not handover|haproxy|nginx-1|2")
    # Every process started here may open as many files as this machine allows.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    busy = [p for p in BACKENDS + [HTTP_PORT, TCP_PORT] if wait_port(p, 0.1)]
    if busy:
        sys.exit(f"ports {busy} are already in use on 127.0.0.1; stop what listens there first")
    work = os.path.join(args.out, "work")
    os.makedirs(work, exist_ok=True)

    with open(os.path.join(work, "backend.conf"), "w") as f:
        f.write(backend_conf(work))
    backend = subprocess.Popen(["nginx", "-c", os.path.join(work, "backend.conf"), "-e", os.path.join(work, "backend.err")],
                               start_new_session=True)
    for p in BACKENDS:
        if not wait_port(p):
            sys.exit(f"the backend nginx did not listen on {p}")
    BACKEND_PIDS.extend(children_of(backend.pid))

    versions = {
        "handover": subprocess.run([HANDOVER, "--version"], capture_output=True, text=True).stdout.strip(),
        "haproxy": subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()[0],
        "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0],
    }
    machine = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "cores": os.cpu_count(),
        "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
        "kernel": os.uname().release,
    }
    runs = []
    total = args.reps * len(scenarios) * len(targets)
    done = 0
    try:
        for rep in range(args.reps):
            for scenario in scenarios:
                order = targets[rep % len(targets):] + targets[:rep % len(targets)]
                for target in order:
                    done += 1
                    name, _, workers = target.partition("-")
                    best = None
                    for attempt in range(2):
                        wait_quiet()
                        proc = start_proxy(name, int(workers), work, scenario in DRAINING)
                        try:
                            pids = children_of(proc.pid)
                            if scenario == IDLE:
                                result = run_idle(pids, SCENARIOS[scenario][1])
                                result["foreign_cores"] = 0.0
                            else:
                                result = run_wrk(scenario, args.seconds, pids)
                            result["peak_rss_kib"] = memory_kib(children_of(proc.pid), "VmHWM")
                        finally:
                            stop(proc)
                        if best is None or result.get("foreign_cores", 0) < best.get("foreign_cores", 0):
                            best = result
                        if result.get("foreign_cores", 0) <= 0.2:
                            break
                        log(f"  noisy run ({result['foreign_cores']:.2f} foreign cores); once more")
                    best.update({"scenario": scenario, "target": target, "rep": rep})
                    runs.append(best)
                    if scenario == IDLE:
                        log(f"[{done}/{total}] {scenario} {target}: {best['kib_per_connection']:.2f} KiB per connection "
                            f"({best['alive']} of {best['connections']} open)")
                    else:
                        log(f"[{done}/{total}] {scenario} {target}: {best['rps']:.0f} req/s, p99 {best['p99_ms']:.2f} ms, "
                            f"{best['cpu_us_per_request']:.1f} µs CPU/req, {best['errors']} errors")
    finally:
        stop(backend)

    summary = summarise(runs, scenarios, targets)
    report = {"machine": machine, "versions": versions, "reps": args.reps, "seconds": args.seconds,
              "runs": runs, "summary": summary}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(report, f, indent=1)
    table = markdown(report)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table)
    print(table)


def summarise(runs, scenarios, targets):
    summary = []
    for scenario in scenarios:
        for target in targets:
            rs = [r for r in runs if r["scenario"] == scenario and r["target"] == target]
            if not rs:
                continue
            median = lambda key: statistics.median(r[key] for r in rs)
            spread = lambda key: (min(r[key] for r in rs), max(r[key] for r in rs))
            row = {"scenario": scenario, "target": target, "runs": len(rs), "peak_rss_kib": median("peak_rss_kib")}
            if scenario == IDLE:
                row.update(kib_per_connection=median("kib_per_connection"),
                           kib_per_connection_range=spread("kib_per_connection"),
                           alive=min(r["alive"] for r in rs))
            else:
                row.update(rps=median("rps"), p50_ms=median("p50_ms"), p99_ms=median("p99_ms"),
                           cpu_us=median("cpu_us_per_request"), cpu_us_range=spread("cpu_us_per_request"),
                           errors=sum(r["errors"] for r in rs), foreign=max(r["foreign_cores"] for r in rs))
            summary.append(row)
    return summary


def markdown(report):
    m, v = report["machine"], report["versions"]
    lines = [
        f"{m['date']}, {m['cores']} cores ({m['cpu']}), kernel {m['kernel']}; {v['handover']}, {v['haproxy']}, "
        f"{v['nginx']}, {v['wrk']}. Medians of {report['reps']} interleaved runs of {report['seconds']} s; "
        "CPU µs/req = the proxy's user+system CPU ÷ requests (range over runs); ratios against the same worker count.",
        "",
        "| scenario | proxy | workers | req/s | p50 ms | p99 ms | CPU µs/req | peak RSS MiB | vs HAProxy | vs nginx | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["scenario"], r["target"]): r for r in report["summary"]}
    for r in report["summary"]:
        name, _, workers = r["target"].partition("-")
        if r["scenario"] == IDLE:
            key = "kib_per_connection"
            value = f"{r[key]:.2f} KiB/conn"
        else:
            key = "cpu_us"
            low, high = r["cpu_us_range"]
            value = f"{r[key]:.1f} ({low:.1f}–{high:.1f})"

        def ratio(other):
            o = by.get((r["scenario"], f"{other}-{workers}"))
            if not o or name == other or not o[key]:
                return "–"
            return f"{r[key] / o[key]:.2f}×"

        if r["scenario"] == IDLE:
            lines.append(f"| {r['scenario']} | {name} | {workers} | – | – | – | {value} | {r['peak_rss_kib'] / 1024:.1f} | "
                         f"{ratio('haproxy')} | {ratio('nginx')} | {SCENARIOS[r['scenario']][1] - r['alive']} closed |")
        else:
            lines.append(f"| {r['scenario']} | {name} | {workers} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                         f"{value} | {r['peak_rss_kib'] / 1024:.1f} | {ratio('haproxy')} | {ratio('nginx')} | {r['errors']} |")
    drain_lines = []
    for r in report["summary"]:
        if r["scenario"] not in DRAINING:
            continue
        plain = by.get(("l7-keepalive-c32", r["target"]))
        if plain:
            drain_lines.append(f"{r['target']} {r['cpu_us'] / plain['cpu_us']:.2f}×")
    if drain_lines:
        lines += ["", "CPU per request with one backend draining ÷ without (l7-drain-c32 ÷ l7-keepalive-c32): "
                  + ", ".join(drain_lines) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
