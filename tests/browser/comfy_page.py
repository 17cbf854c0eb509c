"""Drive ComfyUI's real frontend in headless Debian Chromium (Playwright, no downloaded browser).

Nothing but loopback is reachable from the page: Chromium resolves every other host name to NOTFOUND, and every
request to a host other than 127.0.0.1/localhost is aborted and recorded (a test asserts there were none).
Console errors and uncaught page errors are recorded with the phase of the test in which they happened.
"""
from __future__ import annotations

import json
import os
import re
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

CHROMIUM = os.environ.get("PSLD_CHROMIUM", "/usr/bin/chromium")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
CHROMIUM_ARGS = [
    "--no-sandbox",  # needed as root (CI containers)
    "--disable-gpu", "--disable-quic", "--no-first-run", "--no-pings", "--disable-sync",
    "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
    "--disable-extensions", "--disable-domain-reliability",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
]
VIEWPORT = {"width": 1400, "height": 900}
EMPTY_WORKFLOW = {"last_node_id": 0, "last_link_id": 0, "nodes": [], "links": [], "groups": [], "config": {},
                  "extra": {}, "version": 0.4}
PSLD_EXTENSIONS = ("psld.operatorPreview", "psld.residualPlot")

# Console errors the host frontend prints by itself, with or without this pack (checked by loading the page of a
# host without the pack). They are logged, not failed on; anything else after start-up fails the test.
HOST_NOISE = [
    # start-up probes for optional user files (user.css, workflow and template lists) answer 404
    re.compile(r"^Failed to load resource: the server responded with a status of 404"),
]
# With --disable-api-nodes the server sends Content-Security-Policy connect-src 'self', so the page cannot reach
# anything outside loopback. Frontend 1.32.x still tries to look up the node packs of a loaded workflow in the
# registry (api.comfy.org, for any custom node); the browser blocks that before any connection is made. Such
# blocked attempts are recorded in PageLog.blocked (and reported), not counted as errors. No other host is allowed.
BLOCKED_REGISTRY_LOOKUP = re.compile(r"^Connecting to '(https://api\.comfy\.org/[^']*)' violates the following "
                                     r"Content Security Policy directive")


@dataclass
class PageLog:
    """What the page reported: console errors/warnings, uncaught errors, off-loopback requests, by test phase."""

    phase: str = "start-up"
    console: list[dict] = field(default_factory=list)
    page_errors: list[dict] = field(default_factory=list)
    outside_requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # registry lookups the page's CSP blocked

    def on_console(self, message) -> None:
        lookup = BLOCKED_REGISTRY_LOOKUP.match(message.text) if message.type == "error" else None
        if lookup:
            self.blocked.append(lookup.group(1))
        elif message.type in ("error", "warning"):
            self.console.append({"phase": self.phase, "type": message.type, "text": message.text,
                                 "url": (message.location or {}).get("url", "")})

    def on_page_error(self, error) -> None:
        self.page_errors.append({"phase": self.phase, "text": str(error)})

    def errors(self, *, after_start_up: bool = True) -> list[str]:
        """Console errors and uncaught errors that are not known host noise. Start-up errors count only when they
        come from this pack (its extension files or its messages)."""
        found = [f"[{e['phase']}] uncaught: {e['text']}" for e in self.page_errors
                 if e["phase"] != "start-up" or not after_start_up or _is_ours(e["text"])]
        for entry in self.console:
            if entry["type"] != "error":
                continue
            ours = _is_ours(entry["text"]) or _is_ours(entry["url"])
            if after_start_up and entry["phase"] == "start-up" and not ours:
                continue
            if not ours and any(pattern.search(entry["text"]) for pattern in HOST_NOISE):
                continue
            found.append(f"[{entry['phase']}] console error: {entry['text']} ({entry['url']})")
        return found

    def report(self) -> str:
        lines = [f"[{e['phase']}] {e['type']}: {e['text'][:300]}" for e in self.console]
        lines += [f"[{e['phase']}] uncaught: {e['text'][:300]}" for e in self.page_errors]
        lines += [f"outside request: {url}" for url in self.outside_requests]
        lines += [f"blocked by the page's CSP: {url}" for url in self.blocked]
        return "\n".join(lines)


def _is_ours(text: str) -> bool:
    return bool(re.search(r"psld", text or "", re.IGNORECASE))


