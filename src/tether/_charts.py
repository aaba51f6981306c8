"""The console's live charts: the samples behind them and the script that draws them.

``/debug/stats`` answers one small JSON sample per serving process (its
counters as they stand: requests answered, latency and loop-lag bucket counts,
requests in flight) with the server's clock, and, from a master, the reloads
it ran. The page's script asks for it once a second while the page is open and
turns successive samples into rates and percentiles: requests/s, p50 and p99
latency, requests in flight, and each worker's loop lag, over the last five
minutes, with every reload drawn on the time axis.

Invariant: **nothing runs on the server for the charts unless a page asks.**
The samples are the counters the process already keeps, read when asked; the
history lives in the browser, so an idle service pays nothing for charts
nobody looks at. The script and its styles are inline: the page works on a
cluster with no way out to the internet.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tether._metricdefs import EVENT_LOOP_LAG, HTTP_REQUEST_DURATION

if TYPE_CHECKING:
    from tether.console import Page
    from tether.metrics import ProcessMetrics

__all__ = ["CHARTS_HTML", "CHARTS_STYLE", "process_sample", "stats_page"]


def process_sample(metrics: ProcessMetrics, in_flight: int) -> dict[str, Any]:
    """One process's counters as they stand (cumulative; the page takes differences)."""
    latency = [0] * (len(HTTP_REQUEST_DURATION.buckets) + 1)
    for hist in metrics.durations.values():
        for i, count in enumerate(hist.counts):
            latency[i] += count
    return {
        "requests": sum(latency),
        "latency": latency,
        "lag": list(metrics.lag.counts),
        "in_flight": in_flight,
    }


def _answer(processes: list[dict[str, Any]], reloads: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "time": time.time(),
        "buckets": {"latency": HTTP_REQUEST_DURATION.buckets, "lag": EVENT_LOOP_LAG.buckets},
        "processes": processes,
        "reloads": [
            {k: r.get(k) for k in ("finished_at", "seconds", "ok", "generation")}
            for r in reloads
            if r.get("finished_at")
        ],
    }


