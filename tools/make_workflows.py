"""Generate the example workflows: one per task, in ComfyUI's UI format (example_workflows/<name>.json, listed in the
template browser), its API form (tests/server/workflows/<name>.json, what the server tests submit) and a thumbnail
(example_workflows/<name>.jpg). The demo-model workflows (PSLD_demo_*: the bundled Fashion-MNIST prior and example
images, nothing to download) keep their API form in example_workflows/api/, where `make demo` (tools/demo.py) reads it.

Each workflow is written once below, in API form (readable Python, titles included). The UI form is made by the real
frontend of the selected host in headless Chromium: `app.loadApiJson(api)` builds the graph, the nodes are laid out
in columns, a Markdown note is added, seeds are set to "fixed", and `app.graph.serialize()` gives the UI file. The
API file is the frontend's own `graphToPrompt()` of that graph (what "Export (API)" gives), checked against the
definition here: same nodes, links, titles and values, every other widget at its default. Thumbnails show what each
workflow's own operator does to the bundled photo (computed by the pack's nodes on the server) with the task name.

Usage (host and browser from `make host browser-deps`):
    PSLD_COMFY_HOST=current .comfyui/venv/bin/python tools/make_workflows.py          # write all three
    PSLD_COMFY_HOST=current .comfyui/venv/bin/python tools/make_workflows.py --only PSLD_demo_   # some of them
    PSLD_COMFY_HOST=floor .comfyui-floor/venv/bin/python tools/make_workflows.py --check
        # open every committed UI file in that host's frontend; its API form must equal the committed API file
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "browser")]

UI_DIR = REPO / "example_workflows"
API_DIR = REPO / "tests" / "server" / "workflows"
DEMO_API_DIR = UI_DIR / "api"  # not listed by the template browser (it globs example_workflows/*.json only)
PHOTO_512 = REPO / "tests" / "data" / "astronaut_512.png"
PHOTO_128 = REPO / "tests" / "data" / "astronaut_128.png"
HOLE_PHOTO = "astronaut_512_hole.png"  # RGBA: transparent pixels = the hole (LoadImage's MASK = 1 - alpha)
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"  # the usual SD 1.5 file name
STEPS = 100  # practical default; the paper uses 1000 DDIM steps
SIZE = 512  # SD 1.5 resolution
THUMB_SIDE, THUMB_MAX_BYTES = 256, 40_000

# output slots
MODEL, CLIP, VAE = 0, 1, 2
IMAGE, MASK = 0, 1
OPERATOR, OPERATOR_PREVIEW = 0, 1
MEASUREMENT, MEASUREMENT_PREVIEW = 0, 1
SAMPLER_LATENT, SAMPLER_IMAGE = 0, 1


def hole_mask(size: int):
    """PIL 'L' image, 255 = hole: an ellipse over the helmet and face of the astronaut photo, at any size."""
    from PIL import Image, ImageDraw

    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).ellipse([0.30 * size, 0.12 * size, 0.72 * size, 0.50 * size], fill=255)
    return mask


def photo_with_hole(size: int = SIZE) -> bytes:
    """The astronaut photo at size x size as an RGBA PNG whose hole is transparent."""
    from PIL import Image

    photo = Image.open(PHOTO_512).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    photo.putalpha(Image.eval(hole_mask(size), lambda v: 255 - v))
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Workflow:
    """An API-form graph with a title per node and a place in the layout (column, row), plus a note for users."""

    name: str
    label: str  # shown on the thumbnail
    note: str  # Markdown shown in the workflow
    nodes: dict = field(default_factory=dict)
    layout: dict = field(default_factory=dict)
    api_dir: Path = API_DIR  # where its API form goes
    tail: str | None = None  # end of the note; None: NOTE_TAIL (the SD 1.5 checkpoint)

    def add(self, class_type: str, title: str, column: int, row: int, **inputs) -> str:
        node_id = str(len(self.nodes) + 1)
        links = {k: [v[0], v[1]] if isinstance(v, tuple) else v for k, v in inputs.items()}
        self.nodes[node_id] = {"class_type": class_type, "inputs": links, "_meta": {"title": title}}
        self.layout[node_id] = (column, row)
        return node_id

    def api(self) -> dict:
        return json.loads(json.dumps(self.nodes))

    def first(self, class_type: str) -> str:
        return next(i for i, n in self.nodes.items() if n["class_type"] == class_type)


def model_and_prompts(wf: Workflow) -> tuple[str, str, str]:
    ckpt = wf.add("CheckpointLoaderSimple", "Load Checkpoint (SD 1.5)", 1, 0, ckpt_name=CHECKPOINT)
    positive = wf.add("CLIPTextEncode", "Prompt (empty, as in the paper)", 1, 1, text="", clip=(ckpt, CLIP))
    negative = wf.add("CLIPTextEncode", "Negative prompt (used when cfg > 1)", 1, 2, text="", clip=(ckpt, CLIP))
    return ckpt, positive, negative


def all_in_one(wf: Workflow, ckpt, positive, negative, operator, measurement, loss=None) -> str:
    """PSLD_Sampler -> SaveImage; returns the sampler id."""
    extra = {"loss": (loss, 0)} if loss else {}
    sampler = wf.add("PSLD_Sampler", "PSLD Sampler", 4, 0, model=(ckpt, MODEL), vae=(ckpt, VAE),
                     positive=(positive, 0), negative=(negative, 0), operator=(operator, OPERATOR),
                     measurement=measurement, seed=0, steps=STEPS, cfg=1.0, eta=0.0, scheduler="ddim_uniform",
                     **extra)
    wf.add("SaveImage", "Restored image", 4, 1, images=(sampler, SAMPLER_IMAGE),
           filename_prefix=f"PSLD/{wf.name.removeprefix('PSLD_')}")
    return sampler


def degraded_photo(wf: Workflow, operator: str, image=None) -> str:
    """LoadImage (the clean photo) -> PSLD_Degrade; returns the Degrade id. `image`: an existing IMAGE output."""
    if image is None:
        image = (wf.add("LoadImage", "Load a 512x512 photo", 2, 0, image=PHOTO_512.name), IMAGE)
    degrade = wf.add("PSLD_Degrade", "PSLD Degrade (makes the measurement)", 3, 0, image=image,
                     operator=(operator, OPERATOR), sigma_y=0.05, seed=0)
    wf.add("PreviewImage", "Measurement y (what PSLD sees)", 3, 1, images=(degrade, MEASUREMENT))
    return degrade


NOTE_TAIL = ("\n\n**Checkpoint:** an SD 1.5 checkpoint (here `{ckpt}`); the sampler also takes SD 2.x and "
             "SDXL models (set the operator's size to their resolution).\n\n**Steps:** every step backpropagates "
             "through the UNet and the VAE, so PSLD is slower "
             "than plain sampling; more steps follow the measurement more closely (paper: 1000).\n\n"
             "Rout et al., *Solving Linear Inverse Problems Provably via Posterior Sampling with Latent Diffusion "
             "Models*, NeurIPS 2023.")

TEST_PHOTO = ("Load a {size}x{size} photo (e.g. `tests/data/astronaut_512.png` from the pack's repository). PSLD "
              "Degrade makes the measurement y = A x + noise from it, so you can compare the result with the original.")


def box_inpainting() -> Workflow:
    wf = Workflow("PSLD_box_inpainting", "box inpainting",
                  "## PSLD: box inpainting\nFills a missing square. " + TEST_PHOTO.format(size=SIZE)
                  + "\n\nThe box is half the image side at a random position (seed); set box_size and "
                  "box_placement on the operator to change it. For your own hole use the mask-inpainting "
                  "workflow.")
    ckpt, positive, negative = model_and_prompts(wf)
    operator = wf.add("PSLD_LinearOperator", "PSLD Linear Operator (box inpainting)", 2, 1, task="box_inpaint",
                      width=SIZE, height=SIZE, seed=0, box_placement="random")
    degrade = degraded_photo(wf, operator)
    all_in_one(wf, ckpt, positive, negative, operator, (degrade, MEASUREMENT))
    return wf


def mask_inpainting() -> Workflow:
    wf = Workflow("PSLD_mask_inpainting", "mask inpainting",
                  "## PSLD: inpainting with your mask\nFills the region you mark. Load a 512x512 photo, then "
                  "right-click **Load Image** > *Open in MaskEditor* and paint the region to fill (or load a PNG "
                  f"whose transparent pixels are the hole, e.g. `{HOLE_PHOTO}`). The mask (white = hole) goes to "
                  "the operator; PSLD Degrade blanks the hole (sigma_y 0: the photo is used as it is).")
    ckpt, positive, negative = model_and_prompts(wf)
    photo = wf.add("LoadImage", "Load a 512x512 photo and paint the hole", 2, 0, image=HOLE_PHOTO)
    operator = wf.add("PSLD_LinearOperator", "PSLD Linear Operator (your mask)", 2, 1, task="mask_inpaint",
                      width=SIZE, height=SIZE, mask=(photo, MASK))
    degrade = wf.add("PSLD_Degrade", "PSLD Degrade (blanks the hole)", 3, 0, image=(photo, IMAGE),
                     operator=(operator, OPERATOR), sigma_y=0.0, seed=0)
    wf.add("PreviewImage", "Measurement y (what PSLD sees)", 3, 1, images=(degrade, MEASUREMENT))
    all_in_one(wf, ckpt, positive, negative, operator, (degrade, MEASUREMENT))
    return wf


def random_inpainting() -> Workflow:
    wf = Workflow("PSLD_random_inpainting", "random inpainting",
                  "## PSLD: random inpainting\nRestores a photo with randomly missing pixels. "
                  + TEST_PHOTO.format(size=SIZE) + "\n\ndrop_fraction 0 draws the missing fraction from "
                  "U(0.3, 0.7) with the seed, as the reference code does.")
    ckpt, positive, negative = model_and_prompts(wf)
    operator = wf.add("PSLD_LinearOperator", "PSLD Linear Operator (random pixels)", 2, 1, task="random_inpaint",
                      width=SIZE, height=SIZE, seed=0, drop_fraction=0.0)
    degrade = degraded_photo(wf, operator)
    all_in_one(wf, ckpt, positive, negative, operator, (degrade, MEASUREMENT))
    return wf


def super_resolution() -> Workflow:
    wf = Workflow("PSLD_super_resolution_x4", "super-resolution x4",
                  "## PSLD: super-resolution x4\nA small photo **is** the measurement: load a 128x128 photo (the "
                  "pack repository's `tests/data/astronaut_128.png`) and get a 512x512 result; no Degrade needed. For "
                  "another size set the operator's width and height to 4x the photo's.")
    ckpt, positive, negative = model_and_prompts(wf)
    small = wf.add("LoadImage", "Load a 128x128 photo (the measurement)", 2, 0, image=PHOTO_128.name)
    operator = wf.add("PSLD_LinearOperator", "PSLD Linear Operator (SR x4, 512 -> 128)", 2, 1,
                      task="super_resolution", width=SIZE, height=SIZE, sr_scale="4", sr_mode="bicubic")
    all_in_one(wf, ckpt, positive, negative, operator, (small, IMAGE))
    return wf


def gaussian_deblur() -> Workflow:
    """The composable path: PSLD_Guider + PSLD_PosteriorSampler in core SamplerCustomAdvanced."""
    wf = Workflow("PSLD_gaussian_deblur", "Gaussian deblur",
                  "## PSLD: Gaussian deblurring (composable)\nPSLD as parts of ComfyUI's own sampling: **PSLD "
                  "Guider** (your model and VAE, prompts, cfg) and **PSLD Posterior Sampler** (operator and "
                  "measurement) in **SamplerCustomAdvanced**, with RandomNoise, a ddim_uniform BasicScheduler and "
                  "an empty latent of the operator's size. " + TEST_PHOTO.format(size=SIZE)
                  + "\n\nkernel_size 0 = the reference 121 px kernel at 512 (sigma 3).")
    ckpt, positive, negative = model_and_prompts(wf)
    operator = wf.add("PSLD_LinearOperator", "PSLD Linear Operator (Gaussian blur)", 2, 1, task="gaussian_deblur",
                      width=SIZE, height=SIZE, kernel_size=0, blur_sigma=3.0)
    degrade = degraded_photo(wf, operator)
    guider = wf.add("PSLD_Guider", "PSLD Guider", 4, 0, model=(ckpt, MODEL), vae=(ckpt, VAE),
                    positive=(positive, 0), negative=(negative, 0), cfg=1.0)
    sampler = wf.add("PSLD_PosteriorSampler", "PSLD Posterior Sampler", 4, 1, operator=(operator, OPERATOR),
                     measurement=(degrade, MEASUREMENT), eta=0.0)
    sigmas = wf.add("BasicScheduler", "BasicScheduler (ddim_uniform)", 4, 2, model=(ckpt, MODEL),
                    scheduler="ddim_uniform", steps=STEPS, denoise=1.0)
    noise = wf.add("RandomNoise", "RandomNoise", 4, 3, noise_seed=0)
    latent = wf.add("EmptyLatentImage", "Empty latent (the operator's size)", 4, 4, width=SIZE, height=SIZE,
                    batch_size=1)
    run = wf.add("SamplerCustomAdvanced", "SamplerCustomAdvanced", 5, 0, noise=(noise, 0), guider=(guider, 0),
                 sampler=(sampler, 0), sigmas=(sigmas, 0), latent_image=(latent, 0))
    image = wf.add("VAEDecode", "VAE Decode", 5, 1, samples=(run, 0), vae=(ckpt, VAE))
    wf.add("SaveImage", "Restored image", 5, 2, images=(image, 0), filename_prefix="PSLD/gaussian_deblur")
    return wf


def motion_deblur() -> Workflow:
    wf = Workflow("PSLD_motion_deblur", "motion deblur",
                  "## PSLD: motion deblurring\nRemoves a camera-shake blur (a random motion kernel drawn with the "
                  "operator's seed). " + TEST_PHOTO.format(size=SIZE) + "\n\n**PSLD Gluing Loss** sets the "
                  "objective: omega weighs the measurement term, gamma the gluing term that keeps the latent on "
                  "the autoencoder's manifold (these are the reference weights; leave the loss input empty to use "
                  "them by default).")
    ckpt, positive, negative = model_and_prompts(wf)
    operator = wf.add("PSLD_LinearOperator", "PSLD Linear Operator (motion blur)", 2, 1, task="motion_deblur",
                      width=SIZE, height=SIZE, seed=0, kernel_size=0, motion_intensity=0.5)
    degrade = degraded_photo(wf, operator)
    loss = wf.add("PSLD_GluingLoss", "PSLD Gluing Loss", 3, 2, omega=1.0, gamma=0.1, variant="PSLD", norm="norm")
    all_in_one(wf, ckpt, positive, negative, operator, (degrade, MEASUREMENT), loss=loss)
    return wf


# -- demo-model workflows: the bundled Fashion-MNIST prior, PSLD next to what a ComfyUI user would do without it --

DEMO_SIZE, DEMO_STEPS, DEMO_SIGMA_Y = 32, 50, 0.05
DEMO_MODEL, DEMO_VAE, DEMO_POSITIVE, DEMO_NEGATIVE = 0, 1, 2, 3  # PSLD_DemoModelLoader outputs
# every operator widget written out: the frontend's loadApiJson kept a value of the previous graph's operator for a
# widget left out (box_placement), so the API form would not be the definition
DEMO_OPERATOR = dict(seed=0, projection="paper", box_size=0, box_placement="centred", drop_fraction=0.0, sr_scale="4",
                     sr_mode="bicubic", kernel_size=0, blur_sigma=1.0, motion_intensity=0.5)
DEMO_PREFIX = "PSLD_demo"  # output subfolder; files <task>_truth, _measurement, _psld, _without_psld
DEMO_TAIL = ("\n\n**Model:** the pack's demo prior, a small latent diffusion model trained on Fashion-MNIST 32x32 "
             "(`models/psld_demo_fmnist32.safetensors`); the images are Fashion-MNIST test images it never saw "
             "(Zalando Research, MIT licence). It runs in seconds on a CPU.\n\n**Outputs** (in "
             f"`output/{DEMO_PREFIX}/`): the truth, the measurement y, the PSLD result and the result without "
             "PSLD, to compare. `make demo` runs this workflow and tabulates PSNR, SSIM and ||A x - y||.\n\n"
             "Rout et al., *Solving Linear Inverse Problems Provably via Posterior Sampling with Latent Diffusion "
             "Models*, NeurIPS 2023.")


def demo_output(wf: Workflow, kind: str) -> str:
    """SaveImage filename_prefix of a demo output: output/PSLD_demo/<task>_<kind> (what tools/demo.py reads)."""
    return f"{DEMO_PREFIX}/{wf.name.removeprefix('PSLD_demo_')}_{kind}"


def demo_measurement(wf: Workflow, task: str, index: int, **settings) -> tuple[str, str, str]:
    """Demo model and image -> operator -> PSLD_Degrade, saving the truth and y. Returns (loader, operator, degrade)."""
    loader = wf.add("PSLD_DemoModelLoader", "PSLD Demo Model Loader (Fashion-MNIST 32x32)", 1, 0, subject="any")
    truth = wf.add("PSLD_DemoImage", "PSLD Demo Image (the truth)", 1, 1, index=index)
    operator = wf.add("PSLD_LinearOperator", f"PSLD Linear Operator ({wf.label})", 2, 0, task=task,
                      width=DEMO_SIZE, height=DEMO_SIZE, **{**DEMO_OPERATOR, **settings})
    degrade = wf.add("PSLD_Degrade", "PSLD Degrade (makes the measurement)", 2, 1, image=(truth, IMAGE),
                     operator=(operator, OPERATOR), sigma_y=DEMO_SIGMA_Y, seed=0)
    wf.add("SaveImage", "Truth", 3, 0, images=(truth, IMAGE), filename_prefix=demo_output(wf, "truth"))
    wf.add("SaveImage", "Measurement y", 3, 1, images=(degrade, MEASUREMENT),
           filename_prefix=demo_output(wf, "measurement"))
    return loader, operator, degrade


def demo_psld(wf: Workflow, loader: str, operator: str, degrade: str, **loss) -> None:
    """PSLD_Sampler on the demo model -> SaveImage; `loss` (omega, gamma): a PSLD_GluingLoss instead of the task's
    reference weights."""
    inputs = {}
    if loss:
        inputs["loss"] = (wf.add("PSLD_GluingLoss", "PSLD Gluing Loss (weights tuned on the demo prior)", 3, 2,
                                 variant="PSLD", norm="norm", **loss), 0)
    sampler = wf.add("PSLD_Sampler", "PSLD Sampler", 4, 0, model=(loader, DEMO_MODEL), vae=(loader, DEMO_VAE),
                     positive=(loader, DEMO_POSITIVE), negative=(loader, DEMO_NEGATIVE),
                     operator=(operator, OPERATOR), measurement=(degrade, MEASUREMENT), seed=0, steps=DEMO_STEPS,
                     cfg=1.0, eta=0.0, scheduler="ddim_uniform", **inputs)
    wf.add("SaveImage", "PSLD result", 4, 1, images=(sampler, SAMPLER_IMAGE), filename_prefix=demo_output(wf, "psld"))


def demo_ksampler(wf: Workflow, loader: str, latent: tuple, denoise: float, title: str) -> str:
    """Core KSampler with the same model, prompts, seed, steps and DDIM schedule as the PSLD sampler, decoded."""
    ksampler = wf.add("KSampler", title, 5, 3, model=(loader, DEMO_MODEL), positive=(loader, DEMO_POSITIVE),
                      negative=(loader, DEMO_NEGATIVE), latent_image=latent, seed=0, steps=DEMO_STEPS, cfg=1.0,
                      sampler_name="ddim", scheduler="ddim_uniform", denoise=denoise)
    return wf.add("VAEDecode", "VAE Decode", 6, 0, samples=(ksampler, 0), vae=(loader, DEMO_VAE))


def save_without_psld(wf: Workflow, image: str) -> None:
    wf.add("SaveImage", "Without PSLD", 6, 1, images=(image, 0), filename_prefix=demo_output(wf, "without_psld"))


def demo_inpainting_baseline(wf: Workflow, loader: str, operator: str, degrade: str) -> None:
    """ComfyUI's latent inpainting: encode y, mask the latent (hole from the operator's preview, which is the mask,
    white = hole, for inpainting tasks), KSampler at denoise 1 regenerates the hole and keeps the rest."""
    mask = wf.add("ImageToMask", "Operator preview -> MASK (white = hole)", 5, 0, image=(operator, OPERATOR_PREVIEW),
                  channel="red")
    encoded = wf.add("VAEEncode", "VAE Encode (the measurement)", 5, 1, pixels=(degrade, MEASUREMENT),
                     vae=(loader, DEMO_VAE))
    masked = wf.add("SetLatentNoiseMask", "Set Latent Noise Mask", 5, 2, samples=(encoded, 0), mask=(mask, 0))
    save_without_psld(wf, demo_ksampler(wf, loader, (masked, 0), 1.0, "KSampler (inpaint the masked latent)"))


def demo_img2img_baseline(wf: Workflow, loader: str, degrade: str, denoise: float = 0.5) -> None:
    """ComfyUI's img2img: encode y, KSampler at denoise 0.5 (keeps the layout, redraws the detail)."""
    encoded = wf.add("VAEEncode", "VAE Encode (the measurement)", 5, 1, pixels=(degrade, MEASUREMENT),
                     vae=(loader, DEMO_VAE))
    save_without_psld(wf, demo_ksampler(wf, loader, (encoded, 0), denoise, f"KSampler (img2img, denoise {denoise})"))