def launch(playwright):
    """Headless Debian Chromium through Playwright (executable_path: no browser download)."""
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} not found: run tools/install_browser.sh (apt-get install chromium).")
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def open_comfy(browser, base_url: str, *, vue_nodes: bool = False):
    """A new page on ComfyUI at base_url, started with an empty graph, in classic or Vue ("Nodes 2.0") node
    rendering. Returns (page, log)."""
    # the rendering is a user setting, stored by the server: set it before the page starts, as switching it
    # in a running page re-creates the graph asynchronously
    post_setting(base_url, "Comfy.VueNodes.Enabled", vue_nodes)
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    log = PageLog()

    def guard(route):
        host = urlsplit(route.request.url).hostname or ""
        if route.request.url.startswith(("data:", "blob:")) or host in LOOPBACK_HOSTS:
            route.continue_()
        else:
            log.outside_requests.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    # start from an empty graph instead of the host's default workflow (whose models are not installed)
    context.add_init_script(f"localStorage.setItem('workflow', {json.dumps(json.dumps(EMPTY_WORKFLOW))});")
    page = context.new_page()
    page.on("console", log.on_console)
    page.on("pageerror", log.on_page_error)
    page.goto(base_url)
    # ready: our extensions registered, and the start-up workflow restored (it would replace a graph loaded
    # earlier); the stores throw while the app is still being created
    page.wait_for_function("""(names) => { try {
        const app = window.comfyAPI?.app?.app;
        return !!(app?.canvas && names.every((n) => app.extensions.some((e) => e.name === n))
                  && app.extensionManager?.workflow?.activeWorkflow);
      } catch { return false; } }""", arg=list(PSLD_EXTENSIONS), timeout=90_000, polling=100)
    page.wait_for_timeout(500)  # let the start-up dialogs settle
    rendering = page.evaluate("() => window.comfyAPI.app.app.extensionManager.setting.get('Comfy.VueNodes.Enabled')")
    assert bool(rendering) == vue_nodes, f"Comfy.VueNodes.Enabled is {rendering!r} in the page"
    page.evaluate("() => window.comfyAPI.app.app.graph.clear()")
    install_event_recorder(page)
    log.phase = "test"
    return page, log


def post_setting(base_url: str, name: str, value) -> None:
    """Store a user setting on the server (POST /settings/<id>), as the settings dialog does."""
    request = urllib.request.Request(f"{base_url}/settings/{name}", data=json.dumps(value).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).close()


def install_event_recorder(page) -> None:
    """Record the server's websocket events the tests wait for (in window.__psldEvents); window.__psldNode(id)
    finds a node of the graph by id (number or string, as frontends differ)."""
    page.evaluate("""() => {
      window.__psldNode = (id) => {
        const graph = window.comfyAPI.app.app.graph;
        return graph.getNodeById(id) ?? graph.getNodeById(Number(id));
      };
      if (window.__psldEvents) return;
      const events = window.__psldEvents = [];
      const api = window.comfyAPI.api.api;
      for (const type of ["psld.progress", "execution_start", "execution_success", "execution_error",
                          "execution_interrupted", "executed"]) {
        api.addEventListener(type, (e) => events.push({ type, detail: e.detail }));
      }
    }""")


def load_workflow(page, workflow: dict) -> None:
    """Open a UI-format workflow the way the app's Open / drag-and-drop does; returns once its nodes are in the
    graph (newer frontends finish loading after loadGraphData resolves)."""
    page.evaluate("async (workflow) => { await window.comfyAPI.app.app.loadGraphData(workflow); }", workflow)
    try:
        page.wait_for_function("(n) => window.comfyAPI.app.app.graph.nodes.length === n",
                               arg=len(workflow["nodes"]), timeout=30_000)
    except Exception as error:
        state = page.evaluate("() => { const app = window.comfyAPI.app.app; return { nodes: app.graph.nodes.map("
                              "(n) => n.type), same: app.graph === app.canvas.graph, dialogs: [...document"
                              ".querySelectorAll('[role=dialog]')].map((d) => d.textContent.slice(0, 200)) }; }")
        raise AssertionError(f"the workflow did not load: {state}") from error


