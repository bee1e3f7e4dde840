"""From runs to the summary (medians and ranges per scenario and target) and to the markdown the
README shows: the table, user-space instructions per request, and each goal of the data plane with
its ratio from this run."""

import statistics

# Goals of the data plane: (scenario, metric, other proxy, ratio at most, what); a negative limit
# means "at least" its absolute value (throughput goals).
GOALS = [
    ("l7-keepalive-c32", "cpu_us", "haproxy", 0.8, "L7 keep-alive, 32 connections: CPU per request ≤ 0.8 × HAProxy's"),
    ("l7-keepalive-c128", "cpu_us", "haproxy", 0.8, "L7 keep-alive, 128 connections: CPU per request ≤ 0.8 × HAProxy's"),
    ("l7-rate", "p99_ms", "haproxy", 1.0, "L7 keep-alive at the same fixed rate: p99 ≤ HAProxy's"),
    ("l4-keepalive-c32", "cpu_us", "nginx", 0.9, "L4 keep-alive: CPU per request ≤ 0.9 × nginx stream's"),
    ("l7-close-c32", "cpu_us", "nginx", 1.0, "L7 new connection per request: CPU per request ≤ nginx's"),
    ("l4-close-c32", "cpu_us", "nginx", 1.0, "L4 new connection per request: CPU per request ≤ nginx's"),
    ("idle-10k", "kib_per_connection", "haproxy", 1.0, "memory per idle connection ≤ HAProxy's"),
    ("tls-keepalive-c32", "cpu_us", "haproxy", 0.8, "TLS keep-alive: CPU per request ≤ 0.8 × HAProxy's"),
    ("tls-handshake-c32", "rps", "haproxy", -1.0, "TLS handshakes per second (new connection per request) ≥ HAProxy's"),
]


def summarise(runs):
    """One row per (scenario, target): medians, and the range of the main metric."""
    keys = []
    for run in runs:
        key = (run["scenario"], run["target"])
        if key not in keys:
            keys.append(key)
    summary = []
    for scenario, target in keys:
        rs = [r for r in runs if r["scenario"] == scenario and r["target"] == target]
        median = lambda key: statistics.median(r[key] for r in rs)
        spread = lambda key: (min(r[key] for r in rs), max(r[key] for r in rs))
        row = {"scenario": scenario, "target": target, "runs": len(rs)}
        if "kib_per_connection" in rs[0]:
            row.update(kib_per_connection=median("kib_per_connection"),
                       kib_per_connection_range=spread("kib_per_connection"),
                       alive=min(r["alive"] for r in rs), connections=rs[0]["connections"],
                       peak_rss_kib=median("peak_rss_kib"))
        elif "instructions_per_request" in rs[0]:
            row.update(instructions=median("instructions_per_request"),
                       migration_aware=rs[0]["migration_aware_per_request"],
                       requests=rs[0]["requests"], rate=rs[0]["rate"], errors=sum(r["errors"] for r in rs))
        else:
            row.update(rps=median("rps"), p50_ms=median("p50_ms"), p99_ms=median("p99_ms"),
                       p99_range=spread("p99_ms"),
                       cpu_us=median("cpu_us_per_request"), cpu_us_range=spread("cpu_us_per_request"),
                       user_us=median("cpu_us_per_request") * median("user_share"),
                       errors=sum(r["errors"] for r in rs), peak_rss_kib=median("peak_rss_kib"),
                       foreign=max(r["foreign_cores"] for r in rs), steal=max(r["steal_cores"] for r in rs))
        summary.append(row)
    return summary


def split(target):
    name, _, workers = target.rpartition("-")
    return name, workers


