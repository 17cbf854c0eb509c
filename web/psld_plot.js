// Live plot of the PSLD residuals: while a PSLD sampler runs, the server sends one "psld.progress" event per step
// (nodes/progress.py: {node, step, total, values: {measurement: [per batch item], gluing: [...]}}, non-finite as
// null). Each sampler node draws its own curves of ||A x_hat - y|| and the gluing loss on a canvas in the node; the
// last run's curves and final values stay until that node runs again.
// Received text is only ever shown with textContent or drawn on the canvas.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EVENT = "psld.progress";
const SAMPLERS = ["PSLD_Sampler", "PSLD_PosteriorSampler"]; // nodes that report steps (nodes/bridge_sampler.py)
const WIDGET_NAME = "psld_residual_plot";
const PLOT_HEIGHT = 170;
const SERIES = [ // known series first, in this order; others get the spare colours
  { key: "measurement", label: "‖A x̂ − y‖", colour: "#f5a623" },
  { key: "gluing", label: "gluing", colour: "#4fc3f7" },
];
const SPARE_COLOURS = ["#b39ddb", "#81c784", "#e57373"];
const MAX_STEPS = 100000; // a plot keeps at most this many steps (a sampler never runs that long)

function kind(node) {
  return node?.comfyClass ?? node?.type;
}

// The graph node for an execution id ("12", or "7:12" for a node inside subgraph node 7).
function nodeForExecutionId(id) {
  let graph = app.rootGraph ?? app.graph;
  let node = null;
  for (const part of String(id).split(":")) {
    if (!graph) return null;
    node = graph.getNodeById(Number(part)) ?? graph.getNodeById(part);
    if (!node) return null;
    graph = node.subgraph;
  }
  return node;
}

// Every node with a plot, in the root graph and in subgraphs.
function plottedNodes() {
  const found = [];
  const seen = new Set();
  const visit = (graph) => {
    if (!graph || seen.has(graph)) return;
    seen.add(graph);
    for (const node of graph.nodes ?? []) {
      if (node.psldPlot) found.push(node);
      visit(node.subgraph);
    }
  };
  visit(app.rootGraph ?? app.graph);
  return found;
}

function emptyRun() {
  return { total: 0, lastStep: -1, steps: [], values: new Map(), stale: false, stopped: false };
}

function makeView(node) {
  const root = document.createElement("div");
  root.className = "psld-plot";
  Object.assign(root.style, {
    display: "flex", flexDirection: "column", width: "100%", height: "100%", minHeight: `${PLOT_HEIGHT}px`,
    boxSizing: "border-box", gap: "2px",
  });
  const canvas = document.createElement("canvas");
  canvas.className = "psld-plot-canvas";
  Object.assign(canvas.style, { flex: "1 1 auto", minHeight: "0", width: "100%", background: "#1b1b1b",
    borderRadius: "4px" });
  const caption = document.createElement("div");
  caption.className = "psld-plot-caption";
  Object.assign(caption.style, { flex: "0 0 auto", font: "11px sans-serif", color: "#bbb", lineHeight: "13px",
    maxHeight: "26px", overflow: "hidden", overflowWrap: "anywhere" });
  root.append(canvas, caption);
  return { root, canvas, caption };
}

function addPlotWidget(node) {
  if (node.psldPlot) return node.psldPlot;
  const view = makeView(node);
  const widget = node.addDOMWidget(WIDGET_NAME, "psld_plot", view.root, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => PLOT_HEIGHT,
  });
  widget.serialize = false; // older frontends read the flag on the widget, newer ones in options
  node.psldPlot = { view, run: emptyRun() };
  if (typeof ResizeObserver !== "undefined") new ResizeObserver(() => draw(node)).observe(view.canvas);
  const size = node.computeSize?.();
  if (size) node.setSize?.([Math.max(node.size[0], size[0]), Math.max(node.size[1], size[1])]);
  show(node);
  return node.psldPlot;
}