def fit_view(page) -> None:
    """Zoom the canvas so the whole graph is visible (for screenshots). Vue nodes can be taller than node.size,
    so their rendered boxes are measured and the zoom corrected once."""
    fit = """(correction) => {
      const app = window.comfyAPI.app.app;
      const nodes = app.graph.nodes;
      if (!nodes.length) return 1;
      const xs = nodes.flatMap((n) => [n.pos[0], n.pos[0] + n.size[0]]);
      const ys = nodes.flatMap((n) => [n.pos[1] - 40, n.pos[1] + n.size[1] * correction]);
      const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
      const el = app.canvas.canvas;
      const top = 130, bottom = 20;  // screen pixels kept free for the top bars and the bottom edge
      const scale = Math.min(1.2, 0.92 * el.clientWidth / (x1 - x0), (el.clientHeight - top - bottom) / (y1 - y0));
      app.canvas.ds.scale = scale;
      app.canvas.ds.offset = [-x0 + (el.clientWidth / scale - (x1 - x0)) / 2, -y0 + top / scale];
      app.canvas.setDirty(true, true);
    }"""
    page.evaluate(fit, 1)
    page.wait_for_timeout(500)
    overflow = page.evaluate("""() => {
      const boxes = [...document.querySelectorAll("[data-node-id]")].map((e) => e.getBoundingClientRect())
        .filter((r) => r.height > 0);
      if (!boxes.length) return 1;
      const app = window.comfyAPI.app.app;
      const graphBottom = Math.max(...app.graph.nodes.map((n) => n.pos[1] + n.size[1]));
      const drawnBottom = (graphBottom + app.canvas.ds.offset[1]) * app.canvas.ds.scale;
      const top = Math.min(...boxes.map((r) => r.top));
      return Math.max(1, (Math.max(...boxes.map((r) => r.bottom)) - top) / Math.max(1, drawnBottom - top));
    }""")
    if overflow > 1.02:
        page.evaluate(fit, overflow)
        page.wait_for_timeout(500)


def psld_node_ids(page) -> dict[str, list[str]]:
    """Ids of the graph's PSLD nodes, by node type."""
    return page.evaluate("""() => {
      const found = {};
      for (const node of window.comfyAPI.app.app.graph.nodes) {
        const type = node.comfyClass ?? node.type;
        if (type?.startsWith("PSLD_")) (found[type] ??= []).push(String(node.id));
      }
      return found;
    }""")


def node_report(page, node_id: str) -> dict:
    """How a node looks in the page: its widgets, whether it has size, and its PSLD preview/plot elements."""
    return page.evaluate("""(id) => {
      const node = window.__psldNode(id);
      if (!node) return null;
      const part = (el) => el ? { dataset: { ...el.dataset }, text: el.textContent,
                                  width: el.getBoundingClientRect().width, connected: el.isConnected } : null;
      return {
        type: node.comfyClass ?? node.type, size: [...node.size],
        widgets: (node.widgets ?? []).map((w) => w.name),
        preview: part(node.psldPreview?.view.root), plot: part(node.psldPlot?.view.root),
        previewImageLoaded: !!(node.psldPreview?.view.image.complete && node.psldPreview.view.image.naturalWidth),
      };
    }""", node_id)