def demo_workflow(name: str, label: str, note: str) -> Workflow:
    return Workflow(f"PSLD_demo_{name}", label, f"## PSLD demo: {label}\n" + note, api_dir=DEMO_API_DIR,
                    tail=DEMO_TAIL)


WITHOUT_PSLD = "\n\n**Without PSLD** (right column): "


def demo_box_inpainting() -> Workflow:
    wf = demo_workflow("box_inpainting", "box inpainting", "Fills the missing centre square (16x16) of a 32x32 "
                       "Fashion-MNIST image. The PSLD Gluing Loss sets omega 1, gamma 0.1, which scored best at 50 "
                       "steps on the demo prior's validation images (the reference box weights are tuned for 1000 "
                       "steps)." + WITHOUT_PSLD + "ComfyUI's latent inpainting: VAE Encode of y, Set Latent Noise "
                       "Mask with the operator's mask (its preview output through Image To Mask), KSampler at "
                       "denoise 1.")
    loader, operator, degrade = demo_measurement(wf, "box_inpaint", 2)
    # the reference box weights (omega 0.1, gamma 0.01) are tuned for 1000 steps and pull too weakly at 50 steps;
    # omega 1, gamma 0.1 scored best on the validation split at 50 steps (docs/benchmarks.md)
    demo_psld(wf, loader, operator, degrade, omega=1.0, gamma=0.1)
    demo_inpainting_baseline(wf, loader, operator, degrade)
    return wf


