#!/usr/bin/env python3
"""System calls per request of handover, HAProxy and nginx, counted by the kernel.

Each proxy runs with one worker, the configuration and backends of bench/proxy, under
`wrk -t1 -c32` for a few seconds per scenario, while `perf stat` counts every system call its
processes make (tracepoints `raw_syscalls:sys_enter` and `syscalls:sys_enter_*`). Printed: calls
per request, in all and by name (names under 0.005 per request left out). The counts say where a
proxy's kernel time goes; they barely move between runs.

Usage: bench/syscalls.py [--seconds 4] [--bin-dir target/release] [--out DIR]
"""

import argparse
import os
import re
import shutil
import subprocess
import sys

from proxylib import targets
from proxylib.system import children_of

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)

SCENARIOS = {
    "l7-keepalive-c32": (targets.HTTP_PORT, []),
    "l7-close-c32": (targets.HTTP_PORT, ["-H", "Connection: close"]),
    "l4-keepalive-c32": (targets.TCP_PORT, []),
    "l4-close-c32": (targets.TCP_PORT, ["-H", "Connection: close"]),
}
PROXIES = ["handover", "haproxy", "nginx"]


def count(pids, port, extra, seconds):
    """Runs wrk against `port` while perf counts the system calls of `pids`; returns
    (requests, {event: count})."""
    out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"handover-syscalls-{os.getpid()}.csv")
    perf = subprocess.Popen(
        ["perf", "stat", "-x,", "-o", out, "-e", "raw_syscalls:sys_enter,syscalls:sys_enter_*",
         "-p", ",".join(str(p) for p in pids)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wrk = subprocess.run(["wrk", "-t1", "-c32", f"-d{seconds}s", *extra, f"http://127.0.0.1:{port}/"],
                             capture_output=True, text=True, check=False).stdout
    finally:
        perf.send_signal(2)  # SIGINT: perf writes its counts and exits
        perf.wait(timeout=30)
    match = re.search(r"^\s*(\d+) requests in", wrk, re.M)
    if not match:
        raise RuntimeError(f"wrk printed no request count:\n{wrk}")
    counts = {}
    with open(out) as f:
        for line in f:
            fields = line.strip().split(",")
            if len(fields) > 2 and fields[0].isdigit():
                counts[fields[2].split(":", 1)[-1]] = int(fields[0])
    os.remove(out)
    return int(match.group(1)), counts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--bin-dir", default=os.path.join(CHECKOUT, "target", "release"))
    parser.add_argument("--out", default=os.path.join(CHECKOUT, "target", "bench", "syscalls"))
    args = parser.parse_args()
    binary = os.path.join(args.bin_dir, "handover")
    if not os.access(binary, os.X_OK):
        sys.exit(f"--bin-dir: no executable handover in {args.bin_dir} (cargo build --release -p handover)")
    missing = [tool for tool in ("perf", "wrk", "haproxy", "nginx") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"bench/syscalls.py needs {', '.join(missing)} (Debian: linux-perf wrk haproxy nginx "
                 "libnginx-mod-stream)")
    if args.seconds < 1:
        sys.exit("--seconds must be at least 1")
    work = os.path.join(args.out, "work")
    os.makedirs(work, exist_ok=True)
    backend, _ = targets.start_backends(work)
    rows = []
    try:
        for scenario, (port, extra) in SCENARIOS.items():
            for kind in PROXIES:
                proc = targets.start(kind, binary if kind == "handover" else None, 1, work)
                try:
                    requests, counts = count(children_of(proc.pid), port, extra, args.seconds)
                finally:
                    targets.stop(proc)
                per = {name: n / max(requests, 1) for name, n in counts.items()}
                rows.append((scenario, kind, requests, per))
                print(f"{scenario} {kind}: {per.get('sys_enter', 0):.2f} system calls per request", file=sys.stderr)
    finally:
        targets.stop(backend)
    lines = ["| scenario | proxy | requests | system calls/request | by name (per request) |", "|---|---|---|---|---|"]
    for scenario, kind, requests, per in rows:
        named = ", ".join(f"{name.removeprefix('sys_enter_')} {n:.2f}" for name, n in
                          sorted(per.items(), key=lambda kv: -kv[1]) if name != "sys_enter" and n >= 0.005)
        lines.append(f"| {scenario} | {kind} | {requests} | {per.get('sys_enter', 0):.2f} | {named} |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
