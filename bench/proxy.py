#!/usr/bin/env python3
"""Side-by-side data-plane benchmark: handover, HAProxy and nginx on this machine, in one run.

Every proxy gets the same CPU budget (1 worker/thread, then 2), the same three backends (one nginx
worker serving a 99-byte body on three ports) and the same load. Runs alternate A B C, A B C
(rotated each repetition) so that drift spreads evenly; each run starts the proxy fresh, on a
quiet machine. A run during which the rest of the machine used more than 0.2 cores, or the
hypervisor stole more than 0.05 cores, is repeated once and the quieter of the two kept.

Scenarios (SCENARIOS below): closed-loop wrk at 32 and 128 keep-alive connections, a new
connection per request (L7 and L4), L4 keep-alive, L7 keep-alive with the first backend draining,
an open-loop fixed rate (latency at the same load for everyone), 10,000 idle connections (memory per
connection), user-space instructions per request under callgrind (once; deterministic), and TLS:
keep-alive, a new connection (a full handshake) per request, and HTTP/2 with h2load.

Usage: bench/proxy.py [--reps 3] [--seconds 10] [--rate 15000] [--scenarios a,b] [--targets a,b]
                      [--extra-handover NAME=PATH ...] [--out DIR] [--bin-dir DIR] [--any-load]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from proxylib import load, report, targets
from proxylib.system import children_of, log, memory_kib, wait_port, wait_quiet

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
RELEASE = os.path.join(CHECKOUT, "target", "release")

# name: (kind, description, load parameters)
SCENARIOS = {
    "l7-keepalive-c32": ("wrk", "L7 keep-alive, 32 connections", {"port": targets.HTTP_PORT, "connections": 32}),
    "l7-keepalive-c128": ("wrk", "L7 keep-alive, 128 connections", {"port": targets.HTTP_PORT, "connections": 128}),
    "l7-close-c32": ("wrk", "L7 Connection: close, 32 connections",
                     {"port": targets.HTTP_PORT, "connections": 32, "extra": ["-H", "Connection: close"]}),
    "l4-keepalive-c32": ("wrk", "L4 keep-alive, 32 connections", {"port": targets.TCP_PORT, "connections": 32}),
    "l4-close-c32": ("wrk", "L4 new connection per request, 32 connections",
                     {"port": targets.TCP_PORT, "connections": 32, "extra": ["-H", "Connection: close"]}),
    "l7-drain-c32": ("wrk", "L7 keep-alive, 32 connections, the first of three backends draining",
                     {"port": targets.HTTP_PORT, "connections": 32, "draining": True}),
    "l7-rate": ("open", "L7 keep-alive, open loop at a fixed rate over 32 connections", {"connections": 32}),
    "idle-10k": ("idle", "10,000 idle client connections (memory per connection)", {"count": 10000}),
    "tls-keepalive-c32": ("wrk", "TLS keep-alive (HTTP/1.1), 32 connections",
                          {"port": targets.TLS_PORT, "connections": 32, "scheme": "https"}),
    "tls-handshake-c32": ("wrk", "TLS, a new connection and full handshake per request, 32 connections",
                          {"port": targets.TLS_PORT, "connections": 32, "scheme": "https",
                           "extra": ["-H", "Connection: close"]}),
    "h2-c8-m16": ("h2load", "HTTP/2 over TLS, 8 connections × 16 concurrent streams (h2load)",
                  {"port": targets.TLS_PORT, "connections": 8, "streams": 16}),
    "instructions": ("callgrind", "user-space instructions per L7 request", {}),
}


def versions(binaries):
    handover = subprocess.run([binaries["handover"], "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "handover": handover,
        "haproxy": subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()[0],
        "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0],
        "h2load": (subprocess.run(["h2load", "--version"], capture_output=True, text=True).stdout.strip()
                   if subprocess.run(["sh", "-c", "command -v h2load"], capture_output=True).returncode == 0
                   else "h2load not installed"),
    }


def machine():
    return {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "cores": os.cpu_count(),
        "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
        "kernel": os.uname().release,
    }


def kind_of(name, binaries):
    """'handover' for handover and any extra handover binary, else the proxy's own name."""
    return "handover" if name in binaries else name