def demo_random_inpainting() -> Workflow:
    wf = demo_workflow("random_inpainting", "random inpainting", "Restores an image with 70 % of its pixels "
                       "missing (seeded)." + WITHOUT_PSLD + "ComfyUI's latent inpainting with the operator's mask "
                       "(a pixel mask becomes a soft latent mask).")
    loader, operator, degrade = demo_measurement(wf, "random_inpaint", 0, drop_fraction=0.7)
    demo_psld(wf, loader, operator, degrade)
    demo_inpainting_baseline(wf, loader, operator, degrade)
    return wf


def demo_super_resolution() -> Workflow:
    wf = demo_workflow("super_resolution_x4", "super-resolution x4", "8x8 measurement in, 32x32 image out."
                       + WITHOUT_PSLD + "a bicubic 4x upscale of the measurement (Upscale Image By).")
    loader, operator, degrade = demo_measurement(wf, "super_resolution", 7)
    demo_psld(wf, loader, operator, degrade)
    upscaled = wf.add("ImageScaleBy", "Upscale Image By (bicubic x4)", 5, 0, image=(degrade, MEASUREMENT),
                      upscale_method="bicubic", scale_by=4.0)
    save_without_psld(wf, upscaled)
    return wf


def demo_deblur(name: str, label: str, task: str, index: int, what: str) -> Workflow:
    """A deblurring demo: PSLD against ComfyUI's img2img of the blurred measurement."""
    wf = demo_workflow(name, label, what + WITHOUT_PSLD + "img2img: VAE Encode of y, KSampler at denoise 0.5.")
    loader, operator, degrade = demo_measurement(wf, task, index)
    demo_psld(wf, loader, operator, degrade)
    demo_img2img_baseline(wf, loader, degrade)
    return wf


