"""The pack in ComfyUI's real frontend, in headless Chromium: example workflows render, operator previews follow the
widgets, received text never becomes HTML, and a run draws one residual point per step on each sampler."""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

import comfy_page

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
RENDERINGS = ["classic", "vue"]  # litegraph canvas nodes, and the DOM "Nodes 2.0" nodes


def add_node(page, node_type: str, pos: tuple[int, int]) -> str:
    """Add a node as the node library does (LiteGraph.createNode + graph.add); returns its id."""
    return page.evaluate("""([type, pos]) => {
      const app = window.comfyAPI.app.app;
      const node = window.LiteGraph.createNode(type);
      node.pos = pos;
      app.graph.add(node);
      return String(node.id);
    }""", [node_type, list(pos)])


def wait_for_preview(page, node_id: str, *, caption: str | None = None, timeout: int = 30_000) -> dict:
    """Wait until the node's preview shows a loaded image (and, if given, a caption containing `caption`)."""
    page.wait_for_function("""([id, caption]) => {
      const node = window.__psldNode(id);
      const view = node?.psldPreview?.view;
      return !!view && view.root.dataset.loaded === "true" && view.image.complete && view.image.naturalWidth > 0
        && (caption === null || view.caption.textContent.includes(caption));
    }""", arg=[node_id, caption], timeout=timeout)
    return comfy_page.node_report(page, node_id)


def test_example_workflows_exist():
    assert WORKFLOWS, ("example_workflows/ holds no *.json: the browser tests load every example workflow, so "
                       "there must be at least one (ask the lead).")


def test_each_example_workflow_carries_its_own_note():
    """The committed UI files hold the note tools/make_workflows.py defines for that workflow (a frontend quirk once
    gave three of them the previous workflow's note)."""
    sys.path.insert(0, str(REPO / "tools"))
    import make_workflows

    definitions = make_workflows.workflows()
    assert sorted(wf.name for wf in definitions) == [p.stem for p in WORKFLOWS]
    for wf in definitions:
        saved = json.loads((REPO / "example_workflows" / f"{wf.name}.json").read_text())
        notes = [n["widgets_values"][0] for n in saved["nodes"] if n["type"] == "MarkdownNote"]
        expected = wf.note + (make_workflows.NOTE_TAIL.format(ckpt=make_workflows.CHECKPOINT) if wf.tail is None
                              else wf.tail)
        assert notes == [expected], (wf.name, [n[:80] for n in notes])


def hole_percent(size: int) -> str:
    """The hole of the mask-inpainting photo (tools/make_workflows.py), in percent as the preview caption shows."""
    import numpy as np
    from make_workflows import hole_mask  # tools/ is on sys.path (conftest)
    return f"{100 * float((np.asarray(hole_mask(size)) >= 128).mean()):.1f}%"


def widget_values(page, node_id: str) -> dict:
    return page.evaluate("(id) => Object.fromEntries(window.__psldNode(id).widgets"
                         ".filter((w) => !w.name.startsWith('psld_')).map((w) => [w.name, w.value]))", node_id)


