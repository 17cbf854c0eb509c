"""HTTP route of the pack: POST /psld/preview draws the operator a PSLD_LinearOperator node would build.

The page (web/psld_preview.js) sends the node's widget values as JSON and shows the PNG that comes back. Every
request is checked against the node's own input definitions (types, ranges, choices), then the operator is built by
nodes/operator_factory.build_operator and drawn by nodes/operator_preview.operator_preview, exactly as the node does
when it runs. Anything wrong (bad JSON, wrong type, out of range, too large) gets HTTP 400 with {"error": message};
the server keeps serving.

The route is registered once, when the pack is loaded by a running ComfyUI server. Loaded in-process (tests, scripts)
there is no server and nothing is registered.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import io as bytes_io
import json
import math
import sys

import torch

from ..psld.operators import Inpainting, KernelBlur
from .operator_factory import SIZE_MIN, SIZE_MULTIPLE, build_operator
from .operator_nodes import PSLDLinearOperator
from .operator_preview import operator_preview

PREVIEW_PATH = "/psld/preview"
MAX_BODY_BYTES = 4096  # a request holds a dozen widget values; anything larger is not from the page
THUMBNAIL_SIDE = 256  # longer side of the returned PNG, in pixels
WIDGET_TYPES = ("INT", "FLOAT", "COMBO")

# One render at a time, off the event loop: the server answers other requests while a preview is drawn.
_RENDERER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="psld-preview")
_registered = False


class PreviewRequestError(ValueError):
    """A request the route cannot draw; the message is sent back with HTTP 400."""


def operator_widgets() -> dict[str, tuple[str, dict]]:
    """PSLD_LinearOperator's widget inputs, name -> (type, options), as ComfyUI itself sees them."""
    inputs = PSLDLinearOperator.INPUT_TYPES()
    widgets = {}
    for section in ("required", "optional"):
        for name, (kind, options, *_) in inputs.get(section, {}).items():
            if kind in WIDGET_TYPES:
                widgets[name] = (kind, options)
    return widgets


def checked_params(payload) -> dict:
    """The request's widget values with defaults filled in, each checked against the node's definition."""
    if not isinstance(payload, dict):
        raise PreviewRequestError(f"the body must be a JSON object of widget values, got a JSON "
                                  f"{type(payload).__name__}.")
    widgets = operator_widgets()
    unknown = sorted(set(payload) - set(widgets))
    if unknown:
        raise PreviewRequestError(f"unknown field(s) {', '.join(repr(k)[:40] for k in unknown[:5])}; allowed: "
                                  f"{', '.join(widgets)}.")
    params = {}
    for name, (kind, options) in widgets.items():
        value = payload.get(name, options.get("default"))
        params[name] = _checked_value(name, kind, options, value)
    return params


def _checked_value(name: str, kind: str, options: dict, value):
    if kind == "COMBO":
        choices = options.get("options", [])
        if not isinstance(value, str) or value not in choices:
            raise PreviewRequestError(f"{name} must be one of {', '.join(map(str, choices))}; got "
                                      f"{_shown(value)}.")
        return value
    if kind == "INT":
        if isinstance(value, bool) or not isinstance(value, int):
            raise PreviewRequestError(f"{name} must be an integer; got {_shown(value)}.")
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PreviewRequestError(f"{name} must be a finite number; got {_shown(value)}.")
    low, high = options.get("min"), options.get("max")
    if (low is not None and value < low) or (high is not None and value > high):
        raise PreviewRequestError(f"{name}={_shown(value)} is out of range; allowed: {low} to {high}.")
    return int(value) if kind == "INT" else float(value)


