// bulkgen dashboard: live progress bars from each batch's event stream, and a small
// throughput chart on a batch's page. Plain JavaScript, no build step, no inline code.
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
      active: (counts.queued || 0) + (counts.generating || 0) };
    document.querySelectorAll("[data-count]").forEach((el) => {
      const value = live[el.dataset.count];
      if (typeof value === "number") el.textContent = String(value);
    });
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
