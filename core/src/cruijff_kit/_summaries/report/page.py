"""The HTML of ``report.html``: one file with its style, script, data and plotly.js inline.

plotly.js (about 4.8 MB) is embedded once, gzip-compressed and base64-encoded (about 2 MB), and
unpacked by the browser with ``DecompressionStream``; the tables are drawn without it, so a browser
that cannot unpack it still shows every table and says why the charts are missing.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import html
import json
from functools import cache
from pathlib import Path
from typing import Any

from cruijff_kit._base.errors import CkError
from cruijff_kit._base.fileio import atomic_write_text

#: First line of every page ``ck report`` writes (how it recognises its own file).
MARKER = "<!-- written by ck report -->"


def _plotly() -> Any:
    try:
        import plotly
        from plotly.offline import get_plotlyjs
    except ImportError as exc:
        raise CkError(
            "ck report draws its charts with plotly, which is not installed. Install the plots extra with "
            '`pip install "cruijff-kit[plots]"` (or `pip install plotly`), then run `ck report` again.'
        ) from exc
    return plotly, get_plotlyjs


def _cache_file(version: str, source: bytes) -> Path:
    """Where the packed bundle of this plotly.js is kept between runs (named by version and hash)."""
    from platformdirs import user_cache_dir

    digest = hashlib.sha256(source).hexdigest()[:16]
    return Path(user_cache_dir("cruijff-kit")) / f"plotly-{version}-{digest}.min.js.gz.b64"


@cache
def plotly_bundle() -> tuple[str, str]:
    """``(version, base64 of the gzip-compressed plotly.min.js)``.

    Packing takes a few tenths of a second, so the result is kept in the user's cache folder, named by
    the plotly version and the hash of the script it packs (a cache that cannot be read or written is
    not used); and once per process."""
    plotly, get_plotlyjs = _plotly()
    source = get_plotlyjs().encode("utf-8")
    path = _cache_file(plotly.__version__, source)
    try:
        packed = path.read_text(encoding="ascii")
        if gzip.decompress(base64.b64decode(packed, validate=True)) == source:
            return plotly.__version__, packed
    except (OSError, ValueError, EOFError, gzip.BadGzipFile):
        pass  # none yet, or damaged: packed again below
    packed = base64.b64encode(gzip.compress(source, compresslevel=6, mtime=0)).decode("ascii")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, packed)
    except OSError:
        pass  # a read-only home: packed again next time
    return plotly.__version__, packed


def _json_for_script(data: Any) -> str:
    """JSON safe inside a ``<script>`` element (no ``</script>`` or ``<!--`` can close or confuse it)."""
    text = json.dumps(data, separators=(",", ":"), default=str, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(data: dict[str, Any]) -> str:
    """The whole page for ``data`` (see :func:`cruijff_kit._summaries.report.collect.report_data`)."""
    version, packed = plotly_bundle()
    title = html.escape(f"ck report: {data.get('experiment', '')}")
    return (f"<!DOCTYPE html>\n{MARKER}\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{title}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{title}</h1><p id=\"meta\"></p></header><main id=\"main\"></main>"
            f"<footer>Charts: plotly.js {html.escape(version)}, embedded in this file (no network).</footer>"
            f"<script type=\"application/json\" id=\"ck-data\">{_json_for_script(data)}</script>"
            f"<script type=\"text/plain\" id=\"ck-plotly\">{packed}</script>"
            f"<script>{JS}</script></body></html>\n")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 1.5rem 2rem;color:#1d232a;
  font-size:14px}
h1{font-size:1.5rem;margin:1rem 0 .2rem}h2{font-size:1.2rem;margin:1.8rem 0 .5rem;border-bottom:1px solid #ccd}
h3{font-size:1rem;margin:1rem 0 .3rem}
table{border-collapse:collapse;margin:.3rem 0}td,th{border:1px solid #d5d9e0;padding:2px 6px;text-align:left;
  vertical-align:top}th{background:#f1f3f7;position:sticky;top:0}
#runs-table th.sortable{cursor:pointer;white-space:nowrap}#runs-table td.num{text-align:right;
  font-variant-numeric:tabular-nums}
td.best{font-weight:700;background:#e3f6e5}td.best::after{content:" \\2605";color:#2b8a3e}
.badge{display:inline-block;font-size:11px;padding:0 5px;border-radius:8px;background:#e7ecff;color:#2a3f9d}
.state-done{color:#2b8a3e}.state-failed,.state-damaged,.state-interrupted{color:#c92a2a;font-weight:700}
.state-running,.state-submitted{color:#e67700}.state-pending,.state-cancelled{color:#868e96}
input.colfilter{width:100%;box-sizing:border-box;font-size:12px}
.controls{margin:.4rem 0}.controls label{margin-right:.8rem}
pre{background:#f6f8fa;padding:.5rem;overflow:auto;max-height:28rem;font-size:12px}
code{font-size:12px;background:#f6f8fa;padding:0 3px}.chart{width:100%;min-height:420px}
.pair{display:flex;flex-wrap:wrap;gap:1rem}.pair>div{flex:1 1 420px;min-height:380px}
#curve-runs{max-height:9rem;overflow-y:auto;border:1px solid #d5d9e0;padding:.3rem;display:grid;
  grid-template-columns:repeat(auto-fill,minmax(16rem,1fr))}
#curve-runs label{white-space:nowrap}.scroll{overflow-x:auto;max-height:80vh;overflow-y:auto}
#runs-table td{white-space:nowrap}
.note{color:#5c6370}.warn{color:#c92a2a}footer{margin-top:2rem;color:#868e96;font-size:12px}
"""