def markdown(report):
    m, v = report["machine"], report["versions"]
    by = {(r["scenario"], r["target"]): r for r in report["summary"]}

    def ratio(row, key, other):
        name, workers = split(row["target"])
        o = by.get((row["scenario"], f"{other}-{workers}"))
        if not o or name == other or not o.get(key):
            return None
        return row[key] / o[key]

    def shown(value):
        return "–" if value is None else f"{value:.2f}×"

    lines = [
        f"{m['date']}, {m['cores']} cores ({m['cpu']}), kernel {m['kernel']}; {v['handover']}, {v['haproxy']}, "
        f"{v['nginx']}, {v['wrk']}, {v.get('h2load', 'h2load')}. Medians of {report['reps']} interleaved runs of {report['seconds']} s "
        "(ranges in brackets); CPU µs/req = the proxy's user+system CPU ÷ requests, \"of which user\" its "
        "user-space part (the rest is the kernel's: TCP on loopback, wake-ups); ratios against the same "
        "worker count; `l7-rate` is open loop at the same fixed rate for every proxy; `tls-handshake-c32` "
        "req/s is TLS handshakes per second; `h2-c8-m16` latencies are h2load's per-request times.",
        "",
        "| scenario | proxy | workers | req/s | p50 ms | p99 ms | CPU µs/req | of which user | peak RSS MiB | vs HAProxy | vs nginx | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["summary"]:
        name, workers = split(r["target"])
        if "kib_per_connection" in r:
            low, high = r["kib_per_connection_range"]
            lines.append(
                f"| {r['scenario']} | {name} | {workers} | – | – | – | {r['kib_per_connection']:.2f} KiB/conn "
                f"({low:.2f}–{high:.2f}) | – | {r['peak_rss_kib'] / 1024:.1f} | "
                f"{shown(ratio(r, 'kib_per_connection', 'haproxy'))} | {shown(ratio(r, 'kib_per_connection', 'nginx'))} | "
                f"{r['connections'] - r['alive']} closed |")
        elif "cpu_us" in r:
            low, high = r["cpu_us_range"]
            p99_low, p99_high = r["p99_range"]
            lines.append(
                f"| {r['scenario']} | {name} | {workers} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                f"({p99_low:.2f}–{p99_high:.2f}) | {r['cpu_us']:.1f} ({low:.1f}–{high:.1f}) | {r['user_us']:.1f} | "
                f"{r['peak_rss_kib'] / 1024:.1f} | {shown(ratio(r, 'cpu_us', 'haproxy'))} | "
                f"{shown(ratio(r, 'cpu_us', 'nginx'))} | {r['errors']} |")

    instructions = [r for r in report["summary"] if "instructions" in r]
    if instructions:
        rate = instructions[0].get("rate", 0)
        lines += ["", f"User-space instructions per request under callgrind (L7 keep-alive, open loop at {rate} "
                  "requests/s over 8 connections, the same for every proxy; counts barely move between runs, "
                  "whatever else the machine does):", "",
                  "| proxy | instructions/request | of which migration-aware bookkeeping | vs HAProxy | vs nginx |",
                  "|---|---|---|---|---|"]
        base = {split(r["target"])[0]: r["instructions"] for r in instructions if r["scenario"] == "instructions"}
        for r in instructions:
            name, _ = split(r["target"])
            label = name + (", first backend draining" if r["scenario"] == "instructions-drain" else "")
            aware = sum(r["migration_aware"].values())
            aware_text = f"{aware:.0f} ({aware / r['instructions'] * 100:.1f} %)" if r["migration_aware"] else "–"
            vs = lambda other: "–" if name == other or other not in base else f"{r['instructions'] / base[other]:.2f}×"
            lines.append(f"| {label} | {r['instructions']:.0f} | {aware_text} | {vs('haproxy')} | {vs('nginx')} |")

    drain = []
    for r in report["summary"]:
        if r["scenario"] == "l7-drain-c32":
            plain = by.get(("l7-keepalive-c32", r["target"]))
            if plain:
                drain.append(f"{r['target']} {r['cpu_us'] / plain['cpu_us']:.2f}×")
    if drain:
        lines += ["", "CPU per request with one backend draining ÷ without (l7-drain-c32 ÷ l7-keepalive-c32): "
                  + ", ".join(drain) + "."]

    goal_lines = []
    for scenario, key, other, limit, what in GOALS:
        for workers in ("1", "2"):
            row = by.get((scenario, f"handover-{workers}"))
            if not row or key not in row:
                continue
            value = ratio(row, key, other)
            if value is None:
                continue
            if limit < 0:
                verdict = "met" if value >= -limit else f"not met, by {(1 - value / -limit) * 100:.1f} %"
            else:
                verdict = "met" if value <= limit else f"not met, by {(value / limit - 1) * 100:.1f} %"
            goal_lines.append(f"- {what} ({workers} worker{'s' if workers == '2' else ''}): {value:.2f}× — {verdict}")
    if goal_lines:
        lines += ["", "Goals, from this run:", ""] + goal_lines
    return "\n".join(lines) + "\n"