def one_run(scenario, target, args, work, binaries, backend_pids):
    """Measures one (scenario, target) once; returns the result dict."""
    kind, _, params = SCENARIOS[scenario]
    name, workers = report.split(target)
    proxy = kind_of(name, binaries)
    binary = binaries.get(name)
    proc = targets.start(proxy, binary, int(workers), work, draining=params.get("draining", False))
    try:
        pids = children_of(proc.pid)
        if kind == "idle":
            result = load.run_idle(pids, params["count"])
        elif kind == "h2load":
            result = load.run_h2load(params["port"], params["connections"], params["streams"], args.seconds,
                                     pids, backend_pids, work)
        elif kind == "open":
            loadgen = os.path.join(args.bin_dir, "handover-loadgen")
            result = load.run_open(loadgen, args.rate, params["connections"], args.seconds, pids, backend_pids)
        else:
            result = load.run_wrk(params["port"], params["connections"], params.get("extra", []),
                                  args.seconds, pids, backend_pids, params.get("scheme", "http"))
        result["peak_rss_kib"] = memory_kib(children_of(proc.pid), "VmHWM")
    finally:
        targets.stop(proc)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rate", type=int, default=15000, help="requests/s of the open-loop scenario")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--targets", default="handover-1,haproxy-1,nginx-1,handover-2,haproxy-2,nginx-2")
    parser.add_argument("--extra-handover", action="append", default=[], metavar="NAME=PATH",
                        help="another handover binary to measure as target NAME-1/NAME-2 (an A/B)")
    parser.add_argument("--out", default=os.path.join(CHECKOUT, "target", "bench", "proxy"))
    parser.add_argument("--bin-dir", default=RELEASE, help="where handover and handover-loadgen are")
    parser.add_argument("--any-load", action="store_true",
                        help="measure at once even on a busy machine (no wait for quiet, no repeat of a "
                             "noisy run): checks that the benchmark works; its figures mean little")
    args = parser.parse_args()

    binaries = {"handover": os.path.join(args.bin_dir, "handover")}
    for name, path in (("handover", binaries["handover"]), ("handover-loadgen", os.path.join(args.bin_dir, "handover-loadgen"))):
        if not os.access(path, os.X_OK):
            sys.exit(f"--bin-dir: no executable {name} in {args.bin_dir} (build it: cargo build --release -p {name})")
    for extra in args.extra_handover:
        name, _, path = extra.partition("=")
        if not name or not path or not os.access(path, os.X_OK) or name in ("haproxy", "nginx", "handover"):
            sys.exit(f"--extra-handover: {extra!r} is not NAME=PATH of an executable (NAME not a proxy's name)")
        binaries[name] = path
    scenarios = args.scenarios.split(",")
    target_list = args.targets.split(",")
    for s in scenarios:
        if s not in SCENARIOS:
            sys.exit(f"--scenarios: unknown {s!r} (known: {', '.join(SCENARIOS)})")
    for t in target_list:
        name, workers = report.split(t)
        if name not in ("haproxy", "nginx", *binaries) or workers not in ("1", "2"):
            sys.exit(f"--targets: {t!r} is not NAME-1 or NAME-2 with NAME one of handover, haproxy, nginx"
                     + "".join(f", {n}" for n in binaries if n != "handover"))
    if args.reps < 1 or args.seconds < 1 or args.rate < 1:
        sys.exit("--reps, --seconds and --rate must be at least 1")

    # Every process started here may open as many files as this machine allows.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    busy = [p for p in targets.BACKENDS + [targets.HTTP_PORT, targets.TCP_PORT, targets.TLS_PORT, targets.CONTROL_PORT]
            if wait_port(p, 0.1)]
    if busy:
        sys.exit(f"ports {busy} are already in use on 127.0.0.1; stop what listens there first")
    work = os.path.join(args.out, "work")
    os.makedirs(work, exist_ok=True)
    backend, backend_pids = targets.start_backends(work)

    runs = []
    measured = [s for s in scenarios if SCENARIOS[s][0] != "callgrind"]
    total = args.reps * len(measured) * len(target_list)
    done = 0
    try:
        for rep in range(args.reps):
            for scenario in measured:
                order = target_list[rep % len(target_list):] + target_list[:rep % len(target_list)]
                for target in order:
                    done += 1
                    best = None
                    for attempt in range(1 if args.any_load else 2):
                        if not args.any_load:
                            wait_quiet()
                        result = one_run(scenario, target, args, work, binaries, backend_pids)
                        noise = (result["foreign_cores"], result["steal_cores"])
                        if best is None or sum(noise) < best["foreign_cores"] + best["steal_cores"]:
                            best = result
                        if args.any_load or (noise[0] <= 0.2 and noise[1] <= 0.05):
                            break
                        log(f"  noisy run ({noise[0]:.2f} foreign cores, {noise[1]:.2f} stolen); once more")
                    best.update({"scenario": scenario, "target": target, "rep": rep})
                    runs.append(best)
                    if "kib_per_connection" in best:
                        log(f"[{done}/{total}] {scenario} {target}: {best['kib_per_connection']:.2f} KiB per connection "
                            f"({best['alive']} of {best['connections']} open)")
                    else:
                        log(f"[{done}/{total}] {scenario} {target}: {best['rps']:.0f} req/s, p99 {best['p99_ms']:.2f} ms, "
                            f"{best['cpu_us_per_request']:.1f} µs CPU/req, {best['errors']} errors")
        if "instructions" in scenarios:
            proxies = [n for n in dict.fromkeys(report.split(t)[0] for t in target_list)]
            plan = [("instructions", name, False) for name in proxies]
            plan += [("instructions-drain", name, True) for name in proxies if kind_of(name, binaries) == "handover"]
            for i, (scenario, name, draining) in enumerate(plan, 1):
                if not args.any_load:
                    wait_quiet()
                result = load.run_instructions(kind_of(name, binaries), binaries.get(name), work, draining,
                                               os.path.join(args.bin_dir, "handover-loadgen"))
                result.update({"scenario": scenario, "target": f"{name}-1", "rep": 0})
                runs.append(result)
                log(f"[callgrind {i}/{len(plan)}] {scenario} {name}: {result['instructions_per_request']:.0f} "
                    f"instructions per request ({result['requests']} requests)")
    finally:
        targets.stop(backend)

    summary = report.summarise(runs)
    result = {"machine": machine(), "versions": versions(binaries), "reps": args.reps, "seconds": args.seconds,
              "rate": args.rate, "scenarios": {s: SCENARIOS[s][1] for s in scenarios}, "runs": runs,
              "summary": summary}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    table = report.markdown(result)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
