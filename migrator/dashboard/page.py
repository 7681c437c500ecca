"""The dashboard's page, style and script, kept in Python so that a wheel carries them without
package-data configuration. Plain HTML, CSS and JavaScript: no build step, no framework, no
request to anywhere but this server (the Content-Security-Policy forbids it anyway).

The script polls /api/runs every `interval` seconds (the sampler's pace) and redraws with
DOM calls and textContent only: run names, image references and registry messages are
untrusted text and never reach innerHTML.
"""

from __future__ import annotations

HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>migrator · fleet runs</title>
<link rel="stylesheet" href="/dashboard.css">
<script src="/dashboard.js" defer></script>
</head>
<body>
<header class="top">
  <h1>migrator <span>fleet runs</span></h1>
  <p id="status">loading…</p>
</header>
<p id="banner" class="banner" hidden></p>
<main>
  <section id="schedules-box" hidden>
    <h2 class="section">Schedules</h2>
    <table id="schedules">
      <thead><tr><th>schedule</th><th>last firing</th><th>run</th><th>outcome</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
  <h2 class="section">Runs <span class="hint">newest first</span></h2>
  <div id="runs"><p class="empty">No run recorded yet.</p></div>
</main>
</body>
</html>
"""

STYLE = """
:root { --ok: #2e7d32; --skip: #8d8d8d; --fail: #c62828; --todo: #e4e7eb; --ink: #1d2430;
        --muted: #5b6675; --line: #d5dae1; --card: #ffffff; --bg: #f4f6f8; --accent: #1f5fbf; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--ink); background: var(--bg); }
.top { display: flex; align-items: baseline; justify-content: space-between; gap: 1rem;
       flex-wrap: wrap; padding: .8rem 1.5rem; background: #1d2430; color: #fff; }
.top h1 { margin: 0; font-size: 1.25rem; }
.top h1 span { font-weight: 400; color: #b8c2d0; }
#status { margin: 0; color: #cfd6e0; font-size: .9rem; }
main { max-width: 1100px; margin: 0 auto; padding: 1rem 1.5rem 3rem; }
.banner { margin: 0; padding: .6rem 1.5rem; background: #fdecea; color: #8a1c1c;
          border-bottom: 1px solid #f5c2c0; font-weight: 600; }
h2.section { font-size: 1rem; text-transform: uppercase; letter-spacing: .05em;
             color: var(--muted); margin: 1.4rem 0 .6rem; }
.hint { text-transform: none; letter-spacing: 0; font-weight: 400; }
.empty { color: var(--muted); }
.run { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
       padding: 1rem 1.2rem; margin-bottom: 1rem; }
.run header { display: flex; align-items: baseline; gap: .7rem; flex-wrap: wrap; }
.run h3 { margin: 0; font-size: 1.1rem; word-break: break-all; }
.run .meta { color: var(--muted); font-size: .85rem; }
.badge { font-size: .75rem; font-weight: 700; text-transform: uppercase; padding: .1rem .5rem;
         border-radius: 999px; color: #fff; background: var(--accent); }
.badge.succeeded { background: var(--ok); } .badge.failed { background: var(--fail); }
.bar { display: flex; height: 18px; margin: .7rem 0 .4rem; border-radius: 4px; overflow: hidden;
       background: var(--todo); }
.bar span { display: block; height: 100%; transition: width .6s ease; }
.bar .ok { background: var(--ok); } .bar .skipped { background: var(--skip); }
.bar .failed { background: var(--fail); }
.numbers { display: flex; flex-wrap: wrap; gap: .3rem 1.2rem; font-size: .92rem; }
.numbers b { font-variant-numeric: tabular-nums; }
.numbers .ok b { color: var(--ok); } .numbers .failed b { color: var(--fail); }
.numbers .skipped b { color: #666; }
.transfer { display: flex; flex-wrap: wrap; align-items: center; gap: .4rem 1.4rem;
            margin-top: .5rem; font-size: .92rem; }
.spark { display: flex; align-items: center; gap: .5rem; color: var(--muted); font-size: .8rem; }
.spark svg { width: 260px; height: 42px; background: #f7f9fb; border: 1px solid var(--line);
             border-radius: 4px; }
.spark polyline { fill: none; stroke: var(--accent); stroke-width: 1.5; }
.spark polygon { fill: rgba(31, 95, 191, .15); stroke: none; }
.summary { margin: .6rem 0 0; font-family: ui-monospace, Menlo, Consolas, monospace;
           font-size: .85rem; color: var(--muted); }
.causes h4 { margin: .9rem 0 .3rem; font-size: .9rem; color: var(--fail); }
details { border-left: 3px solid var(--fail); background: #fff7f7; margin: .3rem 0;
          padding: .3rem .6rem; border-radius: 0 4px 4px 0; }
summary { cursor: pointer; word-break: break-word; }
summary .count { display: inline-block; min-width: 2.2rem; font-weight: 700; color: var(--fail); }
details ul { margin: .4rem 0 .2rem; padding-left: 1.2rem; font-size: .85rem; }
details li { margin: .15rem 0; word-break: break-all; }
details code { font-family: ui-monospace, Menlo, Consolas, monospace; }
details .reason { color: var(--muted); }
table { border-collapse: collapse; width: 100%; background: var(--card);
        border: 1px solid var(--line); border-radius: 8px; font-size: .92rem; }
th, td { text-align: left; padding: .45rem .8rem; border-bottom: 1px solid var(--line); }
th { color: var(--muted); font-weight: 600; }
"""

SCRIPT = r"""
"use strict";
(() => {
  const runsBox = document.getElementById("runs");
  const scheduleBox = document.getElementById("schedules-box");
  const scheduleRows = document.querySelector("#schedules tbody");
  const statusLine = document.getElementById("status");
  const banner = document.getElementById("banner");
  const opened = new Set();  // failure groups the reader opened, kept open across redraws
  let pace = 2000;
  let lastGood = null;
  let lastData = null;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    return node;
  }

  function bytes(count) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let value = count, unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return (unit === 0 ? String(value) : value.toFixed(value < 10 ? 2 : 1)) + " " + units[unit];
  }

  function duration(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 90) return seconds + " s";
    const minutes = Math.round(seconds / 60);
    if (minutes < 90) return minutes + " min";
    const hours = Math.floor(minutes / 60);
    if (hours < 48) return hours + " h " + (minutes % 60) + " min";
    return Math.floor(hours / 24) + " d " + (hours % 24) + " h";
  }

  function when(epoch) {
    if (!epoch) return "—";
    return new Date(epoch * 1000).toLocaleString(undefined,
      {dateStyle: "medium", timeStyle: "medium"});
  }

  function plural(count, word) { return count + " " + word + (count === 1 ? "" : "s"); }

  function bar(run) {
    const total = Math.max(run.total, run.done, 1);
    const part = (count, kind) => {
      const span = el("span", {class: kind, title: count + " " + kind});
      span.style.width = (100 * count / total) + "%";
      return span;
    };
    const percent = run.total ? Math.floor(100 * run.done / run.total) : 0;
    return el("div", {class: "bar", role: "progressbar", "aria-valuemin": 0,
                      "aria-valuemax": run.total, "aria-valuenow": run.done,
                      "aria-label": "images done", "data-percent": percent},
      part(run.succeeded, "ok"), part(run.skipped, "skipped"), part(run.failed, "failed"));
  }

  function sparkline(run, data) {
    const points = run.throughput;
    if (points.length < 2) return el("span", {class: "spark"}, "throughput: sampling…");
    // The x axis spans what was watched, up to the sampler's window, so a fresh dashboard
    // draws a whole line instead of a sliver at the right edge.
    const width = 260, height = 42, end = data.generated;
    const start = Math.max(end - data.window, points[0][0]), span = Math.max(end - start, 1);
    const top = Math.max(...points.map((p) => p[1]));
    const xy = points.filter((p) => p[0] >= start).map((p) => [
      ((p[0] - start) / span * width).toFixed(1),
      (height - 2 - (p[1] / Math.max(top, 1)) * (height - 6)).toFixed(1)]);
    const box = svg("svg", {viewBox: `0 0 ${width} ${height}`, role: "img",
                            "aria-label": "bytes per second over the last minutes"});
    if (xy.length > 1) {
      const line = xy.map((p) => p.join(",")).join(" ");
      const first = xy[0][0], last = xy[xy.length - 1][0];
      box.append(svg("polygon", {points: `${first},${height} ${line} ${last},${height}`}));
      box.append(svg("polyline", {points: line}));
    }
    return el("span", {class: "spark"}, box,
      (top ? "peak " + bytes(top) + "/s" : "no byte moved") + " in the last " + duration(span));
  }

  function pace_of(perSecond) {
    return perSecond >= 1 ? perSecond.toFixed(1) + " images/s"
      : (perSecond * 60).toFixed(1) + " images/min";
  }

  function eta(run) {
    if (run.finished) return null;
    if (!run.eta) return "ETA: unknown yet";
    if (run.eta.seconds === null) return "ETA: unknown (no image ended in the last minute)";
    return "ETA ≈ " + duration(run.eta.seconds) + " at " + pace_of(run.eta.images_per_second) +
      (run.eta.basis === "since start" ? " (average since start)" : "") +
      (run.eta.partial ? "; tags still being listed" : "");
  }

  function causes(run, list, title, kind) {
    if (!list.length) return null;
    const box = el("div", {class: "causes"}, el("h4", {}, title));
    for (const group of list) {
      const key = run.id + "\u0000" + kind + "\u0000" + group.cause;
      // An item's own reason is shown when normalising changed it (names, numbers).
      const items = el("ul", {}, ...group.items.map((item) => el("li", {},
        el("code", {}, item.name),
        item.reason !== group.cause ? el("span", {class: "reason"}, " — " + item.reason) : null)));
      const details = el("details", {class: "cause", open: opened.has(key)},
        el("summary", {}, el("span", {class: "count"}, group.count), group.cause), items,
        group.more ? el("p", {class: "reason"}, "… and " + group.more + " more") : null);
      details.addEventListener("toggle", () => {
        if (details.open) opened.add(key); else opened.delete(key);
      });
      box.append(details);
    }
    return box;
  }

  function runCard(run, data) {
    if (run.unreadable) {
      return el("section", {class: "run", "data-run": run.id},
        el("header", {}, el("h3", {}, run.id), el("span", {class: "badge failed"}, "unreadable")),
        el("p", {class: "summary"}, run.unreadable));
    }
    const percent = run.total ? Math.floor(100 * run.done / run.total) : 0;
    const numbers = el("div", {class: "numbers"},
      el("span", {class: "done"}, el("b", {}, run.done + " / " + run.total),
         " images done (" + percent + "%)"),
      el("span", {class: "ok"}, el("b", {}, run.succeeded), " copied or up to date"),
      el("span", {class: "skipped"}, el("b", {}, run.skipped), " skipped"),
      el("span", {class: "failed"}, el("b", {}, run.failed), " failed"),
      run.generate_failed ? el("span", {class: "failed"}, el("b", {}, run.generate_failed),
                               " rules not listed") : null,
      run.expands_pending ? el("span", {}, el("b", {}, run.expands_pending),
                               " rules being listed") : null);
    const transfer = el("div", {class: "transfer"},
      el("span", {}, el("b", {}, bytes(run.bytes)), " copied"),
      run.rate !== null && !run.finished
        ? el("span", {class: "rate"}, el("b", {}, bytes(run.rate) + "/s"), " now") : null,
      eta(run) ? el("span", {class: "eta"}, eta(run)) : null,
      sparkline(run, data));
    return el("section", {class: "run " + run.status, "data-run": run.id, "data-done": run.done,
                          "data-total": run.total, "data-status": run.status},
      el("header", {},
        el("h3", {}, run.name || run.id),
        el("span", {class: "badge " + run.status}, run.status),
        el("span", {class: "meta"}, run.id + " · started " + when(run.created))),
      bar(run), numbers, transfer,
      run.summary ? el("p", {class: "summary"}, run.summary) : null,
      causes(run, run.failures, "Failed images by cause", "images"),
      causes(run, run.generate_failures, "Rules whose tags could not be listed", "rules"),
      causes(run, run.recovery || [], "Tasks of workers that died", "recovery"));
  }

  function scheduleRow(entry) {
    const outcome = entry.status === null ? (entry.run_id ? "record expired" : "—")
      : entry.status + (entry.total !== null ? " (" + entry.done + "/" + entry.total + ")" : "");
    return el("tr", {"data-schedule": entry.name}, el("td", {}, entry.name),
      el("td", {}, when(entry.fired)), el("td", {}, el("code", {}, entry.run_id || "—")),
      el("td", {}, outcome));
  }

  function draw(data) {
    pace = Math.max(500, data.interval * 1000);
    banner.hidden = !data.error;
    banner.textContent = data.error || "";
    const cards = data.runs.map((run) => runCard(run, data));
    if (!cards.length) cards.push(el("p", {class: "empty"}, "No run recorded yet."));
    runsBox.replaceChildren(...cards);
    scheduleBox.hidden = !data.schedules.length;
    scheduleRows.replaceChildren(...data.schedules.map(scheduleRow));
  }

  function tell() {
    const where = lastData
      ? "Redis " + lastData.redis + " · prefix " + lastData.prefix + " · read-only" : "";
    const age = lastGood ? " · updated " + duration((Date.now() - lastGood) / 1000) + " ago" : "";
    statusLine.textContent = where + age;
  }

  async function poll() {
    try {
      const response = await fetch("/api/runs", {cache: "no-store", credentials: "same-origin"});
      if (!response.ok) throw new Error("HTTP " + response.status);
      lastData = await response.json();
      lastGood = Date.now();
      draw(lastData);
    } catch (error) {
      banner.hidden = false;
      banner.textContent = "The dashboard server cannot be reached (" + error.message +
        "); retrying every " + Math.round(pace / 1000) + " s";
    }
    tell();
    setTimeout(poll, pace);
  }

  setInterval(tell, 1000);
  poll();
})();
"""