def demo_gaussian_deblur() -> Workflow:
    return demo_deblur("gaussian_deblur", "Gaussian deblur", "gaussian_deblur", 13, "Removes a Gaussian blur "
                       "(sigma 1 px, 9 px kernel, about as strong for a 32 px image as sigma 16 at 512).")


def demo_motion_deblur() -> Workflow:
    return demo_deblur("motion_deblur", "motion deblur", "motion_deblur", 9, "Removes a random camera-shake blur "
                       "(9 px kernel drawn with the operator's seed).")


def demo_workflows() -> list[Workflow]:
    return [demo_box_inpainting(), demo_random_inpainting(), demo_super_resolution(), demo_gaussian_deblur(),
            demo_motion_deblur()]


def workflows() -> list[Workflow]:
    return [box_inpainting(), mask_inpainting(), random_inpainting(), super_resolution(), gaussian_deblur(),
            motion_deblur(), *demo_workflows()]


def api_path(name: str) -> Path:
    """Where the API form of the example workflow `name` is kept."""
    return (DEMO_API_DIR if name.startswith("PSLD_demo_") else API_DIR) / f"{name}.json"


# -- browser: API form -> UI form -------------------------------------------------------------------------------

LOAD_AND_LAY_OUT = """async ([api, name, layout, note]) => {
  const app = window.comfyAPI.app.app;
  await app.loadApiJson(api, name);
  await new Promise((r) => setTimeout(r, 1500));  // LoadImage previews load and resize their nodes
  const graph = app.graph;
  const noteNode = window.LiteGraph.createNode("MarkdownNote");
  noteNode.size = [340, 640];
  graph.add(noteNode);
  // after graph.add: a note added before it could take the text of the previous workflow's note with the same id
  noteNode.widgets[0].value = note;
  const place = { ...layout, [noteNode.id]: [0, 0] };
  for (const node of graph.nodes) {
    for (const w of node.widgets ?? []) if (w.name === "control_after_generate") w.value = "fixed";
    if (["PreviewImage", "SaveImage"].includes(node.type)) node.size = [320, 360];  // room for the images
    if (node.type === "CLIPTextEncode") node.size = [320, 130];
    if (node.type === "LoadImage") node.size = [320, 420];  // its image preview grows it after loading
  }
  const columns = new Map();
  for (const [id, [column, row]] of Object.entries(place)) {
    const node = graph.getNodeById(Number(id)) ?? graph.getNodeById(id);
    if (!columns.has(column)) columns.set(column, []);
    columns.get(column).push([row, node]);
  }
  let x = 0;
  for (const column of [...columns.keys()].sort((a, b) => a - b)) {
    const nodes = columns.get(column).sort((a, b) => a[0] - b[0]).map(([, n]) => n);
    let y = 0, width = 0;
    for (const node of nodes) {
      node.pos = [x, y];
      y += node.size[1] + 70;
      width = Math.max(width, node.size[0]);
    }
    x += width + 60;
  }
  app.canvas.setDirty(true, true);
  return { placed: Object.keys(place).length, total: graph.nodes.length };
}"""