def screenshot(page, directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    # headless: nothing moves the mouse, so make litegraph redraw widgets whose values changed
    page.evaluate("() => window.comfyAPI.app.app.canvas.setDirty(true, true)")
    page.wait_for_timeout(300)
    path = directory / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
    page.screenshot(path=str(path))
    return path


def build_graph(page, nodes: list[dict]) -> dict[str, str]:
    """Build a graph in the page as a user does with the node library: nodes [{key, type, pos, widgets: {name:
    value}, inputs: {input_name: (source_key, output_name)}}]. Returns key -> node id."""
    return page.evaluate("""(specs) => {
      const app = window.comfyAPI.app.app;
      const made = {};
      for (const spec of specs) {
        const node = window.LiteGraph.createNode(spec.type);
        if (!node) throw new Error(`unknown node type ${spec.type}`);
        node.pos = spec.pos;
        app.graph.add(node);
        for (const [name, value] of Object.entries(spec.widgets ?? {})) {
          const widget = node.widgets?.find((w) => w.name === name);
          if (!widget) throw new Error(`${spec.type} has no widget ${name}`);
          widget.value = value;
          widget.callback?.(value);
        }
        made[spec.key] = node;
      }
      for (const spec of specs) {
        const target = made[spec.key];
        for (const [input, [sourceKey, output]] of Object.entries(spec.inputs ?? {})) {
          const source = made[sourceKey];
          const from = source.outputs.findIndex((o) => o.name === output);
          const to = target.inputs.findIndex((i) => i.name === input);
          if (from < 0 || to < 0) throw new Error(`cannot link ${sourceKey}.${output} -> ${spec.key}.${input}`);
          source.connect(from, target, to);
        }
      }
      app.graph.setDirtyCanvas(true, true);
      return Object.fromEntries(Object.entries(made).map(([key, node]) => [key, String(node.id)]));
    }""", nodes)


def set_widgets(page, node_id: str, values: dict) -> None:
    """Set widget values as the widgets themselves do (value, then the widget's callback)."""
    page.evaluate("""([id, values]) => {
      const app = window.comfyAPI.app.app;
      const node = window.__psldNode(id);
      for (const [name, value] of Object.entries(values)) {
        const widget = node.widgets?.find((w) => w.name === name);
        if (!widget) throw new Error(`${node.type} has no widget ${name}`);
        widget.value = value;
        widget.callback?.(value);
      }
      app.graph.setDirtyCanvas(true, true);
    }""", [node_id, values])


def serialize_graph(page) -> dict:
    """The graph as the app saves it (UI format)."""
    return page.evaluate("() => window.comfyAPI.app.app.graph.serialize()")


def queue_with_run_button(page) -> None:
    """Press the Run button of the top bar."""
    page.get_by_role("button", name=re.compile(r"^\s*Run\s*$")).first.click()


def wait_for_run_end(page, timeout_ms: int = 600_000) -> dict:
    """Wait for execution_success or execution_error of the run; returns the recorded events by type."""
    page.wait_for_function("() => window.__psldEvents.some((e) => ['execution_success', 'execution_error', "
                           "'execution_interrupted'].includes(e.type))", timeout=timeout_ms, polling=500)
    return page.evaluate("() => window.__psldEvents")


def screenshot_nodes(page, node_ids: list[str], directory: Path, name: str, *, margin: int = 24) -> Path:
    """A screenshot cropped to the given nodes (zoomed in so their widgets are legible)."""
    box = page.evaluate("""(ids) => {
      const app = window.comfyAPI.app.app;
      const nodes = ids.map((id) => window.__psldNode(id));
      const title = window.LiteGraph.NODE_TITLE_HEIGHT ?? 30;
      const x0 = Math.min(...nodes.map((n) => n.pos[0])), x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0]));
      const y0 = Math.min(...nodes.map((n) => n.pos[1] - title));
      const y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1]));
      const el = app.canvas.canvas;
      const scale = Math.min(1.5, 0.9 * el.clientWidth / (x1 - x0), 0.8 * el.clientHeight / (y1 - y0));
      app.canvas.ds.scale = scale;
      app.canvas.ds.offset = [-x0 + (el.clientWidth / scale - (x1 - x0)) / 2, -y0 + 0.12 * el.clientHeight / scale];
      app.canvas.setDirty(true, true);
      const rect = el.getBoundingClientRect();
      const [sx0, sy0] = app.canvas.ds.convertOffsetToCanvas([x0, y0]);
      const [sx1, sy1] = app.canvas.ds.convertOffsetToCanvas([x1, y1]);
      return { x: rect.left + sx0, y: rect.top + sy0, width: sx1 - sx0, height: sy1 - sy0 };
    }""", node_ids)
    page.wait_for_timeout(800)
    dom = page.evaluate("""(ids) => {
      const rects = ids.map((id) => document.querySelector(`[data-node-id="${id}"]`)?.getBoundingClientRect())
        .filter((r) => r && r.height > 0);
      if (rects.length !== ids.length) return null;  // classic rendering: no DOM nodes
      const x = Math.min(...rects.map((r) => r.left)), y = Math.min(...rects.map((r) => r.top));
      return { x, y, width: Math.max(...rects.map((r) => r.right)) - x,
               height: Math.max(...rects.map((r) => r.bottom)) - y };
    }""", node_ids)
    box = dom or box
    clip = {"x": max(0, box["x"] - margin), "y": max(0, box["y"] - margin)}
    clip["width"] = min(VIEWPORT["width"] - clip["x"], box["width"] + 2 * margin)
    clip["height"] = min(VIEWPORT["height"] - clip["y"], box["height"] + 2 * margin)
    page.evaluate("() => window.comfyAPI.app.app.canvas.setDirty(true, true)")
    page.wait_for_timeout(300)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
    page.screenshot(path=str(path), clip=clip)
    return path