def _shown(value) -> str:
    """A short, safe rendering of a received value for an error message."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_body(body: bytes):
    """JSON text -> Python value; NaN/Infinity and invalid UTF-8 or JSON are refused."""
    def refuse_constant(name):
        raise PreviewRequestError(f"{name} is not a number JSON allows.")
    try:
        return json.loads(body.decode("utf-8"), parse_constant=refuse_constant)
    except UnicodeDecodeError:
        raise PreviewRequestError("the body is not UTF-8 text.") from None
    except json.JSONDecodeError as error:
        raise PreviewRequestError(f"the body is not valid JSON ({error.msg} at character {error.pos}).") from None
    except RecursionError:
        raise PreviewRequestError("the body nests JSON too deeply.") from None


def thumbnail_size(width: int, height: int, side: int = THUMBNAIL_SIDE) -> tuple[int, int]:
    """(width, height) of the PNG: the image size scaled so its longer side is at most `side`."""
    scale = min(1.0, side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _pattern_size(width: int, height: int) -> tuple[int, int]:
    """A smaller size that still satisfies the node's size rules, for previews that look the same at any size."""
    scale = min(1.0, THUMBNAIL_SIDE / max(width, height))
    def shrink(n):
        return max(SIZE_MIN, int(n * scale) // SIZE_MULTIPLE * SIZE_MULTIPLE)
    return shrink(width), shrink(height)


def render_preview(params: dict) -> tuple[bytes, str]:
    """PNG bytes of the operator's preview at thumbnail size, and the operator's one-line description."""
    from PIL import Image  # ComfyUI's own dependency

    task = params.pop("task")
    spec = build_operator(task, **params)  # checks the settings at the size the node will use
    if not isinstance(spec.operator, (Inpainting, KernelBlur)):
        # a test pattern before/after the operator: drawing it at a small size shows the same thing, faster
        small_w, small_h = _pattern_size(spec.width, spec.height)
        if (small_w, small_h) != (spec.width, spec.height):
            spec_small = build_operator(task, **{**params, "width": small_w, "height": small_h})
        else:
            spec_small = spec
        picture = operator_preview(spec_small)
    else:
        picture = operator_preview(spec)  # masks and kernels depend on the exact size: draw, then shrink
    thumb_w, thumb_h = thumbnail_size(spec.width, spec.height)
    nchw = picture.movedim(-1, 1)
    if tuple(nchw.shape[-2:]) != (thumb_h, thumb_w):
        nchw = torch.nn.functional.interpolate(nchw, size=(thumb_h, thumb_w), mode="area")
    pixels = (nchw[0].movedim(0, -1).clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()
    buffer = bytes_io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue(), spec.describe()


async def preview_handler(request):
    """POST /psld/preview: JSON widget values -> image/png, or 400 {"error": ...}."""
    from aiohttp import web

    def bad_request(message: str):
        return web.json_response({"error": message}, status=400)

    if request.content_length is None:
        return bad_request("send the widget values as a JSON body with a Content-Length header.")
    if request.content_length > MAX_BODY_BYTES:
        return bad_request(f"the body is {request.content_length} bytes; at most {MAX_BODY_BYTES} are accepted.")
    try:
        params = checked_params(parse_body(await request.read()))
        loop = asyncio.get_running_loop()
        png, description = await loop.run_in_executor(_RENDERER, render_preview, params)
    except ValueError as error:  # PreviewRequestError, PSLDInputError, or a psld argument check
        return bad_request(str(error))
    headers = {"Cache-Control": "no-store",
               "X-PSLD-Description": description.encode("ascii", "replace").decode("ascii")}
    return web.Response(body=png, content_type="image/png", headers=headers)


def register_routes() -> bool:
    """Add the pack's routes to the running ComfyUI server once. Returns False when no server is running."""
    global _registered
    if _registered:
        return True
    server_module = sys.modules.get("server")  # main.py imports it before loading custom nodes
    prompt_server = getattr(getattr(server_module, "PromptServer", None), "instance", None)
    if prompt_server is None:
        return False
    prompt_server.routes.post(PREVIEW_PATH)(preview_handler)
    _registered = True
    return True


register_routes()