READABLE_VIEW = """() => {
  // below about 0.6 litegraph draws nodes without text: zoom in to that and show the top-left (note, loaders)
  const ds = window.comfyAPI.app.app.canvas.ds;
  if (ds.scale < 0.62) { ds.scale = 0.62; ds.offset = [120, 200]; }
}"""

SERIALIZE = """async () => {
  const app = window.comfyAPI.app.app;
  const workflow = app.graph.serialize();
  workflow.extra = { ...(workflow.extra ?? {}), ds: { scale: app.canvas.ds.scale, offset: [...app.canvas.ds.offset] } };
  const prompt = await app.graphToPrompt();
  return JSON.stringify({ workflow, api: prompt.output });  // JSON drops undefined fields (Playwright would send null)
}"""


def round_view(workflow: dict) -> dict:
    ds = workflow["extra"]["ds"]
    ds["scale"] = round(ds["scale"], 3)
    ds["offset"] = [round(v, 1) for v in ds["offset"]]
    return workflow


def widget_defaults(object_info: dict, class_type: str) -> dict:
    info = object_info[class_type]["input"]
    defaults = {}
    for section in ("required", "optional"):
        for name, spec in info.get(section, {}).items():
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if "default" in options:
                defaults[name] = options["default"]
            elif isinstance(spec[0], list) and spec[0]:
                defaults[name] = spec[0][0]
            elif spec[0] == "COMBO" and options.get("options"):
                defaults[name] = options["options"][0]
    return defaults


