"""POST /psld/preview on a real ComfyUI server: valid requests give a PNG of the operator at thumbnail size; bad
JSON, wrong types, out-of-range or huge input give HTTP 400 with a message, and the server keeps serving."""
from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

pytestmark = pytest.mark.server

PATH = "/psld/preview"


def post(base_url: str, body: bytes | str, *, path: str = PATH, headers: dict | None = None):
    """(status, headers, body bytes) of a POST; HTTP errors are returned, not raised."""
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(base_url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def preview(base_url: str, **params):
    return post(base_url, json.dumps(params))


def error_of(result) -> str:
    status, headers, body = result
    assert status == 400, (status, body[:200])
    assert headers["Content-Type"].startswith("application/json")
    message = json.loads(body)["error"]
    assert isinstance(message, str) and message
    return message


def png_pixels(body: bytes) -> np.ndarray:
    from PIL import Image
    image = Image.open(io.BytesIO(body))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def server_answers(base_url: str) -> bool:
    with urllib.request.urlopen(base_url + "/object_info/PSLD_LinearOperator", timeout=30) as response:
        return response.status == 200 and "PSLD_LinearOperator" in json.loads(response.read())


@pytest.mark.parametrize(("width", "height", "expected"), [
    (512, 384, (256, 192)),   # longer side scaled to 256
    (64, 128, (64, 128)),     # small images are not enlarged
    (4096, 64, (256, 4)),     # extreme aspect ratio
])
def test_png_has_the_thumbnail_size(comfy_url, width, height, expected):
    status, headers, body = preview(comfy_url, task="super_resolution", width=width, height=height)
    assert status == 200, body[:300]
    assert headers["Content-Type"] == "image/png"
    pixels = png_pixels(body)
    assert pixels.shape == (expected[1], expected[0], 3)
    assert "SR x4 (bicubic)" in headers["X-PSLD-Description"]


def test_box_mask_is_drawn_where_the_node_puts_it(comfy_url):
    """A centred 32 px box on a 64x128 image: white (hole) in the middle, black (observed) around it."""
    status, headers, body = preview(comfy_url, task="box_inpaint", width=128, height=64, box_size=32,
                                    box_placement="centred")
    assert status == 200, body[:300]
    grey = png_pixels(body)[..., 0]
    assert grey.shape == (64, 128)
    assert (grey[16:48, 48:80] == 255).all() and grey.sum() == 255 * 32 * 32
    assert "Inpainting" in headers["X-PSLD-Description"] and "128x64 -> 128x64" in headers["X-PSLD-Description"]


def test_every_widget_of_the_node_is_accepted(comfy_url):
    """The page sends the node's widget values; whatever widgets /object_info lists are accepted at defaults."""
    with urllib.request.urlopen(comfy_url + "/object_info/PSLD_LinearOperator", timeout=30) as response:
        inputs = json.loads(response.read())["PSLD_LinearOperator"]["input"]
    widgets = {name: spec[1]["default"] for section in ("required", "optional")
               for name, spec in inputs.get(section, {}).items()
               if isinstance(spec, list) and len(spec) > 1 and isinstance(spec[1], dict) and "default" in spec[1]}
    assert {"task", "width", "height", "seed"} <= set(widgets)
    for task in ("box_inpaint", "random_inpaint", "super_resolution", "gaussian_deblur", "motion_deblur",
                 "colorize", "denoise"):
        status, _, body = preview(comfy_url, **{**widgets, "task": task, "width": 128, "height": 128})
        assert status == 200, (task, body[:300])
        assert png_pixels(body).shape == (128, 128, 3)


@pytest.mark.parametrize(("body", "expected"), [
    ("{not json", "not valid JSON"),
    ("", "not valid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    ("[1, 2]", "JSON object"),
    ('"box_inpaint"', "JSON object"),
    ('{"blur_sigma": NaN}', "NaN"),
    ('{"width": Infinity}', "Infinity"),
    ("[" * 2000 + "]" * 2000, "nests JSON too deeply"),  # within the size limit
])
def test_bad_json_is_refused(comfy_url, body, expected):
    assert expected in error_of(post(comfy_url, body))


@pytest.mark.parametrize(("params", "expected"), [
    ({"width": "512"}, "width must be an integer"),
    ({"width": 512.5}, "width must be an integer"),
    ({"width": True}, "width must be an integer"),
    ({"seed": None}, "seed must be an integer"),
    ({"blur_sigma": "3"}, "blur_sigma must be a finite number"),
    ({"blur_sigma": [3.0]}, "blur_sigma must be a finite number"),
    ({"task": 3}, "task must be one of"),
    ({"task": "sharpen"}, "task must be one of"),
    ({"sr_scale": 4}, "sr_scale must be one of"),
    ({"bogus": 1}, "unknown field"),
])
def test_wrong_types_are_refused(comfy_url, params, expected):
    assert expected in error_of(preview(comfy_url, **params))


@pytest.mark.parametrize(("params", "expected"), [
    ({"width": 10 ** 30}, "width=1000000000000000000000000000000 is out of range"),
    ({"height": 8192}, "out of range"),
    ({"width": 24}, "out of range"),
    ({"seed": -1}, "out of range"),
    ({"blur_sigma": 1e308}, "out of range"),
    ({"width": 100}, "multiple of 8"),                                   # the node's own size rule
    ({"task": "gaussian_deblur", "kernel_size": 8}, "odd"),              # the node's own kernel rule
    ({"task": "box_inpaint", "width": 64, "height": 64, "box_size": 64}, "box_size"),  # random needs 1 px free
    ({"task": "mask_inpaint"}, "needs a mask"),                          # only the node's MASK input can say
])
def test_values_the_node_refuses_are_refused(comfy_url, params, expected):
    assert expected in error_of(preview(comfy_url, **params))


def test_huge_bodies_are_refused_and_the_server_keeps_serving(comfy_url):
    huge = json.dumps({"task": "box_inpaint", "padding": "x" * 5_000_000})
    assert "at most 4096" in error_of(post(comfy_url, huge))
    assert "at most 4096" in error_of(post(comfy_url, huge, path="/api" + PATH))  # the frontend's prefix
    for body in ("{", "[]", '{"width": "x"}'):
        error_of(post(comfy_url, body))
    assert server_answers(comfy_url)
    status, _, body = preview(comfy_url, task="gaussian_deblur", width=64, height=64)
    assert status == 200 and png_pixels(body).shape == (64, 64, 3)