function record(node, detail) {
  const plot = addPlotWidget(node);
  const step = Number(detail.step);
  const total = Number(detail.total);
  if (!Number.isInteger(step) || step < 0 || step >= MAX_STEPS || !Number.isInteger(total) || total < 1) return;
  if (plot.run.stale || step <= plot.run.lastStep) plot.run = emptyRun(); // a new run of this node
  const run = plot.run;
  run.total = Math.min(total, MAX_STEPS);
  run.lastStep = step;
  run.steps.push(step);
  const values = detail.values && typeof detail.values === "object" ? detail.values : {};
  for (const [key, items] of Object.entries(values)) {
    if (!Array.isArray(items)) continue;
    if (!run.values.has(key)) run.values.set(key, []);
    run.values.get(key).push(items.map((v) => (typeof v === "number" && Number.isFinite(v) ? v : null)));
  }
  show(node);
}

function format(value) {
  if (value === null || value === undefined) return "—";
  return Math.abs(value) >= 1e4 || (value !== 0 && Math.abs(value) < 1e-3) ? value.toExponential(2)
    : value.toPrecision(3);
}

function mean(items) {
  const finite = items.filter((v) => v !== null);
  return finite.length ? finite.reduce((a, b) => a + b, 0) / finite.length : null;
}

function seriesList(run) {
  const known = SERIES.filter((s) => run.values.has(s.key));
  const others = [...run.values.keys()].filter((k) => !SERIES.some((s) => s.key === k))
    .map((key, i) => ({ key, label: key, colour: SPARE_COLOURS[i % SPARE_COLOURS.length] }));
  return [...known, ...others];
}

function show(node) {
  const { view, run } = node.psldPlot;
  const points = run.steps.length;
  const done = points > 0 && run.lastStep + 1 >= run.total;
  view.root.dataset.points = String(points);
  view.root.dataset.total = String(run.total);
  view.root.dataset.state = points === 0 ? "waiting" : done ? "done" : run.stopped ? "stopped" : "running";
  if (points === 0) {
    view.caption.textContent = "Residuals per step appear here while the sampler runs.";
  } else {
    const batch = Math.max(0, ...[...run.values.values()].map((rows) => rows[rows.length - 1].length));
    const parts = seriesList(run).map((s) => {
      const rows = run.values.get(s.key);
      return `${s.label} ${format(mean(rows[rows.length - 1]))}`;
    });
    const where = done ? `final (${run.total} steps)`
      : `${run.stopped ? "stopped at " : ""}step ${run.lastStep + 1}/${run.total}`;
    view.caption.textContent = `${where}: ${parts.join(", ")}${batch > 1 ? ` (mean of ${batch})` : ""}`;
  }
  draw(node);
  node.setDirtyCanvas?.(true, false);
}

// Tick values for an axis from low to high (in plotted units: log10 of the value on a log axis): 1-2-5 steps.
function ticks(low, high, logScale, most = 5) {
  if (logScale) {
    for (const mantissas of [[1], [1, 2, 5], [1, 1.5, 2, 3, 5, 7]]) {
      const found = [];
      for (let e = Math.floor(low); e <= Math.ceil(high); e++) {
        for (const m of mantissas) {
          const t = Math.log10(m) + e;
          if (t >= low - 1e-9 && t <= high + 1e-9) found.push(t);
        }
      }
      if (found.length < 2) continue;
      const every = Math.ceil(found.length / most);
      return found.filter((_, i) => i % every === 0);
    }
    return [low, high];
  }
  const raw = (high - low) / most;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((m) => m >= raw);
  const found = [];
  for (let t = Math.ceil(low / step) * step; t <= high + 1e-9 * step; t += step) found.push(t);
  return found.length >= 2 ? found : [low, high];
}

