// bulkgen dashboard: live progress bars from each batch's event stream; on a batch's page a
// small throughput chart and its figures (cost, tokens, 429 share) kept current while it
// runs. Plain JavaScript, no build step, no inline code.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function drawChart(svg, points) {
  // points: [{t: seconds since the page opened, rate: jobs per second}]
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  if (points.length < 2) return;
  const width = 600, height = 120, pad = 6;
  const tMax = Math.max(points[points.length - 1].t, 1);
  const rMax = Math.max(...points.map((p) => p.rate), 0.001);
  const xy = points.map((p) => [
    (p.t / tMax) * width,
    height - pad - (p.rate / rMax) * (height - 2 * pad),
  ]);
  const line = xy.map(([x, y], i) => (i ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1)).join(" ");
  const area = document.createElementNS(SVG_NS, "path");
  area.setAttribute("class", "area");
  area.setAttribute("d", line + ` L${xy[xy.length - 1][0].toFixed(1)} ${height} L${xy[0][0].toFixed(1)} ${height} Z`);
  const path = document.createElementNS(SVG_NS, "path");
  path.setAttribute("class", "line");
  path.setAttribute("d", line);
  svg.appendChild(area);
  svg.appendChild(path);
}

function usd(value) {
  // As the server writes money: a dollar sign and four decimals.
  return "$" + Number(value).toLocaleString("en-US", { minimumFractionDigits: 4, maximumFractionDigits: 4 });
}

function count(value) {
  return Number(value).toLocaleString("en-US");
}

function setStat(name, text, small) {
  const el = document.querySelector(`[data-stat="${name}"]`);
  if (!el) return;
  el.textContent = text;
  if (small) {
    const note = document.createElement("small");
    note.textContent = " " + small;
    el.appendChild(note);
  }
}

function showFigures(batch) {
  // batch: what GET /v1/batches/{id} returns.
  const usage = batch.usage || {};
  setStat("cost", usd(usage.cost_usd));
  setStat("saved", usd(usage.saved_usd));
  setStat("economy", usd(usage.economy_saved_usd));
  const hits = usage.cache_hits || 0;
  setStat("cache", count(hits), batch.total ? `(${((hits / batch.total) * 100).toFixed(1)}%)` : "");
  setStat("tokens", `${count(batch.prompt_tokens)} / ${count(batch.completion_tokens)}`);
  showShare429(batch);
}

function showShare429(figures) {
  if (typeof figures.provider_429_share !== "number") return;
  setStat("share429", `${(figures.provider_429_share * 100).toFixed(1)}%`,
    `(${count(figures.provider_429s)} of ${count(figures.provider_requests)} requests)`);
  const el = document.querySelector('[data-stat="share429"]');
  if (el) el.classList.toggle("warn", figures.provider_429s > 0);
}

// Cost needs the price table, so it comes from the server's figures, read again at most
// every FIGURES_EVERY_MS while progress events arrive.
const FIGURES_EVERY_MS = 2000;
let figuresAt = 0;
let figuresPending = false;

function refreshFigures() {
  const stats = document.querySelector(".stats[data-figures]");
  if (!stats || figuresPending) return;
  const wait = figuresAt + FIGURES_EVERY_MS - performance.now();
  figuresPending = true;
  window.setTimeout(() => {
    fetch(stats.dataset.figures, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then((response) => (response.ok ? response.json() : null))
      .then((batch) => { if (batch) showFigures(batch); })
      .catch(() => {}) // the next progress event tries again
      .finally(() => { figuresAt = performance.now(); figuresPending = false; });
  }, Math.max(0, wait));
}

function follow(block) {
  const bar = block.querySelector("progress");
  const pct = block.querySelector(".pct");
  const ended = block.querySelector(".ended");
  const state = block.querySelector(".state");
  const card = block.closest(".card");
  const svg = card ? card.querySelector("svg.chart") : null;
  const note = card ? card.querySelector(".chart-note") : null;
  const started = performance.now();
  const points = [];
  const source = new EventSource(block.dataset.events);

  function show(data) {
    const total = data.total || 0;
    bar.max = total || 1;
    bar.value = total ? data.done : 1;
    pct.textContent = (total ? Math.round((data.done / total) * 100) : 100) + "%";
    ended.textContent = String(data.done);
    const counts = data.counts || {};
    const live = { done: counts.done, failed: counts.failed, cancelled: counts.cancelled,
      active: (counts.queued || 0) + (counts.generating || 0) + (counts.batched || 0) };
    document.querySelectorAll("[data-count]").forEach((el) => {
      const value = live[el.dataset.count];
      if (typeof value === "number") el.textContent = String(value);
      if (el.dataset.count === "failed") el.classList.toggle("bad", value > 0);
    });
    if (document.body.dataset.page === "batch") {
      if (typeof data.prompt_tokens === "number") {
        setStat("tokens", `${count(data.prompt_tokens)} / ${count(data.completion_tokens)}`);
      }
      showShare429(data);
      refreshFigures();
    }
    if (svg && typeof data.rate_jobs_per_s === "number") {
      points.push({ t: (performance.now() - started) / 1000, rate: data.rate_jobs_per_s });
      drawChart(svg, points);
      if (note) note.textContent = `Now ${data.rate_jobs_per_s.toFixed(2)} jobs/s` +
        (data.eta_s ? `, about ${Math.ceil(data.eta_s)} s left` : "");
    }
  }

  source.addEventListener("progress", (event) => show(JSON.parse(event.data)));
  source.addEventListener("end", (event) => {
    source.close();
    show(JSON.parse(event.data));
    state.textContent = "finished";
    state.classList.replace("running", "ok");
    block.dataset.finished = "true";
    // The batch page's figures (cost, failed jobs) were read while it ran: read them again.
    if (document.body.dataset.page === "batch") {
      window.setTimeout(() => window.location.reload(), 1500);
    }
  });
  source.onerror = () => {
    // EventSource reconnects by itself; a closed stream after "end" needs nothing.
    if (block.dataset.finished === "true") source.close();
  };
}

// Browsers allow about six connections per site over HTTP/1.1: follow only the first few
// running batches, so the page's own links still load.
const MAX_STREAMS = 4;
document.addEventListener("DOMContentLoaded", () => {
  Array.from(document.querySelectorAll(".progress-block[data-events]"))
    .slice(0, MAX_STREAMS)
    .forEach(follow);
});
