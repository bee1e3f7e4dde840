// Watches a handover dashboard in Debian's Chromium while the test drives a migration of one VM.
//
//   node observe.mjs URL VM SCREENSHOT
//
// Prints "ready" once the page is live, then one JSON line per change of the VM's phase as the page
// shows it: {"phase", "share" (the legend's text), "line" (the chart's path for the VM)}; takes a
// screenshot while the VM ramps; at the end prints {"done", "offsite" (requests that left the node),
// "lowest" (the lowest share shown per phase), "errors" (the page's script errors)} and exits 0 after the page showed the VM stable again, 1 on timeout.
import { chromium } from "playwright-core";

const [url, vm, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const deadline = Date.now() + 90_000;
let code = 1;
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const offsite = [];
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("request", (r) => { if (!r.url().startsWith(new URL(url).origin)) offsite.push(r.url()); });
  await page.goto(url);
  await page.waitForSelector("#link.up", { timeout: 20_000 });
  await page.waitForSelector(`#legend [data-series="${vm}"]`, { timeout: 20_000 });
  console.log("ready");
  let last = "stable";
  let shot = false;
  const seen = [];
  const lowest = {}; // the lowest share the legend showed in each phase

  while (Date.now() < deadline) {
    const state = await page.evaluate((vm) => {
      const card = document.querySelector(`#migrating .card[data-vm="${vm}"] .title .phase`);
      const row = document.querySelector(`#pools tr[data-vm="${vm}"] .phase`);
      return {
        phase: card ? card.dataset.phase : row ? row.dataset.phase : null,
        share: document.querySelector(`#legend [data-series="${vm}"] b`)?.textContent ?? null,
        line: document.getElementById(`chart-line-${vm}`)?.getAttribute("d") ?? null,
      };
    }, vm);
    const share = parseFloat(state.share);
    if (state.phase && !Number.isNaN(share)) lowest[state.phase] = Math.min(lowest[state.phase] ?? 100, share);
    if (state.phase && state.phase !== last) {
      last = state.phase;
      seen.push(state.phase);
      console.log(JSON.stringify(state));
    }
    if (last === "ramping" && !shot) {
      await page.waitForTimeout(2500);
      await page.screenshot({ path: screenshot, fullPage: true });
      shot = true;
    }
    if (last === "stable" && seen.includes("ramping")) {
      console.log(JSON.stringify({ done: true, offsite, lowest, errors }));
      code = 0;
      break;
    }
    await page.waitForTimeout(100);
  }
  if (code !== 0) console.log(JSON.stringify({ timeout: true, seen }));
} finally {
  await browser.close();
}
process.exit(code);