def api_differences(expected: dict, got: dict, object_info: dict) -> list[str]:
    """Where the frontend's API form differs from the definition (unset widgets must be at their defaults)."""
    problems = []
    if set(expected) != set(got):
        problems.append(f"node ids {sorted(expected)} != {sorted(got)}")
    for node_id in sorted(set(expected) & set(got), key=int):
        want, have = expected[node_id], got[node_id]
        if want["class_type"] != have["class_type"] or want["_meta"] != have.get("_meta"):
            problems.append(f"node {node_id}: {want['class_type']} {want['_meta']} != {have['class_type']} "
                            f"{have.get('_meta')}")
        defaults = widget_defaults(object_info, want["class_type"])
        for name in sorted(set(want["inputs"]) | set(have["inputs"])):
            value = have["inputs"].get(name, "<missing>")
            target = want["inputs"].get(name, defaults.get(name, "<no default>"))
            if value != target:
                problems.append(f"node {node_id} ({want['class_type']}) input {name}: {value!r} != {target!r}")
    return problems


# -- thumbnails ----------------------------------------------------------------------------------------------------

def ancestors(api: dict, node_ids: list[str]) -> set[str]:
    seen, todo = set(), list(node_ids)
    while todo:
        node_id = todo.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        todo += [v[0] for v in api[node_id]["inputs"].values() if isinstance(v, list)]
    return seen