def stats_page(
    processes: Callable[[], Awaitable[list[dict[str, Any]]]],
    reloads: Callable[[], list[dict[str, Any]]] = list,
) -> Page:
    """``/debug/stats`` over ``processes`` (each ``{"role", "id", "pid", "sample"}``)."""

    async def page(query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        body = _answer(await processes(), reloads())
        return 200, "application/json", json.dumps(body).encode()

    return page


# The page's part: four charts, and the script that fills them. Values and labels it
# shows come from numbers only (no application strings reach it), set as text.
CHARTS_HTML = """
<h2>Live</h2>
<p class="muted" id="live-note">charts start with the second sample (one a second while this page
is open); the last five minutes, reloads marked in blue</p>
<div class="charts">
<figure><figcaption>requests/s</figcaption><svg data-chart="rps"></svg></figure>
<figure><figcaption>latency p50 / p99 (ms)</figcaption><svg data-chart="latency"></svg></figure>
<figure><figcaption>requests in flight</figcaption><svg data-chart="inflight"></svg></figure>
<figure><figcaption>event-loop lag p99 per worker (ms)</figcaption><svg data-chart="lag"></svg>
</figure>
</div>
<script>
(() => {
  const WINDOW = 300, W = 520, H = 130, PAD = 34;
  const COLORS = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989"];
  const token = new URLSearchParams(location.search).get("token");
  const url = "/debug/stats" + (token ? "?token=" + encodeURIComponent(token) : "");
  const last = new Map();          // pid -> previous sample
  const points = {rps: [[]], latency: [[], []], inflight: [[]], lag: new Map()};
  let reloads = [], now = 0;

  // The upper bound a fraction q of the observations fall under, interpolated within its
  // bucket as Prometheus' histogram_quantile does; null when nothing was observed.
  function quantile(q, bounds, counts) {
    const total = counts.reduce((a, b) => a + b, 0);
    if (total <= 0) return null;
    let rank = q * total, below = 0;
    for (let i = 0; i < counts.length; i++) {
      if (below + counts[i] >= rank) {
        if (i >= bounds.length) return bounds[bounds.length - 1];
        const lo = i === 0 ? 0 : bounds[i - 1];
        return lo + (bounds[i] - lo) * ((rank - below) / counts[i]);
      }
      below += counts[i];
    }
    return bounds[bounds.length - 1];
  }
  const minus = (a, b) => a.map((x, i) => Math.max(0, x - (b[i] || 0)));

  function take(data) {
    now = data.time; reloads = data.reloads;
    const b = data.buckets;
    let rps = 0, inflight = 0, any = false;
    const lat = new Array(b.latency.length + 1).fill(0);
    for (const p of data.processes) {
      const s = p.sample, prev = last.get(p.pid);
      last.set(p.pid, {t: data.time, s});
      inflight += s.in_flight;
      if (!prev || s.requests < prev.s.requests) continue;  // new process, or restarted
      any = true;
      const dt = Math.max(1e-3, data.time - prev.t);
      rps += (s.requests - prev.s.requests) / dt;
      minus(s.latency, prev.s.latency).forEach((c, i) => { lat[i] += c; });
      const key = "worker " + p.id;
      if (!points.lag.has(key)) points.lag.set(key, []);
      const lag = quantile(0.99, b.lag, minus(s.lag, prev.s.lag));
      points.lag.get(key).push([data.time, lag === null ? 0 : lag * 1000]);
    }
    points.inflight[0].push([data.time, inflight]);
    if (any) {
      points.rps[0].push([data.time, rps]);
      const p50 = quantile(0.5, b.latency, lat), p99 = quantile(0.99, b.latency, lat);
      points.latency[0].push([data.time, p50 === null ? 0 : p50 * 1000]);
      points.latency[1].push([data.time, p99 === null ? 0 : p99 * 1000]);
    }
    const since = now - WINDOW;
    const trim = (s) => { while (s.length && s[0][0] < since) s.shift(); };
    [...points.rps, ...points.latency, ...points.inflight, ...points.lag.values()].forEach(trim);
  }

  function el(name, attrs, text) {
    const e = document.createElementNS("http://www.w3.org/2000/svg", name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  const fmt = (v) => v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);

  function draw(name, series, labels) {
    const svg = document.querySelector('svg[data-chart="' + name + '"]');
    svg.replaceChildren();
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    const top = Math.max(1e-9, ...series.flat().map((p) => p[1])) * 1.15;
    const x = (t) => PAD + (W - PAD - 4) * (1 - (now - t) / WINDOW);
    const y = (v) => H - 16 - (H - 24) * (v / top);
    svg.append(el("line", {x1: PAD, y1: H - 16, x2: W - 4, y2: H - 16, class: "axis"}));
    svg.append(el("text", {x: 2, y: 12, class: "tick"}, fmt(top)));
    svg.append(el("text", {x: 2, y: H - 18, class: "tick"}, "0"));
    svg.append(el("text", {x: PAD, y: H - 3, class: "tick"}, "-5 min"));
    svg.append(el("text", {x: W - 30, y: H - 3, class: "tick"}, "now"));
    let marks = 0;
    for (const r of reloads) {
      const end = x(r.finished_at), start = x(r.finished_at - (r.seconds || 0));
      if (end < PAD) continue;
      marks += 1;
      const left = Math.max(PAD, start);
      const band = el("rect", {x: left, y: 4, width: Math.max(1.5, end - left), height: H - 20,
        class: r.ok ? "reload" : "reload failed"});
      band.append(el("title", {}, "reload " + (r.ok ? "ok" : "failed") + ", generation " +
        r.generation));
      svg.append(band);
    }
    let count = 0;
    series.forEach((s, i) => {
      if (!s.length) return;
      count += s.length;
      const path = s.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" ");
      svg.append(el("polyline", {points: path, stroke: COLORS[i % COLORS.length],
        fill: "none", "stroke-width": 1.6}));
      if (labels[i]) svg.append(el("text", {x: PAD + 6 + 70 * i, y: 12, class: "tick",
        fill: COLORS[i % COLORS.length]}, labels[i]));
    });
    // What the chart shows, readable by a test or a person's devtools.
    svg.dataset.points = String(count);
    svg.dataset.series = String(series.filter((s) => s.length).length);
    svg.dataset.last = JSON.stringify(series.map((s) => s.length ? s[s.length - 1][1] : null));
    svg.dataset.max = String(Math.max(0, ...series.flat().map((p) => p[1])));
    svg.dataset.marks = String(marks);
  }

  async function tick() {
    try {
      const answer = await fetch(url, {cache: "no-store"});
      if (answer.ok) take(await answer.json());
      document.getElementById("live-note").dataset.samples =
        String(Number(document.getElementById("live-note").dataset.samples || 0) + 1);
    } catch (e) { /* the next tick tries again */ }
    draw("rps", points.rps, []);
    draw("latency", points.latency, ["p50", "p99"]);
    draw("inflight", points.inflight, []);
    draw("lag", [...points.lag.values()], [...points.lag.keys()]);
    setTimeout(tick, 1000);
  }
  tick();
})();
</script>
"""

CHARTS_STYLE = """
.charts{display:flex;flex-wrap:wrap;gap:1em}.charts figure{margin:0;background:#fff;
border:1px solid #ddd;padding:.3em .5em}.charts figcaption{font-size:12px;color:#555}
.charts svg{width:520px;height:130px;display:block}.charts .axis{stroke:#bbb}
.charts .tick{font-size:10px;fill:#777}.charts .reload{fill:#1f6feb;opacity:.18}
.charts .reload.failed{fill:#d1242f}
"""