@pytest.mark.parametrize("rendering", RENDERINGS)
@pytest.mark.parametrize("workflow_path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_renders(open_page, artifacts, workflow_path, rendering):
    """Open an example workflow: every node is known to the host, each operator node shows its preview (or, for
    mask_inpaint, where the mask comes from), each sampler its empty plot; no console error."""
    page, log = open_page(vue_nodes=rendering == "vue")
    log.phase = f"load {workflow_path.name}"
    comfy_page.load_workflow(page, json.loads(workflow_path.read_text()))
    page.wait_for_timeout(1500)
    ids = comfy_page.psld_node_ids(page)
    assert ids, f"{workflow_path.name} has no PSLD node"
    unknown = page.evaluate("() => window.comfyAPI.app.app.graph.nodes.filter((n) => "
                            "!window.LiteGraph.registered_node_types[n.type]).map((n) => `${n.id}:${n.type}`)")
    assert not unknown, f"nodes the host does not know: {unknown}"
    for node_id in ids.get("PSLD_LinearOperator", []) + ids.get("PSLD_Degrade", []):
        source = page.evaluate("""(id) => {  // the operator node this preview shows
          const node = window.__psldNode(id);
          if (node.type === "PSLD_LinearOperator") return String(node.id);
          const source = node.getInputNode(node.inputs.findIndex((i) => i.name === "operator"));
          return source ? String(source.id) : null;
        }""", node_id)
        settings = widget_values(page, source)
        if settings["task"] == "mask_inpaint":  # the hole comes from LoadImage's MASK: the page draws it
            report = wait_for_preview(page, node_id, caption=f"MASK {settings['width']}x{settings['height']}")
            assert f"{hole_percent(settings['width'])} hole." in report["preview"]["text"], report
            assert report["preview"]["text"].endswith("hole."), report  # no problem reported after it
            continue
        report = wait_for_preview(page, node_id, caption=f"{settings['height']}x{settings['width']}")
        assert report["preview"]["width"] > 50, report
    for node_id in ids.get("PSLD_Sampler", []) + ids.get("PSLD_PosteriorSampler", []):
        report = comfy_page.node_report(page, node_id)
        assert report["plot"] is not None and report["plot"]["connected"], report
        assert report["plot"]["dataset"]["state"] == "waiting", report
    comfy_page.fit_view(page)
    comfy_page.screenshot(page, artifacts, f"workflow-{workflow_path.stem}-{rendering}")
    assert not log.errors(), "\n".join(log.errors())
    assert not log.outside_requests, log.outside_requests


def test_example_workflow_runs_on_the_tiny_checkpoint(open_page, page_server, artifacts):
    """Open the box-inpainting example, make it small as a user would in the widgets (tiny checkpoint, 128 px
    photo and operator, 3 steps), press Run: the plot gets one point per step, the operator preview stays."""
    path = REPO / "example_workflows" / "PSLD_box_inpainting.json"
    assert path in WORKFLOWS, "the box-inpainting example workflow is missing"
    page, log = open_page()
    comfy_page.load_workflow(page, json.loads(path.read_text()))
    ids = comfy_page.psld_node_ids(page)
    (operator,), (sampler,) = ids["PSLD_LinearOperator"], ids["PSLD_Sampler"]
    others = page.evaluate("() => Object.fromEntries(window.comfyAPI.app.app.graph.nodes.map((n) => [n.type, "
                           "String(n.id)]))")
    steps = 3
    comfy_page.set_widgets(page, others["CheckpointLoaderSimple"], {"ckpt_name": page_server["checkpoint"]})
    comfy_page.set_widgets(page, others["LoadImage"], {"image": "astronaut_128.png"})
    comfy_page.set_widgets(page, operator, {"width": 128, "height": 128})
    comfy_page.set_widgets(page, sampler, {"steps": steps, "seed": time.time_ns() % 2**48})
    wait_for_preview(page, operator, caption="128x128")
    log.phase = "run"
    comfy_page.queue_with_run_button(page)
    events = comfy_page.wait_for_run_end(page)
    assert events[-1]["type"] == "execution_success", events[-1]
    progress = [e["detail"] for e in events if e["type"] == "psld.progress"]
    assert [(d["node"], d["step"], d["total"]) for d in progress] == [(sampler, i, steps) for i in range(steps)]
    plot = comfy_page.node_report(page, sampler)["plot"]
    assert plot["dataset"]["points"] == str(steps) and plot["dataset"]["state"] == "done", plot
    report = wait_for_preview(page, operator, caption="128x128")
    assert report["previewImageLoaded"], report
    comfy_page.fit_view(page)
    comfy_page.screenshot(page, artifacts, "example-run-box_inpainting")
    assert not log.errors(), "\n".join(log.errors())
    assert not log.outside_requests, log.outside_requests


def test_page_is_confined_to_loopback(page_server):
    """The server runs with --disable-api-nodes: its pages carry a CSP that allows connections to itself only."""
    import urllib.request
    with urllib.request.urlopen(page_server["url"] + "/", timeout=30) as response:
        policy = response.headers.get("Content-Security-Policy", "")
    assert re.search(r"connect-src 'self'( data:)?;", policy), policy


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_operator_preview_follows_the_widgets(open_page, artifacts, rendering):
    """A user picks another task in the node's own widget: both previews (operator and the Degrade it feeds) are
    redrawn by the server for the new operator."""
    page, log = open_page(vue_nodes=rendering == "vue")
    operator = add_node(page, "PSLD_LinearOperator", (60, 60))
    degrade = add_node(page, "PSLD_Degrade", (480, 60))
    page.evaluate("""([a, b]) => {
      const op = window.__psldNode(a), dg = window.__psldNode(b);
      op.connect(0, dg, dg.inputs.findIndex((i) => i.name === "operator")); }""", [operator, degrade])

    before = wait_for_preview(page, operator, caption="Inpainting")
    assert "512x512" in before["preview"]["text"], before
    assert wait_for_preview(page, degrade, caption="Inpainting")["preview"]["text"].startswith("y = A x + 0.05 n")
    comfy_page.set_widgets(page, degrade, {"sigma_y": 0.0})  # the Degrade's own widget
    wait_for_preview(page, degrade, caption="y = A x (no noise), A: Inpainting")
    box_png = page.evaluate("(id) => window.__psldNode(id).psldPreview.view.image.src",
                            operator)

    choose_task(page, operator, "gaussian_deblur", vue=rendering == "vue")
    after = wait_for_preview(page, operator, caption="Gaussian blur")
    assert "121 px" in after["preview"]["text"], after  # the reference kernel size at 512 px
    wait_for_preview(page, degrade, caption="Gaussian blur")
    assert page.evaluate("(id) => window.__psldNode(id).psldPreview.view.image.src",
                         operator) != box_png
    comfy_page.fit_view(page)
    comfy_page.screenshot(page, artifacts, f"operator-preview-{rendering}")
    assert not log.errors(), "\n".join(log.errors())
    assert not log.outside_requests, log.outside_requests


def test_problem_seeds_start_fixed_and_the_sampler_seed_randomizes(open_page):
    """The frontend adds "control after generate" to every widget named seed. The operator's and Degrade's seeds
    define the problem (box, kernel, noise), so ComfyUI 0.30's frontend starts them at fixed; the sampler's noise seed
    randomizes as KSampler's does. 0.3.75's frontend starts every seed at randomize, whatever the node declares."""
    from helpers.hosts import selected_host

    page, log = open_page()
    ids = {node_type: add_node(page, node_type, (60 + 420 * k, 60))
           for k, node_type in enumerate(("PSLD_LinearOperator", "PSLD_Degrade", "PSLD_Sampler"))}
    controls = {node_type: page.evaluate("""(id) => {
      const seed = window.__psldNode(id).widgets.find((w) => w.name === "seed");
      return seed.linkedWidgets?.[0]?.value ?? null; }""", node_id) for node_type, node_id in ids.items()}
    problem = "fixed" if selected_host() == "current" else "randomize"
    assert controls == {"PSLD_LinearOperator": problem, "PSLD_Degrade": problem, "PSLD_Sampler": "randomize"}
    assert not log.errors(), "\n".join(log.errors())


def choose_task(page, node_id: str, task: str, *, vue: bool) -> None:
    """Pick `task` in the node's task combo with the mouse, as a user does."""
    if vue:
        node = page.locator(f"[data-node-id='{node_id}']")
        node.get_by_role("combobox", name="task").click()
        page.get_by_role("option", name=task, exact=True).click()
        return
    # classic canvas: click the combo widget's value, then the entry in litegraph's context menu
    comfy_page.fit_view(page)
    page.wait_for_function("""(id) => {
      const node = window.__psldNode(id);
      const widget = node.widgets.find((w) => w.name === "task");
      return (widget.y ?? widget.last_y) > 0;  // laid out by a first draw
    }""", arg=node_id)
    x, y = page.evaluate("""(id) => {
      const app = window.comfyAPI.app.app;
      const node = window.__psldNode(id);
      const widget = node.widgets.find((w) => w.name === "task");
      const y = widget.y ?? widget.last_y;
      const [cx, cy] = app.canvas.ds.convertOffsetToCanvas([node.pos[0] + node.size[0] / 2, node.pos[1] + y + 10]);
      const rect = app.canvas.canvas.getBoundingClientRect();
      return [rect.left + cx, rect.top + cy];
    }""", node_id)
    page.mouse.click(x, y)
    page.locator(".litecontextmenu .litemenu-entry", has_text=re.compile(f"^{task}$")).click()


def test_received_text_is_shown_as_text(open_page):
    """An error message that echoes what was sent is displayed with textContent: markup in it stays text."""
    page, log = open_page()
    operator = add_node(page, "PSLD_LinearOperator", (60, 60))
    wait_for_preview(page, operator)
    markup = '<img src="x" onerror="window.__psldInjected = 1">'
    page.evaluate("""([id, markup]) => {
      const node = window.__psldNode(id);
      const widget = node.widgets.find((w) => w.name === "task");
      widget.value = markup;   // not one of the options: the server answers 400 quoting it
      widget.callback?.(markup);
    }""", [operator, markup])
    page.wait_for_function("""(id) => {
      const node = window.__psldNode(id);
      return node.psldPreview.view.caption.textContent.includes("task must be one of");
    }""", arg=operator, timeout=30_000)
    caption = page.evaluate("""(id) => {
      const node = window.__psldNode(id);
      const view = node.psldPreview.view;
      return { text: view.caption.textContent, children: view.caption.children.length,
               loaded: view.root.dataset.loaded, injected: window.__psldInjected ?? null };
    }""", operator)
    assert '<img src=\\"x\\"' in caption["text"], caption  # the markup, quoted as JSON text
    assert caption["children"] == 0 and caption["injected"] is None and caption["loaded"] == "false", caption
    expected = "status of 400 (Bad Request) (http://"  # Chromium logs every 4xx answer; this one was asked for
    unexpected = [e for e in log.errors() if not (expected in e and "/psld/preview)" in e)]
    assert not unexpected, "\n".join(unexpected)


def test_scripts_never_write_html():
    """Static guard for the rule the page follows: no innerHTML/outerHTML/insertAdjacentHTML/document.write."""
    scripts = sorted((REPO / "web").glob("**/*.js"))
    assert scripts
    for script in scripts:
        found = re.findall(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function",
                           script.read_text())
        assert not found, f"{script.name}: {found}"


def run_graph(server: dict, steps: tuple[int, int]) -> list[dict]:
    """Two PSLD samplers on one operator and measurement (128 px test photo, box inpainting), on the tiny
    checkpoint, with different step counts so each plot's curve is told apart. Fresh seeds: ComfyUI would
    otherwise answer a repeated prompt from its cache, and the samplers would not run."""
    seed = time.time_ns() % 2**48
    return [
        {"key": "ckpt", "type": "CheckpointLoaderSimple", "pos": [0, 0],
         "widgets": {"ckpt_name": server["checkpoint"]}},
        {"key": "positive", "type": "CLIPTextEncode", "pos": [0, 160], "widgets": {"text": ""},
         "inputs": {"clip": ["ckpt", "CLIP"]}},
        {"key": "negative", "type": "CLIPTextEncode", "pos": [0, 400], "widgets": {"text": ""},
         "inputs": {"clip": ["ckpt", "CLIP"]}},
        {"key": "photo", "type": "LoadImage", "pos": [0, 640], "widgets": {"image": server["photo"]}},
        {"key": "operator", "type": "PSLD_LinearOperator", "pos": [420, 0],
         "widgets": {"task": "box_inpaint", "width": 128, "height": 128, "box_placement": "centred"}},
        {"key": "degrade", "type": "PSLD_Degrade", "pos": [420, 760], "widgets": {"sigma_y": 0.05},
         "inputs": {"image": ["photo", "IMAGE"], "operator": ["operator", "operator"]}},
        *[{"key": f"sampler{i}", "type": "PSLD_Sampler", "pos": [820, 60 + 640 * i],
           "widgets": {"steps": n, "seed": seed + i, "cfg": 1.0},
           "inputs": {"model": ["ckpt", "MODEL"], "vae": ["ckpt", "VAE"], "positive": ["positive", "CONDITIONING"],
                      "negative": ["negative", "CONDITIONING"], "operator": ["operator", "operator"],
                      "measurement": ["degrade", "measurement"]}} for i, n in enumerate(steps)],
        *[{"key": f"show{i}", "type": "PreviewImage", "pos": [1220, 60 + 640 * i],
           "inputs": {"images": [f"sampler{i}", "image"]}} for i in range(len(steps))],
    ]


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_run_plots_one_point_per_step_on_each_sampler(open_page, page_server, artifacts, rendering):
    """Run a two-sampler workflow from the page: the server's per-step events reach the page tagged with each
    sampler's id, each plot gets exactly one point per step of its own sampler, and the curves and final values
    stay after the run."""
    steps = (3, 4)
    page, log = open_page(vue_nodes=rendering == "vue")
    ids = comfy_page.build_graph(page, run_graph(page_server, steps))
    samplers = [ids["sampler0"], ids["sampler1"]]
    wait_for_preview(page, ids["operator"], caption="Inpainting")
    wait_for_preview(page, ids["degrade"], caption="Inpainting")
    for node_id in samplers:
        assert comfy_page.node_report(page, node_id)["plot"]["dataset"]["state"] == "waiting"
    comfy_page.fit_view(page)
    (artifacts / f"run-workflow-{rendering}.json").write_text(json.dumps(comfy_page.serialize_graph(page), indent=1))

    log.phase = "run"
    comfy_page.queue_with_run_button(page)
    events = comfy_page.wait_for_run_end(page)
    failure = [e["detail"] for e in events if e["type"] != "execution_success" and e["type"].startswith("execution_")
               and e["type"] != "execution_start"]
    assert not failure, failure
    page.wait_for_timeout(500)  # let the last frame draw

    progress = [e["detail"] for e in events if e["type"] == "psld.progress"]
    for node_id, n in zip(samplers, steps):
        mine = [d for d in progress if d["node"] == node_id]
        assert [d["step"] for d in mine] == list(range(n)), mine
        assert all(d["total"] == n for d in mine)
        assert all(set(d["values"]) == {"measurement", "gluing"} for d in mine), mine[0]
        plot = comfy_page.node_report(page, node_id)["plot"]
        assert plot["dataset"]["points"] == str(n) and plot["dataset"]["total"] == str(n), plot
        assert plot["dataset"]["state"] == "done", plot
        assert plot["text"].startswith(f"final ({n} steps)"), plot["text"]
        drawn = page.evaluate("(id) => Object.fromEntries(window.__psldNode(id)"
                              ".psldPlot.run.values)", node_id)
        assert drawn == {key: [d["values"][key] for d in mine] for key in ("measurement", "gluing")}
    assert {d["node"] for d in progress} == set(samplers)
    assert page.evaluate("""(ids) => ids.every((id) => {
      const canvas = window.__psldNode(id).psldPlot.view.canvas;
      const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
      for (let i = 0; i < pixels.length; i += 4) {
        if (pixels[i] > 200 && pixels[i + 1] > 120 && pixels[i + 2] < 80) return true;
      }
      return false;  // no orange (measurement curve) pixel drawn
    })""", samplers)

    comfy_page.screenshot_nodes(page, [samplers[1]], artifacts, f"plot-closeup-{rendering}")
    comfy_page.fit_view(page)
    comfy_page.screenshot(page, artifacts, f"run-plot-{rendering}")
    page.wait_for_timeout(3000)  # the curves stay after the run
    for node_id, n in zip(samplers, steps):
        assert comfy_page.node_report(page, node_id)["plot"]["dataset"]["points"] == str(n)
    assert not log.errors(), "\n".join(log.errors())
    assert not log.outside_requests, log.outside_requests


def test_interrupted_run_keeps_its_curve(open_page, page_server):
    """Cancel a long run after a few steps: the plot keeps the steps it got and says where it stopped."""
    page, log = open_page()
    ids = comfy_page.build_graph(page, run_graph(page_server, (500,)))
    sampler = ids["sampler0"]
    log.phase = "run"
    comfy_page.queue_with_run_button(page)
    page.wait_for_function("(id) => window.__psldEvents.filter((e) => e.type === 'psld.progress' "
                           "&& e.detail.node === id).length >= 2", arg=sampler, timeout=300_000, polling=200)
    page.evaluate("() => window.comfyAPI.api.api.interrupt()")
    events = comfy_page.wait_for_run_end(page)
    assert any(e["type"] == "execution_interrupted" for e in events), [e["type"] for e in events]
    received = [e["detail"]["step"] for e in events if e["type"] == "psld.progress"]
    assert 2 <= len(received) < 500 and received == list(range(len(received)))
    # the page handles the interrupt event on its own schedule: wait for the plot to say so (a busy machine is slow)
    try:
        page.wait_for_function("(id) => window.__psldNode(id).psldPlot.view.root.dataset.state === 'stopped'",
                               arg=sampler, timeout=15_000, polling=200)
    except Exception:
        pass  # the assertion below reports what the plot shows instead
    plot = comfy_page.node_report(page, sampler)["plot"]
    assert plot["dataset"]["state"] == "stopped", plot
    assert plot["dataset"]["points"] == str(len(received)), plot
    assert plot["text"].startswith(f"stopped at step {len(received)}/500"), plot["text"]
    assert not log.errors(), "\n".join(log.errors())


def test_sampler_inside_a_subgraph_gets_its_points(open_page, page_server):
    """A PSLD sampler converted into a subgraph: the server tags its steps "<subgraph node>:<inner node>", and the
    inner node's plot gets them."""
    page, log = open_page()
    ids = comfy_page.build_graph(page, run_graph(page_server, (3,)))
    subgraph = page.evaluate("""(id) => {
      const result = window.comfyAPI.app.app.graph.convertToSubgraph(new Set([window.__psldNode(id)]));
      return String((result.node ?? result).id);
    }""", ids["sampler0"])
    log.phase = "run"
    comfy_page.queue_with_run_button(page)
    events = comfy_page.wait_for_run_end(page)
    assert events[-1]["type"] == "execution_success", events[-1]
    tagged = [(e["detail"]["node"], e["detail"]["step"]) for e in events if e["type"] == "psld.progress"]
    inner = ids["sampler0"]  # converting keeps the inner node's id
    assert tagged == [(f"{subgraph}:{inner}", step) for step in range(3)], tagged
    points = page.evaluate("""(id) => window.__psldNode(id).subgraph.nodes
      .filter((n) => n.psldPlot).map((n) => n.psldPlot.view.root.dataset.points)""", subgraph)
    assert points == ["3"], points
    assert not log.errors(), "\n".join(log.errors())


def test_mask_preview_names_what_is_wrong(open_page):
    """mask_inpaint: the page draws the mask of the picked photo and says when it cannot work: a size that differs
    from the operator's, or a photo without transparent pixels (LoadImage then gives an empty mask)."""
    page, log = open_page()
    ids = comfy_page.build_graph(page, [
        {"key": "photo", "type": "LoadImage", "pos": [0, 0], "widgets": {"image": "astronaut_512_hole.png"}},
        {"key": "operator", "type": "PSLD_LinearOperator", "pos": [400, 0],
         "widgets": {"task": "mask_inpaint", "width": 256, "height": 256}, "inputs": {"mask": ["photo", "MASK"]}},
    ])
    text = wait_for_preview(page, ids["operator"], caption="MASK 512x512")["preview"]["text"]
    assert text.endswith("The operator acts on 256x256: set width and height to match."), text
    comfy_page.set_widgets(page, ids["photo"], {"image": "astronaut_128.png"})  # no alpha channel
    text = wait_for_preview(page, ids["operator"], caption="MASK 128x128")["preview"]["text"]
    assert "0.0% hole. No hole" in text, text
    assert not log.errors(), "\n".join(log.errors())