function draw(node) {
  const { view, run } = node.psldPlot;
  const canvas = view.canvas;
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
  const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, width, height);
  const series = seriesList(run);
  const all = series.flatMap((s) => run.values.get(s.key).flat()).filter((v) => v !== null);
  if (canvas.clientWidth === 0 || all.length === 0) return;

  const logScale = all.every((v) => v > 0);
  const transform = logScale ? Math.log10 : (v) => v;
  let low = Math.min(...all.map(transform));
  let high = Math.max(...all.map(transform));
  const span = high - low;
  if (span < 1e-9) { low -= logScale ? 0.1 : 0.5; high += logScale ? 0.1 : 0.5; }
  else { low -= 0.04 * span; high += 0.04 * span; }
  const pad = { left: 42 * ratio, right: 10 * ratio, top: 18 * ratio, bottom: 24 * ratio };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const lastX = Math.max(1, run.total - 1);
  const xOf = (step) => pad.left + (plotW * step) / lastX;
  const yAt = (t) => pad.top + plotH * (1 - (t - low) / (high - low));
  const yOf = (v) => yAt(transform(v));

  ctx.font = `${10 * ratio}px sans-serif`;
  ctx.lineWidth = ratio;
  ctx.fillStyle = "#999";
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (const t of ticks(low, high, logScale)) {  // horizontal grid with value labels
    const y = Math.round(yAt(t)) + 0.5;
    ctx.strokeStyle = "#333";
    ctx.beginPath(); ctx.moveTo(pad.left, y); ctx.lineTo(pad.left + plotW, y); ctx.stroke();
    ctx.fillText(format(logScale ? 10 ** t : t), pad.left - 3 * ratio, y);
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  const every = Math.max(1, Math.ceil(run.total / 8));
  for (let step = 0; step < run.total; step += every) {  // step numbers, 1-based as the progress bar counts
    ctx.fillText(String(step + 1), xOf(step), pad.top + plotH + 2 * ratio);
  }
  ctx.fillText(`step${logScale ? "  (log scale)" : ""}`, pad.left + plotW / 2, pad.top + plotH + 12 * ratio);
  ctx.strokeStyle = "#555";
  ctx.strokeRect(pad.left, pad.top, plotW, plotH);

  let legendX = pad.left;
  for (const s of series) {
    const rows = run.values.get(s.key);
    const items = Math.max(...rows.map((r) => r.length));
    ctx.strokeStyle = s.colour;
    ctx.fillStyle = s.colour;
    ctx.lineWidth = 1.5 * ratio;
    for (let item = 0; item < items; item++) {  // one line per batch item
      ctx.globalAlpha = item === 0 ? 1 : 0.55;
      ctx.beginPath();
      let drawing = false;
      rows.forEach((row, i) => {
        const v = row[item];
        if (v === null || v === undefined) { drawing = false; return; }  // non-finite: a gap
        const x = xOf(run.steps[i]);
        const y = yOf(v);
        if (drawing) ctx.lineTo(x, y); else ctx.moveTo(x, y);
        drawing = true;
        if (rows.length <= 40) ctx.fillRect(x - 1.5 * ratio, y - 1.5 * ratio, 3 * ratio, 3 * ratio);
      });
      ctx.stroke();
    }
    ctx.globalAlpha = 1;
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillRect(legendX, 4 * ratio, 8 * ratio, 8 * ratio);
    ctx.fillText(s.label, legendX + 11 * ratio, 3 * ratio);
    legendX += ctx.measureText(s.label).width + 24 * ratio;
  }
}

app.registerExtension({
  name: "psld.residualPlot",
  setup() {
    api.addEventListener(EVENT, (event) => {
      const detail = event.detail;
      if (!detail || typeof detail !== "object") return;
      const node = nodeForExecutionId(detail.node);
      if (node?.addDOMWidget) record(node, detail);
    });
    api.addEventListener("execution_start", () => {
      // the next step any plot receives starts a new curve; plots of nodes that do not run keep theirs
      for (const node of plottedNodes()) node.psldPlot.run.stale = true;
    });
    const stop = () => {  // a failed or interrupted run: curves that did not finish say so
      for (const node of plottedNodes()) {
        const run = node.psldPlot.run;
        if (!run.stale && run.steps.length && run.lastStep + 1 < run.total && !run.stopped) {
          run.stopped = true;
          show(node);
        }
      }
    };
    api.addEventListener("execution_error", stop);
    api.addEventListener("execution_interrupted", stop);
  },
  nodeCreated(node) {
    if (SAMPLERS.includes(kind(node))) addPlotWidget(node);
  },
});
