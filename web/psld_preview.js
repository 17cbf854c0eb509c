// Operator previews: PSLD_LinearOperator and PSLD_Degrade show what the operator A does (the mask, the blur kernel,
// or a test pattern before/after), drawn by the server (POST /psld/preview, nodes/routes.py) from the operator
// node's widget values, and redrawn when a widget or a link changes.
// Received text is only ever shown with textContent.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const OPERATOR = "PSLD_LinearOperator";
const DEGRADE = "PSLD_Degrade";
// PSLD_LinearOperator's widgets, as the route accepts them (nodes/routes.py checks them against the node).
const OPERATOR_WIDGETS = ["task", "width", "height", "seed", "projection", "box_size", "box_placement",
  "drop_fraction", "sr_scale", "sr_mode", "kernel_size", "blur_sigma", "motion_intensity"];
const WIDGET_NAME = "psld_operator_preview";
const DEBOUNCE_MS = 250;
const PREVIEW_HEIGHT = 180;

function kind(node) {
  return node?.comfyClass ?? node?.type;
}

function makeView() {
  const root = document.createElement("div");
  root.className = "psld-preview";
  Object.assign(root.style, {
    display: "flex", flexDirection: "column", alignItems: "center", gap: "2px", width: "100%", height: "100%",
    minHeight: `${PREVIEW_HEIGHT}px`, boxSizing: "border-box", overflow: "hidden",
  });
  const image = document.createElement("img");
  image.className = "psld-preview-image";
  image.alt = "operator preview";
  Object.assign(image.style, {
    flex: "1 1 auto", minHeight: "0", maxWidth: "100%", objectFit: "contain", imageRendering: "pixelated",
    display: "none",
  });
  const caption = document.createElement("div");
  caption.className = "psld-preview-caption";
  Object.assign(caption.style, {
    flex: "0 0 auto", font: "11px sans-serif", color: "#bbb", textAlign: "center", lineHeight: "13px",
    maxHeight: "26px", overflow: "hidden", maxWidth: "100%", overflowWrap: "anywhere",
  });
  root.append(image, caption);
  return { root, image, caption };
}

function addPreviewWidget(node) {
  const view = makeView();
  const widget = node.addDOMWidget(WIDGET_NAME, "psld_preview", view.root, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => PREVIEW_HEIGHT,
  });
  widget.serialize = false; // older frontends read the flag on the widget, newer ones in options
  node.psldPreview = { view, timer: null, requested: null, shown: null, sequence: 0, objectUrl: null };
  const size = node.computeSize?.();
  if (size) node.setSize?.([Math.max(node.size[0], size[0]), Math.max(node.size[1], size[1])]);
  return widget;
}

function widgetValues(node) {
  const params = {};
  for (const name of OPERATOR_WIDGETS) {
    const widget = node.widgets?.find((w) => w.name === name);
    if (widget && widget.value !== undefined) params[name] = widget.value;
  }
  return params;
}

// The PSLD_LinearOperator feeding a node's "operator" input, through reroutes; null if there is none.
function upstreamOperator(node) {
  let current = node;
  for (let hops = 0; hops < 32 && current; hops++) {
    const slot = kind(current) === DEGRADE
      ? current.inputs?.findIndex((input) => input.name === "operator")
      : 0;
    if (slot === undefined || slot < 0) return null;
    const source = current.getInputNode?.(slot);
    if (!source) return null;
    if (kind(source) === OPERATOR) return source;
    current = source; // a reroute or another pass-through node: follow its first input
  }
  return null;
}

function downstreamDegradeNodes(node) {
  const found = [];
  const graph = node.graph;
  for (const output of node.outputs ?? []) {
    for (const linkId of output.links ?? []) {
      const link = graph?.links?.get ? graph.links.get(linkId) : graph?.links?.[linkId];
      const target = link && graph.getNodeById(link.target_id);
      if (kind(target) === DEGRADE) found.push(target);
    }
  }
  return found;
}

function showText(state, text) {
  state.view.caption.textContent = text;
}

function showImage(state, blob, caption) {
  if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
  state.objectUrl = URL.createObjectURL(blob);
  state.view.image.src = state.objectUrl;
  state.view.image.style.display = "";
  state.view.root.dataset.loaded = "true";
  showText(state, caption);
}

function hideImage(state) {
  state.view.image.style.display = "none";
  state.view.root.dataset.loaded = "false";
}

async function refresh(node) {
  const state = node.psldPreview;
  if (!state) return;
  const operator = kind(node) === OPERATOR ? node : upstreamOperator(node);
  if (!operator) {
    state.requested = state.shown = null;
    hideImage(state);
    showText(state, "Connect a PSLD Linear Operator to see what it does.");
    return;
  }
  const params = widgetValues(operator);
  const key = JSON.stringify(params);
  if (key === state.requested) return;
  state.requested = key;
  if (params.task === "mask_inpaint") {
    state.shown = key;
    hideImage(state);
    showText(state, "mask_inpaint: the hole is the connected MASK (white = hole).");
    return;
  }
  const sequence = ++state.sequence;
  showText(state, "drawing…");
  let response;
  try {
    response = await api.fetchApi("/psld/preview", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: key,
    });
  } catch (error) {
    if (sequence === state.sequence) {
      state.requested = null;
      showText(state, `preview unavailable: ${error?.message ?? error}`);
    }
    return;
  }
  if (sequence !== state.sequence) return; // a newer request was sent meanwhile
  if (response.ok) {
    const blob = await response.blob();
    if (sequence !== state.sequence) return;
    const description = response.headers.get("X-PSLD-Description") ?? "";
    state.shown = key;
    const prefix = kind(node) === DEGRADE ? "y = A x + noise, A: " : "";
    showImage(state, blob, prefix + description);
  } else {
    let message = `HTTP ${response.status}`;
    try {
      message = (await response.json()).error ?? message;
    } catch { /* not JSON: keep the status */ }
    if (sequence !== state.sequence) return;
    state.shown = key;
    hideImage(state);
    showText(state, message);
  }
}

function schedule(node) {
  const state = node.psldPreview;
  if (!state) return;
  clearTimeout(state.timer);
  state.timer = setTimeout(() => {
    refresh(node).finally(() => node.setDirtyCanvas?.(true, true));
    if (kind(node) === OPERATOR) for (const degrade of downstreamDegradeNodes(node)) schedule(degrade);
  }, DEBOUNCE_MS);
}

function watchWidgets(node) {
  for (const widget of node.widgets ?? []) {
    if (widget.name === WIDGET_NAME || widget.psldWatched) continue;
    const callback = widget.callback;
    widget.callback = function (...args) {
      const result = callback?.apply(this, args);
      schedule(node);
      return result;
    };
    widget.psldWatched = true;
  }
}

app.registerExtension({
  name: "psld.operatorPreview",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== OPERATOR && nodeData.name !== DEGRADE) return;
    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function (...args) {
      const result = onConnectionsChange?.apply(this, args);
      schedule(this);
      return result;
    };
    const onWidgetChanged = nodeType.prototype.onWidgetChanged;
    nodeType.prototype.onWidgetChanged = function (...args) {
      const result = onWidgetChanged?.apply(this, args);
      schedule(this);
      return result;
    };
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function (...args) {
      const result = onConfigure?.apply(this, args);
      schedule(this);
      return result;
    };
  },
  nodeCreated(node) {
    if (kind(node) !== OPERATOR && kind(node) !== DEGRADE) return;
    addPreviewWidget(node);
    watchWidgets(node);
    schedule(node);
  },
});
