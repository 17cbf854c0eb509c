"""PSLD_LinearOperator and PSLD_Degrade, run in-process on the real ComfyUI host, as ComfyUI runs nodes
(under torch.inference_mode()), with the pack loaded by ComfyUI's own custom-node loader."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import OPERATOR_DEFAULTS

H, W = 96, 128  # small, not square, multiples of 8
TASKS = ("box_inpaint", "random_inpaint", "mask_inpaint", "super_resolution", "gaussian_deblur", "motion_deblur",
         "colorize", "denoise")
DEFAULTS = {**OPERATOR_DEFAULTS, "width": W, "height": H, "box_placement": "random"}  # the node's own placement


@pytest.fixture(scope="module")
def L(node_classes):
    return node_classes["PSLD_LinearOperator"]


@pytest.fixture(scope="module")
def D(node_classes):
    return node_classes["PSLD_Degrade"]


@pytest.fixture(scope="module")
def error_type(input_error):
    return input_error


def make_operator(L, task="box_inpaint", mask=None, **settings):
    with torch.inference_mode():
        out = L.execute(task=task, mask=mask, **{**DEFAULTS, **settings})
    return out.result


def degrade(D, image, spec, sigma_y=0.05, seed=0):
    with torch.inference_mode():
        return D.execute(image=image, operator=spec, sigma_y=sigma_y, seed=seed).result


def photo(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, H, W, 3, generator=g)


def as_nchw(image):
    return image.movedim(-1, 1) * 2 - 1


def hole(h0, h1, w0, w1):
    mask = torch.zeros(1, H, W)
    mask[:, h0:h1, w0:w1] = 1.0
    return mask


# ------------------------------------------------------------------ schema and registration

@pytest.mark.parametrize("node_id", ["PSLD_LinearOperator", "PSLD_Degrade"])
def test_schema_has_ids_category_description_and_tooltips(comfy, node_id):
    cls = comfy.NODE_CLASS_MAPPINGS[node_id]
    schema = cls.GET_SCHEMA()
    assert schema.node_id == node_id
    assert schema.category == "image/restoration/PSLD"
    assert schema.description
    assert comfy.NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("PSLD ")
    info = cls.INPUT_TYPES()
    inputs = {**info["required"], **info.get("optional", {})}
    assert inputs, "no inputs"
    for name, (_, options) in inputs.items():
        assert options.get("tooltip"), f"input {name} has no tooltip"
    assert [i.id for i in schema.inputs] == list(inputs)
    assert schema.outputs and all(o.tooltip for o in schema.outputs)


def test_linear_operator_declares_its_sockets(L, D):
    schema = L.GET_SCHEMA()
    assert [o.get_io_type() for o in schema.outputs] == ["PSLD_LINEAR_OPERATOR", "IMAGE"]
    assert L.INPUT_TYPES()["optional"]["mask"][0] == "MASK"
    assert L.INPUT_TYPES()["required"]["task"][1]["options"] == list(TASKS)
    assert D.INPUT_TYPES()["required"]["operator"][0] == "PSLD_LINEAR_OPERATOR"
    # the seeds that define the problem start fixed (the frontend would randomize a "seed" widget after every run)
    for node in (L, D):
        assert node.INPUT_TYPES()["required"]["seed"][1]["control_after_generate"] == "fixed"
    assert [o.get_io_type() for o in D.GET_SCHEMA().outputs] == ["IMAGE", "IMAGE"]


def test_validate_inputs_checks_sizes_and_kernel(L):
    assert L.validate_inputs(width=512, height=256, kernel_size=0) is True
    assert L.validate_inputs(width=512, height=256, kernel_size=61) is True
    assert L.validate_inputs(width=None, height=None, kernel_size=None) is True  # linked inputs: checked at run time
    for bad, name in [(dict(width=500), "width"), (dict(height=8), "height"), (dict(width=8192), "width"),
                      (dict(kernel_size=60), "kernel_size"), (dict(kernel_size=513), "kernel_size")]:
        message = L.validate_inputs(**{"width": 512, "height": 512, "kernel_size": 0, **bad})
        assert isinstance(message, str) and name in message and "Fix:" in message


# ------------------------------------------------------------------ every task builds the right operator

@pytest.mark.parametrize("task", TASKS)
def test_every_task_gives_an_immutable_spec_and_a_preview(L, task):
    mask = hole(10, 40, 20, 60) if task == "mask_inpaint" else None
    spec, preview = make_operator(L, task, mask=mask)
    assert (spec.task, spec.height, spec.width) == (task, H, W)
    assert preview.shape == (1, H, W, 3) and preview.dtype == torch.float32
    assert 0.0 <= float(preview.min()) and float(preview.max()) <= 1.0 and float(preview.std()) > 0.05
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.task = "denoise"
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.operator.projection = "exact"


@pytest.mark.parametrize("task", TASKS)
def test_operator_built_under_inference_mode_supports_autograd_later(L, task):
    """The sampler backpropagates through A outside inference mode: the operator's tensors must allow that."""
    mask = hole(10, 40, 20, 60) if task == "mask_inpaint" else None
    spec, _ = make_operator(L, task, mask=mask)
    with torch.inference_mode(False), torch.enable_grad():
        x = torch.zeros(spec.image_shape(2)).requires_grad_()
        y = torch.ones(spec.measurement_shape(2))
        loss = (spec.operator.forward(x) - y).square().sum() + spec.operator.project(x, y).square().sum()
        (grad,) = torch.autograd.grad(loss, x)
    assert grad.shape == x.shape and bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0


