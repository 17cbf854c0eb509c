// Operator previews: PSLD_LinearOperator and PSLD_Degrade show what the operator A does (the mask, the blur kernel,
// or a test pattern before/after), drawn by the server (POST /psld/preview, nodes/routes.py) from the operator
// node's widget values, and redrawn when a widget or a link changes. For mask_inpaint the hole is the MASK input:
// when it comes from a LoadImage-like node, the page draws that image's mask itself (transparent = hole, as
// LoadImage's MASK output is 1 - alpha), white = hole.
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
  node.psldPreview = { view, timer: null, requested: null, sequence: 0, objectUrl: null };
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

// The PSLD_LinearOperator feeding a Degrade's "operator" input, through Reroute nodes; null if there is none.
function upstreamOperator(node) {
  let current = node;
  let slot = node.inputs?.findIndex((input) => input.name === "operator") ?? -1;
  for (let hops = 0; hops < 32 && slot >= 0; hops++) {
    const source = current.getInputNode?.(slot);
    if (kind(source) === OPERATOR) return source;
    if (kind(source) !== "Reroute") return null;
    current = source;
    slot = 0;
  }
  return null;
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

// The /view URL of the image picked in a node's "image" widget ("name.png", "sub/name.png [input]"), or null.
function pickedImageUrl(node) {
  const value = node?.widgets?.find((w) => w.name === "image")?.value;
  if (typeof value !== "string" || !value) return null;
  const typed = value.match(/^(.*) \[(input|output|temp)\]$/);
  const path = typed ? typed[1] : value;
  const cut = path.lastIndexOf("/");
  const query = new URLSearchParams({ filename: path.slice(cut + 1), subfolder: cut >= 0 ? path.slice(0, cut) : "",
    type: typed ? typed[2] : "input" });
  return api.apiURL(`/view?${query}`);
}

// A PNG of the image's mask as the node will read it (white = hole: alpha < 128, i.e. MASK >= 0.5), its size and
// hole fraction. Drawn on a canvas in the page: nothing leaves the page.
async function maskPicture(url) {
  const image = new Image();
  image.src = url;
  await image.decode();
  const canvas = document.createElement("canvas");
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(image, 0, 0);
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
  let holes = 0;
  for (let i = 0; i < pixels.data.length; i += 4) {
    const hole = pixels.data[i + 3] < 128;
    holes += hole;
    pixels.data[i] = pixels.data[i + 1] = pixels.data[i + 2] = hole ? 255 : 0;
    pixels.data[i + 3] = 255;
  }
  ctx.putImageData(pixels, 0, 0);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  return { blob, width: canvas.width, height: canvas.height, holeFraction: holes / (canvas.width * canvas.height) };
}

// What PSLD_Degrade makes, with its own noise level: "y = A x + 0.05 n" or "y = A x (no noise)".
function measurementText(degrade) {
  const sigma = degrade.widgets?.find((w) => w.name === "sigma_y")?.value;
  if (typeof sigma !== "number" || !(sigma > 0)) return "y = A x (no noise)";
  return `y = A x + ${Number(sigma.toPrecision(3))} n`;
}

// The mask_inpaint preview: the mask of the image picked in the node feeding the operator's MASK input.
async function showMask(node, state, source, params, sequence) {
  const url = pickedImageUrl(source);
  if (!source || !url) {
    hideImage(state);
    showText(state, source ? "mask_inpaint: the hole is the connected MASK (white = hole)."
      : "mask_inpaint: connect a MASK (white = hole), e.g. LoadImage's mask.");
    return;
  }
  let mask;
  try {
    mask = await maskPicture(url);
  } catch {
    if (sequence === state.sequence) {
      state.requested = null; // try again on the next change
      hideImage(state);
      showText(state, "mask_inpaint: the MASK image could not be read.");
    }
    return;
  }
  if (sequence !== state.sequence) return;
  const size = `${mask.width}x${mask.height}`;
  let problem = "";
  if (mask.holeFraction === 0) {
    problem = " No hole: paint one in the mask editor (the image has no transparent pixel).";
  } else if (mask.holeFraction === 1) {
    problem = " Everything is a hole: nothing is observed.";
  } else if (mask.width !== params.width || mask.height !== params.height) {
    problem = ` The operator acts on ${params.width}x${params.height}: set width and height to match.`;
  }
  const prefix = kind(node) === DEGRADE ? `${measurementText(node)}, ` : "";
  const hole = `${(100 * mask.holeFraction).toFixed(1)}% hole`;
  showImage(state, mask.blob, `${prefix}MASK ${size} from ${source.title ?? source.type}, ${hole}.${problem}`);
}

async function refresh(node) {
  const state = node.psldPreview;
  if (!state) return;
  const operator = kind(node) === OPERATOR ? node : upstreamOperator(node);
  if (!operator) {
    state.requested = null;
    hideImage(state);
    showText(state, "Connect a PSLD Linear Operator to see what it does.");
    return;
  }
  const params = widgetValues(operator);
  const body = JSON.stringify(params);
  const maskSlot = operator.inputs?.findIndex((input) => input.name === "mask") ?? -1;
  const maskSource = params.task === "mask_inpaint" && maskSlot >= 0 ? operator.getInputNode?.(maskSlot) : null;
  const shown = params.task === "mask_inpaint" ? `${body} ${maskSource?.id} ${pickedImageUrl(maskSource)}` : body;
  const key = kind(node) === DEGRADE ? `${shown} ${measurementText(node)}` : shown;
  if (key === state.requested) return;
  state.requested = key;
  const sequence = ++state.sequence;
  if (params.task === "mask_inpaint") {
    await showMask(node, state, maskSource, params, sequence);
    return;
  }
  showText(state, "drawing…");
  let response;
  try {
    response = await api.fetchApi("/psld/preview", {
      method: "POST", headers: { "Content-Type": "application/json" }, body,
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
    const prefix = kind(node) === DEGRADE ? `${measurementText(node)}, A: ` : "";
    showImage(state, blob, prefix + description);
  } else {
    let message = `HTTP ${response.status}`;
    try {
      message = (await response.json()).error ?? message;
    } catch { /* not JSON: keep the status */ }
    if (sequence !== state.sequence) return;
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
    // a Degrade shows its operator's preview: let every Degrade of the graph check whether its input changed
    if (kind(node) !== OPERATOR) return;
    for (const other of node.graph?.nodes ?? []) if (kind(other) === DEGRADE) schedule(other);
  }, DEBOUNCE_MS);
}

function watchWidgets(node, onChange) {
  for (const widget of node.widgets ?? []) {
    if (widget.name === WIDGET_NAME || widget.psldWatched) continue;
    const callback = widget.callback;
    widget.callback = function (...args) {
      const result = callback?.apply(this, args);
      onChange();
      return result;
    };
    widget.psldWatched = true;
  }
}

// A node that can feed an operator's mask changed its image: the previews that draw masks look again.
function scheduleOperators(graph) {
  for (const node of graph?.nodes ?? []) if (kind(node) === OPERATOR) schedule(node);
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
    if (kind(node) === OPERATOR || kind(node) === DEGRADE) {
      addPreviewWidget(node);
      watchWidgets(node, () => schedule(node));
      schedule(node);
    } else if (node.outputs?.some((output) => output.type === "MASK")) {
      watchWidgets(node, () => scheduleOperators(node.graph));
    }
  },
});
