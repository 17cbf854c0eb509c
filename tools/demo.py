#!/usr/bin/env python3
"""`make demo`: run the demo-model example workflows on a real headless ComfyUI server and show PSLD next to what
ComfyUI does without it.

The workflows are the API forms in example_workflows/api/PSLD_demo_*.json (the frontend's own export of the
example_workflows/PSLD_demo_*.json templates, written by tools/make_workflows.py): the bundled Fashion-MNIST prior
(PSLD_DemoModelLoader) and test image (PSLD_DemoImage), an operator, PSLD_Degrade (sigma_y 0.05), PSLD_Sampler and a
core-node branch without PSLD, each saved by a SaveImage whose file name ends in _truth, _measurement, _psld or
_without_psld. They are POSTed to /prompt unchanged, apart from read-only probes added for the measurement residual:
PSLD_Degrade with sigma_y 0 gives A x of a panel; ImageBlend(A x, ImageInvert(y), 0.5) = 0.5 + (A x - y) / 2 keeps
the sign and the noise of y that a saved PNG would clip (y of a black background is half negative).

Writes .artifacts/demo/psld_demo.png (one row per task: truth | measurement | PSLD | without PSLD, enlarged with
nearest neighbour), psld_demo.md and psld_demo.json (PSNR and SSIM against the truth from psld.metrics, the RMS
measurement residual ||A x - y|| / sqrt(m) in the [-1, 1] units of sigma_y, timings). Exits 1 if a workflow fails.

    .comfyui/venv/bin/python tools/demo.py            # the current host from `make host-current`
    PSLD_COMFY_HOST=floor .comfyui-floor/venv/bin/python tools/demo.py --out .artifacts/demo-floor
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEMO_API_DIR = REPO / "example_workflows" / "api"
OUT = REPO / ".artifacts" / "demo"
PANELS = ("truth", "measurement", "psld", "without_psld")
TITLES = {"truth": "truth", "measurement": "measurement y", "psld": "PSLD", "without_psld": "without PSLD"}
RESIDUAL_PANELS = ("truth", "psld", "without_psld")  # images of the operator's input size
PROBE_INVERT = "800"  # probe node ids: 800, then 810 + 10 k (+ 1, + 2) for RESIDUAL_PANELS[k]
FOOTNOTE = ("dB, SSIM: PSNR and SSIM against the truth. |Ax-y|: RMS measurement residual in [-1, 1] units (the "
            "truth's is the noise, sigma_y).\nDemo prior: Fashion-MNIST 32x32 (models/psld_demo_fmnist32.safetensors); "
            "images: Fashion-MNIST test split (Zalando Research, MIT). Made by `make demo`.")
ZOOM = 5  # 32 px panels shown at 160 px
RUN_TIMEOUT = 300.0  # seconds per workflow

TASK_ORDER = ("box_inpaint", "random_inpaint", "super_resolution", "gaussian_deblur", "motion_deblur")

# psld.metrics (pure torch) and the project's server and client (tests/helpers, as tools/make_workflows.py uses
# them); appended, so that neither shadows a module of the same name already importable (e.g. ComfyUI's `nodes`)
for folder in (str(REPO), str(REPO / "tests")):
    if folder not in sys.path:
        sys.path.append(folder)


# -- the workflows ---------------------------------------------------------------------------------------------

def demo_names() -> list[str]:
    return sorted(path.stem for path in DEMO_API_DIR.glob("PSLD_demo_*.json"))


def load_demo_api(name: str) -> dict:
    return json.loads((DEMO_API_DIR / f"{name}.json").read_text())


def panel_nodes(api: dict) -> dict[str, str]:
    """The SaveImage node of each panel, found by the end of its filename_prefix ('<folder>/<task>_<panel>')."""
    found = {}
    for node_id, node in api.items():
        if node["class_type"] != "SaveImage":
            continue
        prefix = node["inputs"]["filename_prefix"]
        panel = next((p for p in sorted(PANELS, key=len, reverse=True) if prefix.endswith("_" + p)), None)
        if panel is None or panel in found:
            raise ValueError(f"SaveImage node {node_id} ({prefix!r}): expected one of each of {PANELS} as the end of "
                             "the filename_prefix")
        found[panel] = node_id
    if set(found) != set(PANELS):
        raise ValueError(f"the workflow saves {sorted(found)}, not every panel of {PANELS}")
    return found


def sampler_inputs(api: dict) -> dict:
    (sampler,) = [node for node in api.values() if node["class_type"] == "PSLD_Sampler"]
    return sampler["inputs"]


def with_residual_probes(api: dict) -> tuple[dict, dict[str, str]]:
    """The workflow (a new dict) plus read-only probes; returns it and the PreviewImage id of each residual panel,
    whose image is 0.5 + (A x - y) / 2 in 0..1 units."""
    api = copy.deepcopy(api)
    inputs, saves = sampler_inputs(api), panel_nodes(api)
    api[PROBE_INVERT] = {"class_type": "ImageInvert", "inputs": {"image": inputs["measurement"]}}
    probes = {}
    for k, panel in enumerate(RESIDUAL_PANELS):
        ax, half_difference, view = (str(810 + 10 * k + i) for i in range(3))
        api[ax] = {"class_type": "PSLD_Degrade", "inputs": {"image": api[saves[panel]]["inputs"]["images"],
                                                            "operator": inputs["operator"], "sigma_y": 0.0,
                                                            "seed": 0}}
        api[half_difference] = {"class_type": "ImageBlend",
                                "inputs": {"image1": [ax, 0], "image2": [PROBE_INVERT, 0], "blend_factor": 0.5,
                                           "blend_mode": "normal"}}
        api[view] = {"class_type": "PreviewImage", "inputs": {"images": [half_difference, 0]}}
        probes[panel] = view
    return api, probes


def output_image(client, result, node_id: str) -> np.ndarray:
    """The single image a node output in a finished run, float [H, W, 3] in 0..1."""
    images = result.outputs.get(node_id, {}).get("images", [])
    if len(images) != 1:
        raise RuntimeError(f"node {node_id} gave {len(images)} images (expected 1); outputs: {sorted(result.outputs)}")
    return client.image(images[0])


def residual_from_probe(probe: np.ndarray) -> np.ndarray:
    """A x - y in [-1, 1] units (those of sigma_y) from a probe image 0.5 + (A x - y) / 2 in 0..1 units."""
    return (probe.astype(np.float64) - 0.5) * 4.0  # 0..1 units: 2 (probe - 0.5); [-1, 1] units: twice that


# -- metrics ---------------------------------------------------------------------------------------------------

def nchw(image: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float64)).permute(2, 0, 1)[None]


def at_size(image: np.ndarray, side: int) -> np.ndarray:
    """Nearest-neighbour enlargement to side x side (an SR measurement shown and compared at the image size)."""
    factor = side // image.shape[0]
    return image.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else image


def panel_metrics(images: dict[str, np.ndarray], residuals: dict[str, np.ndarray]) -> dict[str, dict]:
    """PSNR (dB) and SSIM against the truth (not for the truth itself), and the RMS residual (not for y)."""
    from psld.metrics import measurement_rmse, psnr, ssim
    from psld.operators import Identity

    truth = images["truth"]
    metrics = {}
    for panel in PANELS:
        entry = {}
        if panel != "truth":
            estimate = nchw(at_size(images[panel], truth.shape[0]))
            entry["psnr"] = float(psnr(estimate, nchw(truth))[0])
            entry["ssim"] = float(ssim(estimate, nchw(truth))[0])
        if panel in residuals:  # ||r|| / sqrt(m) of r = A x - y: measurement_rmse with A = I on r, y = 0
            r = nchw(residuals[panel])
            entry["residual_rms"] = float(measurement_rmse(Identity(), r, r.new_zeros(r.shape))[0])
        metrics[panel] = entry
    return metrics


# -- one workflow ----------------------------------------------------------------------------------------------

def run_workflow(client, name: str) -> dict:
    """Run one demo workflow; its panels (float images), metrics and wall time. Raises when the run fails."""
    api, probes = with_residual_probes(load_demo_api(name))
    started = time.perf_counter()
    result = client.run(api, timeout=RUN_TIMEOUT)
    seconds = time.perf_counter() - started
    if result.status.get("status_str") != "success":
        raise RuntimeError(f"status {result.status}")
    images = {panel: output_image(client, result, node) for panel, node in panel_nodes(api).items()}
    residuals = {panel: residual_from_probe(output_image(client, result, node)) for panel, node in probes.items()}
    operator = api[sampler_inputs(api)["operator"][0]]["inputs"]
    return {"name": name, "task": operator["task"], "seconds": seconds, "images": images,
            "metrics": panel_metrics(images, residuals), "sigma_y": api[sampler_inputs(api)["measurement"][0]][
                "inputs"]["sigma_y"]}


# -- report ----------------------------------------------------------------------------------------------------

def font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: scalable
    except TypeError:
        return ImageFont.load_default()


def caption(panel: str, metrics: dict) -> str:
    parts = []
    if "psnr" in metrics:
        parts.append(f"{metrics['psnr']:.1f} dB  SSIM {metrics['ssim']:.2f}")
    if "residual_rms" in metrics:
        parts.append(f"|Ax-y| {metrics['residual_rms']:.3f}")
    return "\n".join(parts)


def composite(rows: list[dict]) -> "Image.Image":
    """One row per task: truth | measurement | PSLD | without PSLD, 32 px enlarged ZOOM times (nearest)."""
    from PIL import Image, ImageDraw

    side, label_w, head_h, text_h, gap = 32 * ZOOM, 150, 28, 34, 8
    width = label_w + len(PANELS) * (side + gap)
    foot_h = 40
    height = head_h + len(rows) * (side + text_h + gap) + foot_h
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    big, small = font(16), font(12)
    for column, panel in enumerate(PANELS):
        draw.text((label_w + column * (side + gap) + 4, 6), TITLES[panel], fill=(0, 0, 0), font=big)
    for row, entry in enumerate(rows):
        top = head_h + row * (side + text_h + gap)
        draw.text((6, top + side // 2 - 10), entry["task"].replace("_", " "), fill=(0, 0, 0), font=big)
        for column, panel in enumerate(PANELS):
            left = label_w + column * (side + gap)
            image = entry["images"][panel]
            pixels = np.clip(np.rint(at_size(image, 32) * 255), 0, 255).astype(np.uint8)
            tile = Image.fromarray(pixels).resize((side, side), Image.Resampling.NEAREST)
            canvas.paste(tile, (left, top))
            draw.multiline_text((left + 2, top + side + 2), caption(panel, entry["metrics"][panel]), fill=(40, 40, 40),
                                font=small, spacing=2)
    draw.multiline_text((6, height - foot_h + 4), FOOTNOTE, fill=(40, 40, 40), font=small, spacing=2)
    return canvas


def markdown(rows: list[dict], failures: dict[str, str], timings: dict) -> str:
    lines = ["# PSLD demo (`make demo`)", "",
             "Demo prior: `models/psld_demo_fmnist32.safetensors` (Fashion-MNIST 32x32); images: Fashion-MNIST test "
             "split (Zalando Research, MIT). PSNR (dB) and SSIM against the truth (the measurement of SR compared "
             "after nearest 4x enlargement); |A x - y| = ||A x - y|| / sqrt(m), RMS over the measurement, in the "
             "[-1, 1] units of sigma_y (the truth's own value is the measurement noise, about sigma_y).", "",
             "| task | panel | PSNR | SSIM | RMS ‖A x − y‖ |", "|---|---|---|---|---|"]
    for entry in rows:
        for panel in PANELS:
            m = entry["metrics"][panel]
            cells = [f"{m['psnr']:.2f}" if "psnr" in m else "—", f"{m['ssim']:.3f}" if "ssim" in m else "—",
                     f"{m['residual_rms']:.4f}" if "residual_rms" in m else "—"]
            lines.append(f"| {entry['task']} | {TITLES[panel]} | " + " | ".join(cells) + " |")
    lines += ["", f"Server start {timings['server_start']:.1f} s; workflows "
              + ", ".join(f"{e['task']} {e['seconds']:.1f} s" for e in rows)
              + f"; total {timings['total']:.1f} s (ComfyUI {timings['host']}, CPU)."]
    for name, error in failures.items():
        lines += ["", f"**{name} failed:** {error.splitlines()[0] if error else ''}"]
    return "\n".join(lines) + "\n"


def write_report(out: Path, rows: list[dict], failures: dict[str, str], timings: dict) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    png, md, js = out / "psld_demo.png", out / "psld_demo.md", out / "psld_demo.json"
    if rows:
        composite(rows).save(png)
    elif png.exists():
        png.unlink()
    md.write_text(markdown(rows, failures, timings))
    js.write_text(json.dumps({"workflows": [{k: v for k, v in e.items() if k != "images"} for e in rows],
                              "failures": failures, "timings": timings}, indent=1) + "\n")
    return [p for p in (png, md, js) if p.exists()]


# -- main ------------------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"report folder (default {OUT.relative_to(REPO)})")
    parser.add_argument("--only", nargs="*", default=None, help="workflow names (default: all demo workflows)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of the server (OMP_NUM_THREADS, default 1: the demo's 8x8 latents gain "
                             "little from more, and a second thread on a busy 2-core machine slowed a UNet call 8x)")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the server process
    from helpers.comfy_client import ComfyClient
    from helpers.comfy_server import ComfyServer

    names = args.only or demo_names()
    weights = REPO / "models" / "psld_demo_fmnist32.safetensors"
    if not names:
        print(f"demo: no PSLD_demo_*.json in {DEMO_API_DIR}", file=sys.stderr)
        return 1
    if not weights.exists():
        print(f"demo: the demo model {weights.relative_to(REPO)} is missing", file=sys.stderr)
        return 1
    started = time.perf_counter()
    rows, failures = [], {}
    with tempfile.TemporaryDirectory(prefix="psld-demo-") as state:
        server = ComfyServer(Path(state))
        try:
            server.wait_ready()
            ready = time.perf_counter()
            client = ComfyClient(server.url)
            host = client.get_json("/system_stats")["system"].get("comfyui_version", server.host)
            for name in names:
                try:
                    rows.append(run_workflow(client, name))
                    print(f"demo: {name} done in {rows[-1]['seconds']:.1f} s")
                except Exception as error:  # report every workflow, then fail
                    failures[name] = f"{type(error).__name__}: {error}"
                    print(f"demo: {name} FAILED: {failures[name]}", file=sys.stderr)
        except Exception as error:
            failures["server"] = f"{type(error).__name__}: {error}"
            print(f"demo: the ComfyUI server failed: {failures['server']}", file=sys.stderr)
            ready, host = time.perf_counter(), server.host
        finally:
            server.stop()
    rows.sort(key=lambda e: TASK_ORDER.index(e["task"]) if e["task"] in TASK_ORDER else len(TASK_ORDER))
    timings = {"server_start": ready - started, "total": time.perf_counter() - started, "host": host}
    paths = write_report(args.out, rows, failures, timings)
    for entry in rows:
        m = entry["metrics"]
        print(f"  {entry['task']:>16}: PSLD {m['psld']['psnr']:.2f} dB, |Ax-y| {m['psld']['residual_rms']:.4f}; "
              f"without PSLD {m['without_psld']['psnr']:.2f} dB, |Ax-y| {m['without_psld']['residual_rms']:.4f}; "
              f"truth |Ax-y| {m['truth']['residual_rms']:.4f}")
    print(f"demo: {len(rows)} of {len(names)} workflows in {timings['total']:.1f} s (server start "
          f"{timings['server_start']:.1f} s); written:")
    for path in paths:
        print(f"  {path}")
    if failures:
        print(f"demo: {len(failures)} failed (server log: {server.log_path})", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