def test_box_inpaint_default_box_is_half_of_each_side_inside_the_margin(L):
    spec, preview = make_operator(L, "box_inpaint", seed=5)
    observed = spec.operator.mask[0, 0]
    missing = (observed == 0).nonzero()
    top, left = missing.min(0).values.tolist()
    bottom, right = missing.max(0).values.tolist()
    assert (bottom - top + 1, right - left + 1) == (H // 2, W // 2)
    assert len(missing) == (H // 2) * (W // 2)  # one solid box
    assert top >= 16 and left >= 16 and bottom < H - 16 and right < W - 16
    assert torch.equal(preview[0, :, :, 0], 1.0 - observed)  # preview: white = hole


def box_of(observed):
    missing = (observed == 0).nonzero()
    (top, left), (bottom, right) = missing.min(0).values.tolist(), missing.max(0).values.tolist()
    return top, left, bottom, right


def test_random_box_on_a_small_image_keeps_a_smaller_margin(L):
    """At 32 px (the demo prior) the half-side box leaves 16 free pixels: no room for 16 px margins, so the margin is
    a quarter of them (4 px) and the box still moves with the seed."""
    corners = set()
    for seed in range(12):
        spec, _ = make_operator(L, "box_inpaint", width=32, height=32, seed=seed)
        top, left, bottom, right = box_of(spec.operator.mask[0, 0])
        assert (bottom - top + 1, right - left + 1) == (16, 16)
        assert top >= 4 and left >= 4 and bottom < 32 - 4 and right < 32 - 4
        corners.add((top, left))
    assert len(corners) > 3


def test_box_margin_is_the_reference_one_wherever_it_fits(pack_module):
    box_margin = pack_module("nodes.operator_factory").box_margin
    assert [box_margin(free) for free in (2000, 33, 32, 16, 3, 1, 0)] == [16, 16, 8, 4, 0, 0, 0]


def test_box_inpaint_size_and_centred_placement(L):
    spec, _ = make_operator(L, "box_inpaint", box_size=20, box_placement="centred")
    observed = spec.operator.mask[0, 0]
    expected = torch.ones(H, W)
    expected[(H - 20) // 2:(H - 20) // 2 + 20, (W - 20) // 2:(W - 20) // 2 + 20] = 0
    assert torch.equal(observed, expected)


def test_random_inpaint_drops_the_asked_fraction_or_a_reference_draw(L):
    spec, _ = make_operator(L, "random_inpaint", drop_fraction=0.25)
    assert int((spec.operator.mask == 0).sum()) == int(0.25 * H * W)
    for seed in range(4):
        spec, _ = make_operator(L, "random_inpaint", seed=seed)
        assert 0.3 <= float((spec.operator.mask == 0).float().mean()) <= 0.7  # p ~ U(0.3, 0.7)


def test_seed_fixes_the_operator(L):
    for task in ("box_inpaint", "random_inpaint"):
        a, b, c = (make_operator(L, task, seed=s)[0].operator.mask for s in (7, 7, 8))
        assert torch.equal(a, b) and not torch.equal(a, c)
    a, b, c = (make_operator(L, "motion_deblur", seed=s)[0].operator.kernel for s in (7, 7, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("scale", ["2", "4", "8"])
def test_super_resolution_measurement_is_the_small_image(L, D, pack_module, scale):
    s = int(scale)
    spec, _ = make_operator(L, "super_resolution", sr_scale=scale)
    assert spec.measurement_shape(2) == (2, 3, H // s, W // s)
    y, preview = degrade(D, photo(), spec, sigma_y=0.0)
    assert y.shape == (2, H // s, W // s, 3) and preview.shape == (2, H, W, 3)
    y_nchw = pack_module("nodes.measurement").measurement_from_image(y, spec, node_id="test")
    assert y_nchw.shape == (2, 3, H // s, W // s)


def test_area_super_resolution_degrade_is_the_block_average(L, D):
    spec, _ = make_operator(L, "super_resolution", sr_scale="4", sr_mode="area")
    image = photo()
    y, preview = degrade(D, image, spec, sigma_y=0.0)
    expected = F.avg_pool2d(image.movedim(-1, 1), 4).movedim(1, -1)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=0)
    # paper projection of y: nearest upsampling of the small image
    torch.testing.assert_close(preview, expected.repeat_interleave(4, 1).repeat_interleave(4, 2), atol=1e-5, rtol=0)


def test_blur_kernel_size_follows_the_reference_or_the_input(L, pack_module):
    factory = pack_module("nodes.operator_factory")
    assert factory.reference_kernel_size(256, 256) == 61 and factory.reference_kernel_size(512, 512) == 121
    assert factory.reference_kernel_size(512, 768) == 121  # the shorter side decides
    for task in ("gaussian_deblur", "motion_deblur"):
        spec, _ = make_operator(L, task)
        assert spec.operator.kernel.shape == (23, 23)  # reference rule at a 96 px side
        spec, _ = make_operator(L, task, kernel_size=15)
        kernel = spec.operator.kernel
        assert kernel.shape == (15, 15) and float(kernel.min()) >= 0
        assert abs(float(kernel.sum()) - 1.0) < 1e-6


def test_gaussian_blur_preserves_constants_and_smooths(L, D):
    spec, _ = make_operator(L, "gaussian_deblur", blur_sigma=2.0)
    flat = torch.full((1, H, W, 3), 0.3)
    y, _ = degrade(D, flat, spec, sigma_y=0.0)
    torch.testing.assert_close(y, flat, atol=1e-5, rtol=0)
    noisy = photo(1)
    y, _ = degrade(D, noisy, spec, sigma_y=0.0)
    assert float(y.std()) < 0.5 * float(noisy.std())


def test_colorize_measurement_is_grey_and_round_trips(L, D, pack_module):
    spec, _ = make_operator(L, "colorize")
    image = photo()
    y, _ = degrade(D, image, spec, sigma_y=0.0)
    grey = image.mean(dim=-1, keepdim=True)
    torch.testing.assert_close(y, grey.expand(-1, -1, -1, 3), atol=1e-5, rtol=0)
    from_image = pack_module("nodes.measurement").measurement_from_image
    y_nchw = from_image(y, spec, node_id="test")
    assert y_nchw.shape == (2, 1, H, W)
    torch.testing.assert_close(y_nchw, grey.movedim(-1, 1) * 2 - 1, atol=1e-5, rtol=0)
    torch.testing.assert_close(from_image(image, spec, node_id="test"), y_nchw, atol=1e-5, rtol=0)  # colour photo


def test_denoise_without_noise_returns_the_image(L, D):
    spec, _ = make_operator(L, "denoise")
    image = photo()
    y, preview = degrade(D, image, spec, sigma_y=0.0)
    torch.testing.assert_close(y, image, atol=1e-6, rtol=0)
    torch.testing.assert_close(preview, image, atol=1e-6, rtol=0)


# ------------------------------------------------------------------ masks from ComfyUI

def test_loadimage_alpha_mask_becomes_the_observed_mask(comfy, L, D, tmp_path):
    """A PNG whose alpha is 0 in a box: LoadImage's mask (1 - alpha) is 1 there, so those pixels are the hole."""
    import folder_paths
    from PIL import Image

    rgba = np.full((H, W, 4), 200, dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[30:50, 40:90, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "holed.png")
    previous = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path))
    try:
        loader = comfy.NODE_CLASS_MAPPINGS["LoadImage"]
        with torch.inference_mode():
            image, mask = loader().load_image(image="holed.png")
    finally:
        folder_paths.set_input_directory(previous)
    mask_before, image_before = mask.clone(), image.clone()
    spec, preview = make_operator(L, "mask_inpaint", mask=mask)
    observed = spec.operator.mask
    assert observed.shape == (1, 1, H, W)
    torch.testing.assert_close(observed[0, 0], 1.0 - mask[0].float())
    assert int((observed == 0).sum()) == 20 * 50
    torch.testing.assert_close(preview[0, :, :, 0], mask[0].float())  # white = hole, like the mask editor
    y, _ = degrade(D, image, spec, sigma_y=0.0)
    assert float(y[0, 30:50, 40:90].sub(0.5).abs().max()) < 1e-6  # hole: 0 in [-1, 1] units
    torch.testing.assert_close(y[0, :30], image[0, :30])
    assert torch.equal(mask, mask_before) and torch.equal(image, image_before)


def test_soft_and_2d_masks_are_thresholded_at_one_half(L):
    soft = torch.zeros(H, W)
    soft[10:20, 10:20] = 0.7
    soft[30:40, 30:40] = 0.3
    spec, _ = make_operator(L, "mask_inpaint", mask=soft)
    assert int((spec.operator.mask == 0).sum()) == 100
    assert float(spec.operator.mask[0, 0, 15, 15]) == 0.0 and float(spec.operator.mask[0, 0, 35, 35]) == 1.0


# ------------------------------------------------------------------ degrade: y = A x + sigma_y n

@pytest.mark.parametrize("task", ["random_inpaint", "super_resolution", "motion_deblur"])
def test_degrade_adds_noise_of_std_sigma_y(L, D, task):
    spec, _ = make_operator(L, task, sr_scale="2")
    image = photo(batch=3)
    y, _ = degrade(D, image, spec, sigma_y=0.1, seed=11)
    with torch.inference_mode():
        clean = spec.operator.forward(as_nchw(image))
    residual = (y.movedim(-1, 1) * 2 - 1) - clean  # in [-1, 1] units
    assert abs(float(residual.std()) - 0.1) < 0.003
    assert abs(float(residual.mean())) < 0.003
    per_item = residual.flatten(1).std(dim=1)
    assert torch.all((per_item - 0.1).abs() < 0.006)


def test_degrade_noise_is_seeded_per_item(L, D):
    spec, _ = make_operator(L, "denoise")
    image = photo(batch=3)
    a, _ = degrade(D, image, spec, seed=4)
    b, _ = degrade(D, image, spec, seed=4)
    c, _ = degrade(D, image, spec, seed=5)
    single, _ = degrade(D, image[:1], spec, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(single[0], a[0])  # item 0 gets the same noise whatever the batch size
    noise = a - image
    assert not torch.allclose(noise[0], noise[1])  # items get different noise


def test_degrade_measurement_round_trips_into_the_sampler_format(L, D, pack_module):
    spec, _ = make_operator(L, "random_inpaint")
    image = photo()
    y, _ = degrade(D, image, spec, sigma_y=0.05, seed=2)
    with torch.inference_mode():
        clean = spec.operator.forward(as_nchw(image))
        y_nchw = pack_module("nodes.measurement").measurement_from_image(y, spec, node_id="PSLD_Sampler")
    torch.testing.assert_close(y_nchw, y.movedim(-1, 1) * 2 - 1)
    hole_values = y_nchw[:, :, spec.operator.mask[0, 0] == 0]
    assert float(hole_values.abs().max()) > 0.1  # reference: noise is added after masking, also in the hole
    assert float((y_nchw - clean).abs().max()) < 0.05 * 6


def test_degrade_does_not_clamp_the_noisy_measurement(L, D):
    spec, _ = make_operator(L, "denoise")
    white = torch.ones(1, H, W, 3)
    y, preview = degrade(D, white, spec, sigma_y=0.1, seed=0)
    assert float(y.max()) > 1.0
    assert float(preview.max()) <= 1.0  # the preview is clamped for display


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_degrade_of_half_precision_images_matches_float32(L, D, dtype):
    """IMAGEs are float16 under --fp16-intermediates; the outputs keep the image's dtype."""
    spec, _ = make_operator(L, "gaussian_deblur")
    image = photo().to(dtype)
    y, preview = degrade(D, image, spec, seed=6)
    reference, _ = degrade(D, image.float(), spec, seed=6)
    assert y.dtype == dtype and preview.dtype == dtype
    torch.testing.assert_close(y.float(), reference, atol=1e-2, rtol=0)


def test_degrade_leaves_the_input_image_unchanged(L, D):
    spec, _ = make_operator(L, "gaussian_deblur")
    image = photo()
    before = image.clone()
    degrade(D, image, spec, sigma_y=0.2, seed=1)
    assert torch.equal(image, before)


def test_cached_operator_gives_the_same_result_on_reuse(L, D):
    """ComfyUI hands one cached operator to every consumer and later run: using it must not change it."""
    spec, _ = make_operator(L, "mask_inpaint", mask=hole(10, 40, 20, 60))
    mask_before, text_before = spec.operator.mask.clone(), spec.describe()
    image = photo()
    first, _ = degrade(D, image, spec, seed=3)
    second, _ = degrade(D, image, spec, seed=3)
    assert torch.equal(first, second)
    assert torch.equal(spec.operator.mask, mask_before) and spec.describe() == text_before


# ------------------------------------------------------------------ wrong inputs: errors name node, input and fix

@pytest.mark.parametrize("settings, input_name", [
    (dict(task="inpaint"), "task"),
    (dict(width=100), "width"),
    (dict(height=4096 + 8), "height"),
    (dict(projection="fast"), "projection"),
    (dict(seed=-1), "seed"),
    (dict(box_size=H), "box_size"),
    (dict(box_size=-3), "box_size"),
    (dict(box_placement="corner"), "box_placement"),
    (dict(task="random_inpaint", drop_fraction=1.0), "drop_fraction"),
    (dict(task="super_resolution", sr_scale="3"), "sr_scale"),
    (dict(task="super_resolution", sr_mode="lanczos"), "sr_mode"),
    (dict(task="gaussian_deblur", kernel_size=20), "kernel_size"),
    (dict(task="motion_deblur", kernel_size=H + 1), "kernel_size"),
    (dict(task="gaussian_deblur", blur_sigma=0.0), "blur_sigma"),
    (dict(task="motion_deblur", motion_intensity=1.5), "motion_intensity"),
    (dict(task="mask_inpaint"), "mask"),
    (dict(task="box_inpaint", mask=torch.ones(1, H, W)), "mask"),
    (dict(task="mask_inpaint", mask=torch.zeros(1, 64, 64)), "mask"),
    (dict(task="mask_inpaint", mask=torch.zeros(2, H, W)), "mask"),
    (dict(task="mask_inpaint", mask=torch.zeros(1, H, W)), "mask"),
    (dict(task="mask_inpaint", mask=torch.ones(1, H, W)), "mask"),
])
def test_bad_operator_inputs_raise_input_errors(L, error_type, settings, input_name):
    settings = {"task": "box_inpaint", "mask": None, **settings}
    with pytest.raises(error_type) as caught:
        make_operator(L, **settings)
    message = str(caught.value)
    assert message.startswith("PSLD_LinearOperator: input ") and f"'{input_name}'" in message
    assert caught.value.input_name == input_name and "Fix:" in message


def test_mask_size_error_names_both_sizes(L, error_type):
    with pytest.raises(error_type) as caught:
        make_operator(L, "mask_inpaint", mask=torch.zeros(1, 480, 640))
    message = str(caught.value)
    assert "640x480" in message and f"{W}x{H}" in message and "width=640" in message and "height=480" in message


def test_bad_degrade_inputs_raise_input_errors(L, D, error_type):
    spec, _ = make_operator(L, "denoise")
    cases = [
        (dict(image=torch.rand(1, 64, 64, 3)), "image"),
        (dict(image=torch.rand(1, H, W, 4)), "image"),
        (dict(image=torch.full((1, H, W, 3), float("nan"))), "image"),
        (dict(operator="not an operator"), "operator"),
        (dict(operator=spec.operator), "operator"),  # a bare psld operator lacks the task and size
        (dict(sigma_y=-0.1), "sigma_y"),
        (dict(seed=-2), "seed"),
    ]
    for change, input_name in cases:
        kwargs = {"image": photo(1), "operator": spec, "sigma_y": 0.05, "seed": 0, **change}
        with pytest.raises(error_type) as caught:
            with torch.inference_mode():
                D.execute(**kwargs)
        assert str(caught.value).startswith(f"PSLD_Degrade: input '{input_name}'"), change


def test_wrong_image_size_error_says_how_to_fix_it(L, D, error_type):
    spec, _ = make_operator(L, "super_resolution")
    with pytest.raises(error_type) as caught:
        degrade(D, torch.rand(1, 480, 640, 3), spec)
    message = str(caught.value)
    assert f"resize the image to {W}x{H}" in message and "width=640" in message and "height=480" in message


def test_measurement_of_the_wrong_size_is_refused_with_the_right_size(L, pack_module, error_type):
    spec, _ = make_operator(L, "super_resolution", sr_scale="4")
    with pytest.raises(error_type) as caught:
        pack_module("nodes.measurement").measurement_from_image(torch.rand(1, H, W, 3), spec, node_id="PSLD_Sampler",
                                                         input_name="y")
    message = str(caught.value)
    assert message.startswith("PSLD_Sampler: input 'y'")
    assert f"{W // 4}x{H // 4}" in message and f"width={W * 4}" in message
