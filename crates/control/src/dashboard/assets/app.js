// handover's dashboard: renders the snapshots the control API pushes on /v1/events.
// No framework and no network beyond this node: the page must work offline.
"use strict";

const WINDOW_MS = 5 * 60 * 1000; // the chart shows the last five minutes
const COLORS = ["#2f6fd1", "#d9822b", "#2e8b57", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d", "#b7950b"];
const samples = []; // {t, shares: {series: share}}
const colorOf = new Map();

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const pct = (x) => (x * 100).toFixed(1) + " %";
const ms = (x) => (x == null ? "–" : x < 1000 ? x + " ms" : (x / 1000).toFixed(1) + " s");
const bytes = (x) => (x == null ? "–" : x >= 1 << 30 ? (x / (1 << 30)).toFixed(2) + " GiB" : (x / (1 << 20)).toFixed(1) + " MiB");
const time = (t) => (t ? new Date(t).toLocaleTimeString() : "–");
const phase = (p) => `<span class="phase ${esc(p)}" data-phase="${esc(p)}">${esc(p)}</span>`;

function color(series) {
  if (!colorOf.has(series)) colorOf.set(series, COLORS[colorOf.size % COLORS.length]);
  return colorOf.get(series);
}

function addSample(sample) {
  if (!sample) return;
  if (samples.length && samples[samples.length - 1].t >= sample.t) return;
  samples.push(sample);
  while (samples.length && samples[0].t < sample.t - WINDOW_MS) samples.shift();
}

function drawChart(now) {
  const svg = $("chart");
  const W = 900, H = 240, left = 40, bottom = 20, top = 8;
  // From the oldest sample (at least a minute, at most five) to now.
  const oldest = samples.length ? samples[0].t : now;
  const span = Math.min(WINDOW_MS, Math.max(60_000, now - oldest));
  const x = (t) => left + ((t - (now - span)) / span) * (W - left - 4);
  let max = 0.0;
  for (const s of samples) for (const v of Object.values(s.shares)) max = Math.max(max, v);
  const scale = max > 0.5 ? 1 : 0.5; // the y axis: 0–50 % or 0–100 %
  const y = (v) => top + (1 - v / scale) * (H - top - bottom);
  let out = "";
  for (let f = 0; f <= scale + 1e-9; f += scale / 5) {
    out += `<line class="grid" x1="${left}" x2="${W}" y1="${y(f)}" y2="${y(f)}"/>`;
    out += `<text class="axis" x="2" y="${y(f) + 4}">${Math.round(f * 100)}%</text>`;
  }
  const step = span > 120_000 ? 60_000 : span > 60_000 ? 30_000 : 10_000;
  for (let back = step; back < span; back += step) {
    out += `<text class="axis" x="${x(now - back) - 12}" y="${H - 4}">-${back >= 60_000 ? back / 60_000 + "m" : back / 1000 + "s"}</text>`;
  }
  const series = new Set();
  for (const s of samples) for (const k of Object.keys(s.shares)) series.add(k);
  let legend = "";
  for (const name of [...series].sort()) {
    const points = samples.filter((s) => name in s.shares).map((s) => `${x(s.t).toFixed(1)},${y(s.shares[name]).toFixed(1)}`);
    if (points.length) out += `<path id="chart-line-${esc(name)}" data-series="${esc(name)}" stroke="${color(name)}" d="M${points.join(" L")}"/>`;
    const last = samples.length ? samples[samples.length - 1].shares[name] : undefined;
    legend += `<div data-series="${esc(name)}"><i style="background:${color(name)}"></i>${esc(name)} <b>${last == null ? "–" : pct(last)}</b></div>`;
  }
  svg.innerHTML = out;
  $("legend").innerHTML = legend;
}

const STEPS = ["draining", "migrating", "ramping", "stable"];

function migrationCard(vm, record, now) {
  const p = vm.progress;
  const at = STEPS.indexOf(vm.phase);
  const stamps = record ? [record.prepared_at, record.started_at, record.ended_at, record.stable_at] : [];
  const steps = STEPS.map((s, i) => `<div class="step ${i < at ? "done" : i === at ? "now" : ""}">${s}<br>${time(stamps[i])}</div>`).join("");
  const share = vm.backends.length ? vm.backends.reduce((a, b) => a + b.share, 0) : 0;
  const active = vm.backends.reduce((a, b) => a + b.active, 0);
  let progress = "<p class=\"quiet\">No progress reported by the hypervisor.</p>";
  if (p) {
    const done = p.total_bytes ? Math.min(1, (p.transferred_bytes || 0) / p.total_bytes) : 0;
    progress = `<div class="bar"><div style="width:${(done * 100).toFixed(1)}%"></div></div>
      <div class="facts">
        <div><span>status</span> ${esc(p.status || "–")}</div>
        <div><span>remaining</span> ${bytes(p.remaining_bytes)}</div>
        <div><span>dirty rate</span> ${p.dirty_pages_rate == null ? "–" : p.dirty_pages_rate + " pages/s"}</div>
        <div><span>passes</span> ${p.passes == null ? "–" : p.passes}</div>
        <div><span>copy</span> ${p.mbps == null ? "–" : p.mbps.toFixed(0) + " Mbit/s"}</div>
        <div><span>expected downtime</span> ${ms(p.expected_downtime_ms)}</div>
      </div>`;
  }
  const deadline = vm.deadline_at ? ` · deadline in ${ms(Math.max(0, vm.deadline_at - now))}` : "";
  return `<div class="card" data-vm="${esc(vm.vm)}">
    <div class="title">${esc(vm.vm)} ${phase(vm.phase)}<span class="quiet">share ${pct(share)} · ${active} open${deadline}</span></div>
    <div class="timeline">${steps}</div>${progress}</div>`;
}

function render(snap) {
  addSample(snap.sample);
  $("clock").textContent = new Date(snap.now_ms).toLocaleString();
  const records = new Map(snap.migrations.map((m) => [m.id, m]));
  const moving = snap.vms.filter((v) => v.phase !== "stable" || v.queued);
  $("migrating").innerHTML = moving.length
    ? `<div class="cards">${moving.map((v) => migrationCard(v, records.get(v.migration), snap.now_ms)).join("")}</div>`
    : '<p class="quiet">No VM is migrating.</p>';
  $("pools").innerHTML = snap.pools.map((pool) => `
    <h3>${esc(pool.name)} <span class="quiet">${esc(pool.algorithm)}${pool.fallback ? " · fallback: every backend draining" : ""}</span></h3>
    <table data-pool="${esc(pool.name)}"><thead><tr><th>backend</th><th>VM</th><th>phase</th><th>weight</th><th>effective</th><th>share of new work</th><th>active</th><th>health</th><th>requests</th><th>failures</th></tr></thead><tbody>
    ${pool.backends.map((b) => `<tr data-vm="${esc(b.vm)}"><td>${esc(b.address)}</td><td>${esc(b.vm)}</td><td>${phase(b.phase)}</td><td>${b.weight}</td><td>${b.effective_weight.toFixed(2)}</td><td>${pct(b.share)}</td><td>${b.active}</td><td class="${b.health === "up" ? "ok" : "bad"}">${esc(b.health)}</td><td>${b.requests_total}</td><td>${b.failures_total}</td></tr>`).join("")}
    </tbody></table>`).join("") || '<p class="quiet">This node has no pools of its own.</p>';
  $("history").querySelector("tbody").innerHTML = snap.migrations.map((m) => `<tr data-vm="${esc(m.vm)}">
    <td>${esc(m.vm)}</td><td>${time(m.prepared_at)}</td><td>${esc(m.end || "in progress")}</td><td>${ms(m.drain_wait_ms)}</td>
    <td>${ms(m.draining_ms)}</td><td>${ms(m.migrating_ms)}</td><td>${ms(m.ramping_ms)}</td></tr>`).join("");
  $("balancers").querySelector("tbody").innerHTML = snap.balancers.map((b) => `<tr>
    <td>${esc(b.name)}</td><td>${esc(b.kind)}</td><td class="${b.up === false ? "bad" : "ok"}">${b.up == null ? "not called yet" : b.up ? "up" : "unreachable"}</td><td>${b.errors}</td></tr>`).join("");
  drawChart(snap.now_ms);
}

function connect() {
  const source = new EventSource("/v1/events");
  source.addEventListener("open", () => { $("link").textContent = "live"; $("link").className = "link up"; });
  source.addEventListener("error", () => { $("link").textContent = "reconnecting…"; $("link").className = "link down"; });
  source.addEventListener("history", (e) => { samples.length = 0; for (const s of JSON.parse(e.data)) addSample(s); });
  source.addEventListener("snapshot", (e) => render(JSON.parse(e.data)));
}

connect();