def with_defaults(api: dict, object_info: dict) -> dict:
    """The API form with every widget the definition leaves out at its default (as the frontend writes it)."""
    return {node_id: {**node, "inputs": {**widget_defaults(object_info, node["class_type"]), **node["inputs"]}}
            for node_id, node in api.items()}


def thumbnail_prompt(api: dict) -> tuple[dict, str, str]:
    """The workflow's photo -> operator -> measurement part, with previews of the measurement and the operator.
    Returns (prompt, measurement preview id, operator preview id)."""
    sampler = next(i for i, n in api.items() if n["class_type"] in ("PSLD_Sampler", "PSLD_PosteriorSampler"))
    measurement, operator = api[sampler]["inputs"]["measurement"], api[sampler]["inputs"]["operator"]
    keep = ancestors(api, [measurement[0], operator[0]])
    prompt = {i: api[i] for i in keep}
    prompt["900"] = {"class_type": "PreviewImage", "inputs": {"images": measurement}}
    prompt["901"] = {"class_type": "PreviewImage", "inputs": {"images": [operator[0], OPERATOR_PREVIEW]}}
    return prompt, "900", "901"


def compose_thumbnail(measurement, operator_view, label: str) -> bytes:
    """256x256 JPEG: the measurement, an inset of the operator's preview (mask / kernel / pattern), the task name."""
    from PIL import Image, ImageDraw, ImageFont

    side = THUMB_SIDE
    canvas = measurement.convert("RGB").resize((side, side), Image.Resampling.NEAREST
                                               if measurement.width < side else Image.Resampling.LANCZOS)
    inset_side = 92
    inset = operator_view.convert("RGB")
    inset.thumbnail((inset_side, inset_side), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(canvas)
    box = (side - inset.width - 10, 8, side - 6, inset.height + 12)
    draw.rectangle(box, fill=(255, 255, 255))
    canvas.paste(inset, (box[0] + 2, box[1] + 2))
    banner = Image.new("RGBA", (side, 46), (0, 0, 0, 170))
    canvas.paste(banner, (0, side - 46), banner)
    font = ImageFont.load_default(size=20)
    small = ImageFont.load_default(size=12)
    draw.text((10, side - 42), label, fill=(255, 255, 255), font=font)
    draw.text((10, side - 18), "PSLD posterior sampling", fill=(200, 220, 255), font=small)
    for quality in (88, 80, 70, 60):
        buffer = io.BytesIO()
        canvas.save(buffer, format="JPEG", quality=quality, optimize=True)
        if buffer.tell() < THUMB_MAX_BYTES:
            return buffer.getvalue()
    raise RuntimeError(f"thumbnail for {label} stays above {THUMB_MAX_BYTES} bytes")


def make_thumbnail(client, wf: Workflow, object_info: dict) -> bytes:
    from PIL import Image

    prompt, measurement_id, operator_id = thumbnail_prompt(with_defaults(wf.api(), object_info))
    result = client.run(prompt)

    def picture(node_id):
        info = result.outputs[node_id]["images"][0]
        return Image.fromarray((client.image(info) * 255).round().astype("uint8"))

    return compose_thumbnail(picture(measurement_id), picture(operator_id), wf.label)


# -- main ------------------------------------------------------------------------------------------------------------

def start_server(state: Path):
    from helpers.comfy_server import ComfyServer

    server = ComfyServer(state)
    shutil.copy(PHOTO_512, state / "input" / PHOTO_512.name)
    shutil.copy(PHOTO_128, state / "input" / PHOTO_128.name)
    (state / "input" / HOLE_PHOTO).write_bytes(photo_with_hole())
    server.wait_ready()
    return server


def selected(only: list[str] | None) -> list[Workflow]:
    chosen = [wf for wf in workflows() if not only or any(wf.name.startswith(prefix) for prefix in only)]
    if not chosen:
        raise SystemExit(f"--only {only}: no workflow name starts with that")
    return chosen


def write_thumbnails(client, object_info: dict, only: list[str] | None = None) -> None:
    UI_DIR.mkdir(exist_ok=True)
    for wf in selected(only):
        thumbnail = make_thumbnail(client, wf, object_info)
        (UI_DIR / f"{wf.name}.jpg").write_bytes(thumbnail)
        print(f"{wf.name}.jpg: {len(thumbnail)} bytes")


def write_workflows(page, object_info: dict, only: list[str] | None = None) -> None:
    import comfy_page

    UI_DIR.mkdir(exist_ok=True)
    for wf in selected(only):
        api = wf.api()
        note = wf.note + (NOTE_TAIL.format(ckpt=CHECKPOINT) if wf.tail is None else wf.tail)
        placed = page.evaluate(LOAD_AND_LAY_OUT, [api, wf.name, wf.layout, note])
        if placed["placed"] != placed["total"]:
            raise RuntimeError(f"{wf.name}: {placed}")
        comfy_page.fit_view(page)
        page.evaluate(READABLE_VIEW)
        result = json.loads(page.evaluate(SERIALIZE))
        notes = [n["widgets_values"][0] for n in result["workflow"]["nodes"] if n["type"] == "MarkdownNote"]
        if notes != [note]:
            raise RuntimeError(f"{wf.name}: the saved note is not this workflow's: {[n[:60] for n in notes]}")
        problems = api_differences(api, result["api"], object_info)
        if problems:
            raise RuntimeError(f"{wf.name}: the frontend's API form differs:\n" + "\n".join(problems))
        (UI_DIR / f"{wf.name}.json").write_text(json.dumps(round_view(result["workflow"]), indent=1) + "\n")
        wf.api_dir.mkdir(parents=True, exist_ok=True)
        api_path(wf.name).write_text(json.dumps(result["api"], indent=1) + "\n")
        print(f"{wf.name}.json: {len(api)} nodes (UI and API form)")


def check(page) -> int:
    """Open every committed UI file in this host's frontend; its API form must equal the committed API file."""
    import comfy_page

    failures = 0
    for path in sorted(UI_DIR.glob("*.json")):
        comfy_page.load_workflow(page, json.loads(path.read_text()))
        page.wait_for_timeout(1000)
        got = json.loads(page.evaluate(
            "async () => JSON.stringify((await window.comfyAPI.app.app.graphToPrompt()).output)"))
        want = json.loads(api_path(path.stem).read_text())
        same = json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)
        failures += not same
        print(f"{path.name}: {'same API form' if same else 'DIFFERENT API form'}")
        if not same:
            for node_id in sorted(set(got) | set(want), key=int):
                if got.get(node_id) != want.get(node_id):
                    print(f"  node {node_id}: frontend {got.get(node_id)}")
                    print(f"  node {node_id}: file     {want.get(node_id)}")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare the committed UI and API files")
    parser.add_argument("--only", nargs="+", metavar="PREFIX", help="write only the workflows whose name starts so")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    import comfy_page
    from helpers.comfy_client import ComfyClient

    with tempfile.TemporaryDirectory(prefix="psld-workflows-") as state:
        server = start_server(Path(state))
        try:
            client = ComfyClient(server.url)
            if not args.check:  # before the browser: the client runs its own event loop
                object_info = client.get_json("/object_info")
                write_thumbnails(client, object_info, args.only)
            with sync_playwright() as playwright:
                browser = comfy_page.launch(playwright)
                page, log = comfy_page.open_comfy(browser, server.url)
                if args.check:
                    failures = check(page)
                else:
                    write_workflows(page, object_info, args.only)
                    failures = 0
                errors = log.errors()
                if errors or log.outside_requests:
                    print("page problems:\n" + "\n".join(errors + log.outside_requests))
                    failures += 1
                browser.close()
        finally:
            server.stop()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