JS = r"""
"use strict";
const D = JSON.parse(document.getElementById("ck-data").textContent);
window.ckReport = {ready: false, plots: 0, error: null, ms: {}};
const main = document.getElementById("main");
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v; else if (k === "cls") e.className = v; else e.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}
function section(id, title) {
  const s = el("section", {id: id}, el("h2", {text: title}));
  main.append(s);
  return s;
}
function fmt(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)));
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}
function link(path, text) { return el("a", {href: path, text: text || path}); }
const lower = new Set(D.lower);
const metrics = new Set(D.metrics);
const pending = [];  // chart drawings, run once plotly is unpacked

document.getElementById("meta").textContent =
  `Experiment folder ${D.root} — written ${D.generated} — ${D.rows.length} rows, ` +
  `${new Set(D.rows.map(r => r.run)).size} runs`;
if (D.damaged.length) {
  const s = section("damaged", "Missing from this report (damaged state files)");
  s.append(el("ul", {}, ...D.damaged.map(t => el("li", {cls: "warn", text: t}))));
}

// ---------------------------------------------------------------- spec and sweep
{
  const s = section("spec", "Spec and sweep");
  const names = Object.keys(D.sweep);
  if (names.length) {
    s.append(el("p", {text: "The sweep varied:"}));
    s.append(el("table", {id: "sweep-table"}, el("tr", {}, el("th", {text: "parameter"}), el("th", {text: "values"})),
      ...names.map(p => el("tr", {}, el("td", {}, el("code", {text: p})), el("td", {text: D.sweep[p].map(v => v === null ? "(not set)" : fmt(v)).join(", ")})))));
  } else s.append(el("p", {cls: "note", text: "No sweep: every run has the same settings."}));
  if (D.plan) s.append(el("p", {}, "Plan: ", link(D.plan)));
  s.append(el("details", {}, el("summary", {text: "spec.yaml"}), el("pre", {text: D.spec})));
}

// ---------------------------------------------------------------- the table
{
  const s = section("results", "Runs x targets x metrics");
  const cols = D.columns;
  const count = el("span", {cls: "note"});
  const filter = el("input", {id: "table-filter", type: "search", placeholder: "filter every column", size: "40"});
  s.append(el("div", {cls: "controls"}, filter, " ", count));
  const table = el("table", {id: "runs-table"});
  const head = el("tr", {}), filters = el("tr", {});
  const colFilters = [];
  let sortCol = null, sortDir = 1;
  cols.forEach((c, i) => {
    const th = el("th", {cls: "sortable", title: (metrics.has(c) ? (lower.has(c) ? "lower" : "higher") +
      " is better; " : "") + "click to sort", text: c});
    th.addEventListener("click", () => { sortDir = sortCol === i ? -sortDir : 1; sortCol = i; draw(); });
    head.append(th);
    const f = el("input", {cls: "colfilter", "data-col": c, placeholder: "filter"});
    f.addEventListener("input", draw);
    colFilters.push(f);
    filters.append(el("th", {}, f));
  });
  head.append(el("th", {text: "eval logs"}));
  filters.append(el("th"));
  const tbody = el("tbody");
  table.append(el("thead", {}, head, filters), tbody);
  s.append(el("div", {cls: "scroll"}, table));
  s.append(el("p", {cls: "note", text: "\u2605 best value of each metric per task (lowest for losses, " +
    "errors and token_amount). shared: a stage several runs share, computed once in that folder and shown on each run's row. " +
    "Filters match text in a cell; a number filter may start with <, >, <= or >=."}));
  const trs = D.rows.map(r => {
    const tr = el("tr");
    for (const c of cols) {
      const v = r[c];
      const td = el("td", {text: fmt(v)});
      if (typeof v === "number") td.className = "num";
      if (metrics.has(c) && typeof v === "number" && D.best[`${r.task}:${c}`] === v) {
        td.classList.add("best");
        td.title = `best ${c} for task ${r.task}`;
      }
      if (c === "shared" && v) {
        td.textContent = "";
        td.append(el("span", {cls: "badge", title: `computed once in ${v}`, text: "shared"}), " " + v.replace(/^shared\//, ""));
      }
      if (c === "state" && v) td.classList.add("state-" + String(v).replace(/\s+/g, "-"));
      tr.append(td);
    }
    const logs = el("td");
    if (r._logs) {
      r._logs.files.forEach(f => logs.append(link(f, f.split("/").pop()), " "));
      logs.append(el("details", {}, el("summary", {text: "inspect view"}), el("code", {text: r._logs.view})));
    }
    tr.append(logs);
    tr._row = r;
    return tr;
  });
  function matches(v, q) {
    q = q.trim();
    if (!q) return true;
    const m = q.match(/^(<=|>=|<|>)\s*(-?[\d.eE+-]+)$/);
    if (m && typeof v === "number") {
      const x = Number(m[2]);
      return {"<": v < x, ">": v > x, "<=": v <= x, ">=": v >= x}[m[1]];
    }
    return fmt(v).toLowerCase().includes(q.toLowerCase());
  }
  function draw() {
    const q = filter.value.trim().toLowerCase();
    let shown = trs.filter(tr => {
      const r = tr._row;
      if (q && !cols.some(c => fmt(r[c]).toLowerCase().includes(q))) return false;
      return colFilters.every((f, i) => matches(r[cols[i]], f.value));
    });
    if (sortCol !== null) {
      const c = cols[sortCol];
      shown = shown.slice().sort((a, b) => {
        const x = a._row[c], y = b._row[c];
        if (x === y) return 0;
        if (x === null || x === undefined) return 1;
        if (y === null || y === undefined) return -1;
        return (typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y))) * sortDir;
      });
    }
    tbody.replaceChildren(...shown);
    head.querySelectorAll("th").forEach((th, i) => {
      th.textContent = (cols[i] || "eval logs") + (i === sortCol ? (sortDir > 0 ? " \u25b2" : " \u25bc") : "");
    });
    count.textContent = `${shown.length} of ${trs.length} rows`;
  }
  filter.addEventListener("input", draw);
  draw();
}

const PLOT_CONFIG = {displaylogo: false, responsive: true};
function plot(div, traces, layout) {
  pending.push(() => { window.ckReport.plots += 1; return Plotly.newPlot(div, traces, layout, PLOT_CONFIG); });
}

// ---------------------------------------------------------------- loss curves
{
  const s = section("curves", "Loss curves");
  const runs = Object.keys(D.curves);
  if (!runs.length) s.append(el("p", {cls: "note", text: "No run logged a training loss."}));
  else {
    const box = el("div", {id: "curve-runs"});
    const all = el("button", {type: "button", text: "all runs"}), none = el("button", {type: "button", text: "no run"});
    s.append(el("div", {cls: "controls"}, all, " ", none, " ",
      el("span", {cls: "note", text: "solid: train loss; dashed with dots: validation loss"})), box);
    const div = el("div", {id: "loss-curves", cls: "chart"});
    s.append(div);
    const traces = [], byRun = {};
    runs.forEach((run, i) => {
      const color = `hsl(${(i * 137.5) % 360},65%,42%)`;
      byRun[run] = [];
      for (const [kind, dash] of [["train", "solid"], ["val", "dash"]]) {
        const pts = D.curves[run][kind];
        if (!pts.step.length) continue;
        byRun[run].push(traces.length);
        traces.push({x: pts.step, y: pts.loss, name: `${run} ${kind}`, legendgroup: run,
          mode: kind === "val" ? "lines+markers" : "lines", line: {color: color, dash: dash}, type: "scatter"});
      }
      const cb = el("input", {type: "checkbox", "data-run": run});
      cb.checked = true;
      cb.addEventListener("change", () => {
        if (window.Plotly && div.data) Plotly.restyle(div, {visible: cb.checked}, byRun[run]);
      });
      box.append(el("label", {}, cb, " " + run));
    });
    const setAll = on => box.querySelectorAll("input").forEach(cb => {
      cb.checked = on;
      cb.dispatchEvent(new Event("change"));
    });
    all.addEventListener("click", () => setAll(true));
    none.addEventListener("click", () => setAll(false));
    plot(div, traces, {title: {text: "loss against step"}, xaxis: {title: {text: "step"}},
      yaxis: {title: {text: "loss"}}, showlegend: runs.length <= 12, margin: {t: 40}});
  }
}

// ---------------------------------------------------------------- metric against swept parameter
{
  const s = section("metric-vs-param", "Each metric against each swept parameter");
  const params = Object.keys(D.sweep);
  const tasks = [...new Set(D.rows.filter(r => r.task).map(r => r.task))];
  if (!params.length || !D.metrics.length || !tasks.length)
    s.append(el("p", {cls: "note", text: "Needs a sweep and at least one evaluation metric."}));
  else {
    const sel = (id, opts) => el("select", {id: id}, ...opts.map(o => el("option", {value: o, text: o})));
    const tSel = sel("mp-task", tasks), mSel = sel("mp-metric", D.metrics), pSel = sel("mp-param", params);
    s.append(el("div", {cls: "controls"}, el("label", {}, "task ", tSel), el("label", {}, "metric ", mSel),
      el("label", {}, "parameter ", pSel)));
    const div = el("div", {id: "metric-param", cls: "chart"});
    s.append(div);
    const traces = () => {
      const task = tSel.value, metric = mSel.value, param = pSel.value;
      const rows = D.rows.filter(r => r.task === task && typeof r[metric] === "number");
      const others = params.filter(p => p !== param);
      const groups = new Map();
      for (const r of rows.filter(r => r.target !== "base")) {
        const key = [...others.map(o => `${o}=${fmt(r[o])}`), `target=${r.target}`].join(", ");
        if (!groups.has(key)) groups.set(key, []);
        groups.get(key).push(r);
      }
      const out = [];
      for (const [key, grp] of [...groups.entries()].sort()) {
        grp.sort((a, b) => (a[param] > b[param]) - (a[param] < b[param]));
        out.push({x: grp.map(r => r[param]), y: grp.map(r => r[metric]), name: key, mode: "lines+markers",
          type: "scatter", text: grp.map(r => r.run)});
      }
      const bases = new Map();
      for (const r of rows.filter(r => r.target === "base")) {
        const k = r.shared || r.run;
        if (!bases.has(k)) bases.set(k, {v: r[metric], n: 0});
        bases.get(k).n += 1;
      }
      const xs = rows.filter(r => r.target !== "base").map(r => r[param]).filter(x => x !== undefined && x !== null);
      const span = xs.length && xs.every(x => typeof x === "number") ? [Math.min(...xs), Math.max(...xs)]
        : [xs[0], xs[xs.length - 1]];
      for (const [k, b] of bases) {
        out.push({x: span, y: [b.v, b.v], mode: "lines", line: {dash: "dot", color: "grey"}, type: "scatter",
          name: k.startsWith("shared/") ? `base model (shared by ${b.n} runs)` : `base model (${k})`});
      }
      const layout = {title: {text: `${task}: ${metric} vs ${param}`}, xaxis: {title: {text: param}},
        yaxis: {title: {text: `${metric} (${lower.has(metric) ? "lower" : "higher"} is better)`}}, margin: {t: 40},
        showlegend: out.length <= 20};
      return [out, layout];
    };
    const redraw = () => { const [t, l] = traces(); Plotly.react(div, t, l, PLOT_CONFIG); };
    [tSel, mSel, pSel].forEach(x => x.addEventListener("change", () => { if (window.Plotly) redraw(); }));
    pending.push(() => { window.ckReport.plots += 1; const [t, l] = traces(); return Plotly.newPlot(div, t, l, PLOT_CONFIG); });
  }
}

// ---------------------------------------------------------------- calibration, ROC, confusion
if (D.risk.length || D.confusion.length) {
  const s = section("risk", "Calibration, ROC and confusion");
  const groups = new Map();
  for (const r of D.risk) {
    const k = `${r.task} / ${r.scorer}`;
    if (!groups.has(k)) groups.set(k, []);
    groups.get(k).push(r);
  }
  let gi = 0;
  for (const [k, items] of groups) {
    s.append(el("h3", {text: k}));
    const rel = el("div", {id: `reliability-${gi}`}), roc = el("div", {id: `roc-${gi}`});
    gi += 1;
    s.append(el("div", {cls: "pair"}, rel, roc));
    const relT = [], rocT = [], drawn = new Set();
    for (const it of items) {
      let label = `${it.run} ${it.target}`;
      if (it.shared) {
        if (drawn.has(it.shared)) continue;
        drawn.add(it.shared);
        label = `${it.target} (shared by ${items.filter(x => x.shared === it.shared).length} runs)`;
      }
      relT.push({x: it.bins.p, y: it.bins.o, text: it.bins.n.map(n => `n=${n}`),
        mode: "lines+markers", name: label, type: "scatter", legendgroup: label});
      if (it.roc.fpr.length) rocT.push({x: it.roc.fpr, y: it.roc.tpr, mode: "lines", name: label,
        type: "scatter", legendgroup: label, showlegend: false});
    }
    const diag = name => ({x: [0, 1], y: [0, 1], mode: "lines", line: {dash: "dot", color: "grey"}, name: name, type: "scatter"});
    const legend = relT.length <= 12;  // more lines: their names on hover, no legend
    plot(rel, [...relT, diag("ideal")], {title: {text: "reliability diagram"}, xaxis: {title: {text: "mean predicted risk"},
      range: [0, 1]}, yaxis: {title: {text: "observed frequency"}, range: [0, 1]}, margin: {t: 40}, showlegend: legend});
    plot(roc, [...rocT, diag("chance")], {title: {text: "ROC curve"}, xaxis: {title: {text: "false positive rate"},
      range: [0, 1]}, yaxis: {title: {text: "true positive rate"}, range: [0, 1]}, margin: {t: 40}, showlegend: legend});
  }
  if (D.confusion.length) {
    s.append(el("h3", {text: "Confusion matrices (rows: actual, columns: predicted)"}));
    const sel = el("select", {id: "confusion-select"}, ...D.confusion.map((c, i) => el("option", {value: String(i),
      text: `${c.task} / ${c.scorer}: ${c.shared ? c.shared : c.run} ${c.target}`})));
    const box = el("div", {id: "confusion"});
    const show = () => {
      const c = D.confusion[Number(sel.value)];
      const max = Math.max(1, ...c.matrix.flat().filter(x => typeof x === "number"));
      const t = el("table", {}, el("tr", {}, el("th", {text: "actual \\ predicted"}), ...c.labels.map(l => el("th", {text: l}))));
      c.matrix.forEach((row, i) => t.append(el("tr", {}, el("th", {text: c.labels[i] ?? ""}), ...row.map(v => {
        const td = el("td", {cls: "num", text: fmt(v)});
        td.style.background = `rgba(43,138,62,${(0.6 * v / max).toFixed(3)})`;
        return td;
      }))));
      box.replaceChildren(t);
    };
    sel.addEventListener("change", show);
    s.append(el("div", {cls: "controls"}, sel), box);
    show();
  }
}

// ---------------------------------------------------------------- multi-turn rewards
if (D.eval_rewards.length) {
  const s = section("eval-rewards", "Multi-turn evaluation: reward components");
  s.append(el("p", {cls: "note", text: "Mean of each score over the conversations of a target (a shared " +
    "evaluation once), from the conversations.jsonl each multi-turn evaluation writes."}));
  const tasks = [...new Set(D.eval_rewards.map(r => r.task))];
  tasks.forEach((task, ti) => {
    const items = D.eval_rewards.filter(r => r.task === task);
    const comps = [...new Set(items.flatMap(r => Object.keys(r.means)))];
    comps.sort((a, b) => (b === "reward") - (a === "reward") || a.localeCompare(b));
    const label = r => r.shared ? `${r.target} (${r.shared})` : `${r.run} ${r.target}`;
    s.append(el("h3", {text: task}));
    const div = el("div", {id: `eval-reward-chart-${ti}`, cls: "chart"});
    s.append(div);
    plot(div, comps.map(k => ({x: items.map(label), y: items.map(r => r.means[k] ?? null), name: k, type: "bar"})),
      {barmode: "group", yaxis: {title: {text: "mean over conversations"}}, margin: {t: 20, b: 120}});
    const t = el("table", {cls: "eval-reward-table"}, el("tr", {}, ...["run", "target", "conversations", "turns",
      ...comps, "conversations file"].map(h => el("th", {text: h}))));
    for (const r of items) t.append(el("tr", {}, el("td", {text: r.shared || r.run}), el("td", {text: r.target}),
      el("td", {cls: "num", text: String(r.conversations)}), el("td", {cls: "num", text: fmt(r.num_turns)}),
      ...comps.map(k => el("td", {cls: "num", text: fmt(r.means[k])})), el("td", {}, link(r.file, "conversations.jsonl"))));
    s.append(t);
  });
}
if (D.rewards) {
  const R = D.rewards;
  const s = section("rewards", "Multi-turn simulation: reward components");
  s.append(el("p", {}, `${R.conversations} conversations in `, link(R.file),
    ". Mean of each component per turn, over the chosen candidates (solid) and over all candidates (dotted)."));
  const div = el("div", {id: "reward-chart", cls: "chart"});
  s.append(div);
  const traces = [];
  R.components.forEach((k, i) => {
    const color = `hsl(${(i * 97) % 360},60%,42%)`;
    for (const [which, dash] of [["chosen", "solid"], ["all", "dot"]])
      traces.push({x: R[which].map(t => t.turn), y: R[which].map(t => t.means[k] ?? null), name: `${k} (${which})`,
        mode: "lines+markers", line: {color: color, dash: dash}, type: "scatter"});
  });
  plot(div, traces, {xaxis: {title: {text: "turn"}, dtick: 1}, yaxis: {title: {text: "mean"}}, margin: {t: 20}});
  const t = el("table", {id: "reward-table"}, el("tr", {}, el("th", {text: "turn"}), el("th", {text: "chosen"}),
    ...R.components.map(k => el("th", {text: k}))));
  for (const tr of R.chosen) t.append(el("tr", {}, el("td", {text: String(tr.turn)}), el("td", {text: String(tr.n)}),
    ...R.components.map(k => el("td", {cls: "num", text: fmt(tr.means[k])}))));
  s.append(t);
}

// ---------------------------------------------------------------- stages
{
  const s = section("stages", "Stage states");
  const bad = D.stages.filter(x => !["done", "shared"].includes(x.state));
  const only = el("input", {type: "checkbox", id: "stages-not-done"});
  s.append(el("div", {cls: "controls"}, el("label", {}, only, " only stages not done"),
    el("span", {cls: "note", text: `${bad.length} of ${D.stages.length} stages not done`})));
  const t = el("table", {id: "stages-table"}, el("tr", {}, ...["folder", "stage", "state", "started", "ended",
    "exit code", "attempts", "logs"].map(h => el("th", {text: h}))));
  for (const st of D.stages) {
    const logs = el("td");
    (st.logs || []).forEach(p => logs.append(link(p, p.split("/").pop()), " "));
    const state = el("td", {cls: "state-" + st.state, text: st.state === "shared" ? `shared: ${st.shared}` : (st.state || "")});
    const tr = el("tr", {"data-state": st.state || ""}, el("td", {text: st.folder}), el("td", {text: st.stage}), state,
      el("td", {text: st.started || ""}), el("td", {text: st.ended || ""}), el("td", {text: fmt(st.exit_code)}),
      el("td", {text: fmt(st.attempts)}), logs);
    t.append(tr);
    if (st.error || st.log_tail || st.error_tail) {
      const d = el("details", {open: ""}, el("summary", {cls: "warn", text: st.error || "error"}));
      if (st.error_tail) d.append(el("pre", {text: st.error_tail}));
      if (st.log_tail) d.append(el("p", {text: "last lines of the error log:"}), el("pre", {cls: "log-tail", text: st.log_tail}));
      const etr = el("tr", {cls: "error-row", "data-state": st.state}, el("td", {colspan: "8"}, d));
      t.append(etr);
    }
  }
  only.addEventListener("change", () => t.querySelectorAll("tr[data-state]").forEach(tr => {
    tr.style.display = only.checked && ["done", "shared"].includes(tr.dataset.state) ? "none" : "";
  }));
  s.append(t);
}

// ---------------------------------------------------------------- environment
{
  const s = section("environment", "Environment");
  const E = D.env;
  if (!E || !E.manifest) s.append(el("p", {cls: "note", text: "No env.json was written yet (no stage started)."}));
  else {
    const M = E.manifest;
    s.append(el("p", {text: `From ${M.from}'s env.json (${E.runs} folders have one).`}));
    const kv = el("table", {id: "env-table"});
    for (const k of ["host", "python", "platform", "hardware", "git_commit", "seed"])
      kv.append(el("tr", {}, el("th", {text: k}), el("td", {text: fmt(M[k])})));
    for (const [p, v] of Object.entries(M.packages)) kv.append(el("tr", {}, el("th", {text: p}), el("td", {text: fmt(v)})));
    s.append(kv);
    const diff = Object.entries(E.differs);
    if (diff.length) {
      s.append(el("h3", {cls: "warn", text: "Differs between runs"}));
      const dt = el("table", {id: "env-differs"});
      for (const [k, vals] of diff) dt.append(el("tr", {}, el("th", {text: k}),
        el("td", {text: vals.map(v => `${fmt(v.value)}: ${v.runs.join(", ")}`).join(" | ")})));
      s.append(dt);
    } else s.append(el("p", {cls: "note", text: "Every run recorded the same packages, python and platform."}));
  }
}

// ---------------------------------------------------------------- charts, once plotly.js is unpacked
window.ckReport.ms.tables = Math.round(performance.now());
async function loadPlotly() {
  if (!pending.length) return;
  if (typeof DecompressionStream === "undefined")
    throw new Error("this browser cannot unpack the embedded charts library (it needs DecompressionStream: " +
      "Chrome 80, Firefox 113, Safari 16.4 or newer); the tables above are complete");
  const b64 = document.getElementById("ck-plotly").textContent.trim();
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  const text = await new Response(new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"))).text();
  (0, eval)(text);
  window.ckReport.ms.unpacked = Math.round(performance.now());
  for (const draw of pending) await draw();
  window.ckReport.ms.charts = Math.round(performance.now());
}
loadPlotly().then(() => { window.ckReport.ready = true; }, err => {
  window.ckReport.error = String(err && err.message || err);
  window.ckReport.ready = true;
  document.querySelectorAll(".chart, .pair > div").forEach(d => {
    d.style.minHeight = "0";
    d.replaceChildren(el("p", {cls: "warn", text: "Chart not drawn: " + window.ckReport.error}));
  });
});
"""
