"""psld.operators: true adjoints, projections, masks, kernels, resize matrices, argument checks, dtypes and modes."""
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from psld.operators import (Colorization, GaussianBlur, Identity, Inpainting, LinearOperator, MotionBlur,
                            SuperResolution, add_measurement_noise, box_mask, gaussian_kernel, motion_kernel,
                            random_mask)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def one_cpu_thread():
    """These tensors are tiny: one thread is faster and spares a CPU shared with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_operators(height, width, batch=2):
    """One of each operator (and variant) for images of this size; the inpainting mask has the image batch."""
    return {
        "inpainting": Inpainting(mask=random_mask(height, width, p=0.4, generator=1)),
        "inpainting-batch-mask": Inpainting(mask=torch.cat([random_mask(height, width, p=0.5, generator=s)
                                                            for s in range(batch)])),
        "sr-bicubic-x4": SuperResolution(scale=4),
        "sr-bicubic-x2": SuperResolution(scale=2),
        "sr-area-x4": SuperResolution(scale=4, mode="area"),
        "gaussian-13": GaussianBlur(kernel_size=13, sigma=2.0),
        "gaussian-wide": GaussianBlur(kernel_size=31, sigma=3.0),  # radius 12: reflect pad near the image size
        "motion-15": MotionBlur(kernel_size=15, intensity=0.5, seed=3),
        "colorization": Colorization(),
        "identity": Identity(),
    }


OPERATOR_NAMES = list(make_operators(16, 16))
SIZES = [(16, 16), (24, 32)]


def rand(*shape, seed=0, dtype=torch.float64, device="cpu"):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)


# ------------------------------------------------------------------------------------------ adjoints

@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", OPERATOR_NAMES)
def test_adjoint_is_the_true_adjoint_in_float64(name, size):
    op = make_operators(*size)[name]
    x = rand(2, 3, *size, seed=1)
    y = rand(*op.measurement_shape(x.shape), seed=2)
    lhs = (op.forward(x) * y).sum()  # <A x, y>
    rhs = (x * op.adjoint(y)).sum()  # <x, A^T y>
    assert abs(float(lhs - rhs)) <= 1e-9 * max(abs(float(lhs)), 1e-12)


def test_blur_adjoint_holds_when_the_padding_is_as_wide_as_allowed():
    op = GaussianBlur(kernel_size=31, sigma=3.0)  # reaches 12 px: a 13 px side is the smallest allowed
    x, y = rand(2, 3, 13, 14, seed=35), rand(2, 3, 13, 14, seed=36)
    lhs, rhs = (op.forward(x) * y).sum(), (x * op.adjoint(y)).sum()
    assert abs(float(lhs - rhs)) <= 1e-9 * abs(float(lhs))
    with pytest.raises(ValueError, match=r"\bx\b"):
        op.forward(rand(1, 3, 12, 14))


@pytest.mark.parametrize("name", OPERATOR_NAMES)
def test_adjoint_equals_the_vector_jacobian_product(name):
    op = make_operators(16, 16)[name]
    x = rand(2, 3, 16, 16, seed=3).requires_grad_()
    y = rand(*op.measurement_shape(x.shape), seed=4)
    (vjp,) = torch.autograd.grad((op.forward(x) * y).sum(), x)  # A^T y = grad_x <A x, y>
    torch.testing.assert_close(op.adjoint(y), vjp, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------ projections

@pytest.mark.parametrize("name", ["inpainting", "inpainting-batch-mask", "sr-bicubic-x4", "sr-bicubic-x2",
                                  "sr-area-x4", "colorization", "identity"])
def test_exact_projection_reproduces_consistent_measurements(name):
    op = make_operators(24, 32)[name].with_projection("exact")
    x, x_true = rand(2, 3, 24, 32, seed=5), rand(2, 3, 24, 32, seed=6)
    y = op.forward(x_true)
    torch.testing.assert_close(op.forward(op.project(x, y)), y, rtol=0, atol=1e-10)


def test_exact_sr_projection_is_idempotent_and_keeps_the_unobserved_part():
    op = SuperResolution(scale=4, projection="exact")
    x, y = rand(1, 3, 32, 32, seed=7), op.forward(rand(1, 3, 32, 32, seed=8))
    glued = op.project(x, y)
    torch.testing.assert_close(op.project(glued, y), glued, rtol=0, atol=1e-10)  # P(P(x)) = P(x)
    # the change x -> glued lies in the row space of A: its null-space part (I - A^+ A)(x - glued) is zero
    null_part = op.project(x - glued, torch.zeros_like(y))
    torch.testing.assert_close(null_part, torch.zeros_like(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["gaussian-13", "gaussian-wide"])
def test_exact_gaussian_projection_meets_the_tikhonov_bound(name):
    op = make_operators(24, 32)[name].with_projection("exact")
    x, x_true = rand(2, 3, 24, 32, seed=9), rand(2, 3, 24, 32, seed=10)
    y = op.forward(x_true)
    misfit = (op.forward(op.project(x, y)) - y).norm()
    # per frequency |misfit| <= sqrt(λ)/2 |d| with d = x_true - x mirror-extended (norm at most 2 |d|)
    assert misfit <= math.sqrt(op.regularization) * (x_true - x).norm()
    assert misfit < 0.5 * (op.forward(x) - y).norm()  # and it is much closer than x was


def test_exact_blur_projection_is_near_exact_with_a_tiny_regulariser():
    op = GaussianBlur(kernel_size=7, sigma=1.0, regularization=1e-12, projection="exact")
    x, x_true = rand(1, 3, 16, 20, seed=11), rand(1, 3, 16, 20, seed=12)
    y = op.forward(x_true)
    assert (op.forward(op.project(x, y)) - y).norm() <= 1e-6 * y.norm()


def test_exact_motion_projection_is_exact_away_from_the_border():
    op = MotionBlur(kernel_size=9, intensity=0.5, seed=0, regularization=1e-12, projection="exact")
    x, x_true = rand(1, 3, 48, 40, seed=13), rand(1, 3, 48, 40, seed=14)
    y = op.forward(x_true)
    misfit = op.forward(op.project(x, y)) - y
    r = 2 * op.support_radius  # the mirror model is exact beyond one kernel radius of the border
    assert misfit[..., r:-r, r:-r].abs().max() <= 1e-5 * y.abs().max()
    assert misfit.norm() < (op.forward(x) - y).norm()  # the border only approximately, yet closer than x


@pytest.mark.parametrize("projection", ["paper", "exact"])
def test_inpainting_projection_keeps_x_in_the_hole_and_y_where_observed(projection):
    mask = box_mask(32, 32, box_size=12, margin=4, generator=3)
    op = Inpainting(mask=mask, projection=projection)
    x, y = rand(2, 3, 32, 32, seed=15), op.forward(rand(2, 3, 32, 32, seed=16))
    glued = op.project(x, y)
    hole = (mask == 0).expand_as(x)
    assert torch.equal(glued[hole], x[hole])
    torch.testing.assert_close(glued[~hole], y[~hole], rtol=0, atol=1e-12)


def test_paper_projection_is_the_reference_formula():
    x = rand(2, 3, 32, 32, seed=17)
    inpaint = Inpainting(mask=random_mask(32, 32, p=0.5, generator=2))
    y = add_measurement_noise(inpaint.forward(rand(2, 3, 32, 32, seed=18)), 0.05, generator=0)  # noise everywhere
    m = inpaint.mask.to(x)
    torch.testing.assert_close(inpaint.project(x, y), y + x - m * x)  # T = identity
    for sr in (SuperResolution(scale=4), SuperResolution(scale=4, mode="area")):
        y = sr.forward(rand(2, 3, 32, 32, seed=19))
        up = lambda t: F.interpolate(t, scale_factor=4, mode="nearest")  # noqa: E731  T = nearest upsampling
        torch.testing.assert_close(sr.project(x, y), up(y) + x - up(sr.forward(x)))
    for blur in (GaussianBlur(kernel_size=9, sigma=1.5), MotionBlur(kernel_size=9, seed=1)):
        y = blur.forward(rand(2, 3, 32, 32, seed=20))
        torch.testing.assert_close(blur.project(x, y), y + x - blur.forward(x))  # T = identity


def test_area_paper_projection_is_already_the_pseudo_inverse():
    op = SuperResolution(scale=2, mode="area")
    x, y = rand(1, 3, 16, 16, seed=21), rand(1, 3, 8, 8, seed=22)
    torch.testing.assert_close(op.project(x, y), op.with_projection("exact").project(x, y))


def test_with_projection_returns_a_new_immutable_object():
    op = GaussianBlur(kernel_size=9, sigma=1.5)
    exact = op.with_projection("exact")
    assert type(exact) is GaussianBlur and exact is not op
    assert (op.projection, exact.projection) == ("paper", "exact")
    assert (exact.kernel_size, exact.sigma) == (9, 1.5) and torch.equal(exact.kernel, op.kernel)
    with pytest.raises(dataclasses.FrozenInstanceError):
        op.sigma = 2.0


def test_operators_keep_their_own_copy_of_the_mask():
    mask = box_mask(16, 16, box_size=4, margin=2, generator=0)
    op = Inpainting(mask=mask)
    mask.zero_()
    assert float(op.mask.mean()) == pytest.approx(1 - 16 / 256)


# ------------------------------------------------------------------------------------------ masks

def test_box_mask_default_size_is_half_the_side_and_respects_the_margin():
    for size in (256, 512):
        tops, lefts = set(), set()
        for seed in range(20):
            mask = box_mask(size, size, generator=seed)
            assert mask.shape == (1, 1, size, size) and mask.dtype == torch.float32
            rows, cols = torch.nonzero(mask[0, 0] == 0, as_tuple=True)
            assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (size // 2, size // 2)
            assert int((mask == 0).sum()) == (size // 2) ** 2
            top, left = int(rows.min()), int(cols.min())
            assert 16 <= top < size - 16 - size // 2 and 16 <= left < size - 16 - size // 2
            tops.add(top), lefts.add(left)
        assert len(tops) > 5 and len(lefts) > 5  # the position is random


def test_box_mask_centred_and_explicit_sizes():
    mask = box_mask(64, 48, box_size=(20, 10), centred=True)
    rows, cols = torch.nonzero(mask[0, 0] == 0, as_tuple=True)
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (22, 41, 19, 28)
    assert set(mask.unique().tolist()) == {0.0, 1.0}


def test_random_mask_drops_exactly_floor_p_pixels():
    for p, (h, w) in [(0.5, (16, 16)), (0.3, (17, 13)), (0.7, (64, 64)), (0.0, (8, 8)), (1.0, (8, 8))]:
        mask = random_mask(h, w, p=p, generator=4)
        assert mask.shape == (1, 1, h, w)
        assert int((mask == 0).sum()) == math.floor(p * h * w)
    for seed in range(10):  # p ~ U(0.3, 0.7) when not given
        dropped = int((random_mask(64, 64, generator=seed) == 0).sum())
        assert math.floor(0.3 * 4096) <= dropped <= math.floor(0.7 * 4096)


def test_masks_are_reproducible_per_seed_and_differ_between_seeds():
    for make in (lambda g: box_mask(128, 128, generator=g), lambda g: random_mask(32, 32, generator=g)):
        assert torch.equal(make(7), make(7))
        assert torch.equal(make(torch.Generator().manual_seed(7)), make(7))
        assert not torch.equal(make(7), make(8))


def test_masks_never_touch_the_global_rng():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    box_mask(128, 128, generator=1), random_mask(64, 64, generator=1), random_mask(8, 8)
    assert torch.equal(torch.rand(3), before)


# ------------------------------------------------------------------------------------------ resize matrices

@pytest.mark.parametrize("mode", ["bicubic", "area"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_resize_preserves_constants(mode, scale):
    op = SuperResolution(scale=scale, mode=mode)
    x = torch.full((1, 3, 12 * scale, 8 * scale), 0.37, dtype=torch.float64)
    torch.testing.assert_close(op.forward(x), torch.full((1, 3, 12, 8), 0.37, dtype=torch.float64))


def _keys_by_hand(t):
    """Keys cubic with a = -0.5, written out: 1.5|t|^3 - 2.5|t|^2 + 1 inside 1, -0.5|t|^3 + 2.5|t|^2 - 4|t| + 2 to 2."""
    t = abs(t)
    return 1.5 * t**3 - 2.5 * t**2 + 1 if t <= 1 else (-0.5 * t**3 + 2.5 * t**2 - 4 * t + 2 if t < 2 else 0.0)


def test_bicubic_matches_a_hand_derived_row():
    # n = 8, scale 2: output pixel 1 (0-based) averages inputs 2 and 3, so it sits at input coordinate 2.5; the
    # kernel is stretched x2, so tap i weighs k((2.5 - i) / 2) / 2; the tap at -1 mirrors onto pixel 0.
    assert [_keys_by_hand(t) for t in (0.25, 0.75, 1.25, 1.75)] == [0.8671875, 0.2265625, -0.0703125, -0.0234375]
    expected_row = torch.tensor([-12, 29, 111, 111, 29, -9, -3, 0], dtype=torch.float64) / 256
    taps = {i: _keys_by_hand((2.5 - i) / 2) / 2 for i in range(-1, 8)}
    by_hand = [taps[i] + (taps[-1] if i == 0 else 0.0) for i in range(8)]
    torch.testing.assert_close(torch.tensor(by_hand, dtype=torch.float64), expected_row)
    column = rand(8, seed=23)
    image = column[None, None, :, None].expand(1, 1, 8, 8)  # constant along the width
    y = SuperResolution(scale=2).forward(image)
    torch.testing.assert_close(y[0, 0, 1], (expected_row @ column).expand(4))


def test_bicubic_interior_matches_pillow():
    # Pillow's antialiased bicubic (a = -0.5) agrees away from the border, where only the boundary rules differ.
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    small = np.asarray(Image.fromarray(image, mode="F").resize((16, 16), Image.Resampling.BICUBIC))
    ours = SuperResolution(scale=4).forward(torch.from_numpy(image).double()[None, None])[0, 0].numpy()
    np.testing.assert_allclose(ours[3:-3, 3:-3], small[3:-3, 3:-3], atol=1e-5)


def test_area_mode_is_average_pooling():
    x = rand(2, 3, 24, 36, seed=24)
    torch.testing.assert_close(SuperResolution(scale=3, mode="area").forward(x), F.avg_pool2d(x, 3))


def test_sr_measurement_shape_and_description():
    op = SuperResolution(scale=4)
    assert op.measurement_shape((1, 3, 512, 512)) == (1, 3, 128, 128)
    assert op.describe((1, 3, 512, 512)) == "SR x4 (bicubic), 512x512 -> 128x128"
    assert op.describe((1, 3, 256, 512)) == "SR x4 (bicubic), 512x256 -> 128x64"  # width x height, as in ComfyUI
    assert op.with_projection("exact").describe().startswith("SR x4 (bicubic)")


# ------------------------------------------------------------------------------------------ kernels

def test_gaussian_kernel_matches_the_closed_form():
    kernel = gaussian_kernel(31, 3.0)  # radius int(4 * 3 + 0.5) = 12 fits in 15
    c = 15
    i = torch.arange(31, dtype=torch.float64)[:, None]
    j = torch.arange(31, dtype=torch.float64)[None, :]
    closed = torch.exp(-((i - c) ** 2 + (j - c) ** 2) / (2 * 9.0))
    closed = torch.where(((i - c).abs() <= 12) & ((j - c).abs() <= 12), closed, torch.zeros_like(closed))
    torch.testing.assert_close(kernel, closed / closed.sum(), rtol=1e-12, atol=1e-15)
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-12)


def test_gaussian_kernel_smaller_than_its_reach_folds_back_like_scipy():
    # 'reflect' in scipy.ndimage repeats the edge, like numpy.pad(mode="symmetric")
    taps = np.arange(-12, 13)
    g = np.exp(-taps**2 / 18.0)
    g /= g.sum()
    delta = np.zeros(7)
    delta[3] = 1.0
    padded = np.pad(delta, 12, mode="symmetric")
    profile = np.array([sum(g[t + 12] * padded[i + 12 + t] for t in taps) for i in range(7)])
    np.testing.assert_allclose(gaussian_kernel(7, 3.0).numpy(), np.outer(profile, profile), rtol=1e-12)
    assert float(gaussian_kernel(7, 3.0).sum()) == pytest.approx(1.0, abs=1e-12)


def test_reference_gaussian_blur_crops_to_its_support_without_changing_a():
    op = GaussianBlur(kernel_size=121, sigma=3.0)
    assert op.kernel.shape == (121, 121) and op.support_radius == 12
    x = rand(1, 1, 64, 72, seed=25)  # reflect padding by 60 needs more than 60 px
    full = F.conv2d(F.pad(x, (60,) * 4, mode="reflect"), op.kernel[None, None])
    torch.testing.assert_close(op.forward(x), full, rtol=1e-12, atol=1e-14)


def test_motion_kernel_is_seeded_normalised_non_negative_and_varies_with_the_seed():
    for size in (15, 61):
        kernel = motion_kernel(size, 0.5, seed=5)
        assert kernel.shape == (size, size) and kernel.min() >= 0
        assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
        assert (kernel > 0).sum() > 3  # a trajectory, not a point
        np.testing.assert_array_equal(kernel, motion_kernel(size, 0.5, seed=5))
        assert not np.array_equal(kernel, motion_kernel(size, 0.5, seed=6))
    op = MotionBlur(kernel_size=61, intensity=0.5, seed=5)
    np.testing.assert_array_equal(op.kernel.numpy(), motion_kernel(61, 0.5, seed=5))
    assert torch.equal(op.kernel, MotionBlur(kernel_size=61, intensity=0.5, seed=5).kernel)


def test_motion_kernel_never_touches_the_global_rngs():
    np.random.seed(0)
    before = np.random.random(3)
    np.random.seed(0)
    motion_kernel(31, 0.5, seed=1)
    np.testing.assert_array_equal(np.random.random(3), before)


def test_blurs_preserve_constants():
    x = torch.full((1, 3, 20, 20), -0.4, dtype=torch.float64)
    for op in (GaussianBlur(kernel_size=11, sigma=2.0), MotionBlur(kernel_size=15, seed=2)):
        torch.testing.assert_close(op.forward(x), x)


# ------------------------------------------------------------------------------------------ bad arguments

BAD_CONSTRUCTIONS = [
    (lambda: Inpainting(mask=torch.ones(1, 3, 8, 8)), "mask"),
    (lambda: Inpainting(mask=torch.ones(8, 8)), "mask"),
    (lambda: Inpainting(mask=torch.full((1, 1, 8, 8), 0.5)), "mask"),
    (lambda: Inpainting(mask=torch.full((1, 1, 8, 8), 2.0)), "mask"),
    (lambda: Inpainting(mask=torch.full((1, 1, 8, 8), float("nan"))), "mask"),
    (lambda: Inpainting(mask=None), "mask"),
    (lambda: SuperResolution(scale=0), "scale"),
    (lambda: SuperResolution(scale=2.5), "scale"),
    (lambda: SuperResolution(scale=True), "scale"),
    (lambda: SuperResolution(scale=4, mode="nearest"), "mode"),
    (lambda: GaussianBlur(kernel_size=4, sigma=1.0), "kernel_size"),
    (lambda: GaussianBlur(kernel_size=0, sigma=1.0), "kernel_size"),
    (lambda: GaussianBlur(kernel_size=-3, sigma=1.0), "kernel_size"),
    (lambda: GaussianBlur(kernel_size=9, sigma=0.0), "sigma"),
    (lambda: GaussianBlur(kernel_size=9, sigma=-1.0), "sigma"),
    (lambda: GaussianBlur(kernel_size=9, sigma=float("nan")), "sigma"),
    (lambda: GaussianBlur(kernel_size=9, sigma=1.0, regularization=0.0), "regularization"),
    (lambda: MotionBlur(kernel_size=8, intensity=0.5, seed=0), "kernel_size"),
    (lambda: MotionBlur(kernel_size=9, intensity=1.5, seed=0), "intensity"),
    (lambda: MotionBlur(kernel_size=9, intensity=0.5, seed=-1), "seed"),
    (lambda: Colorization(channels=0), "channels"),
    (lambda: Identity(projection="ddnm"), "projection"),
    (lambda: Identity().with_projection("best"), "projection"),
    (lambda: box_mask(0, 64), "height"),
    (lambda: box_mask(64, 64, box_size=40), "box_size"),
    (lambda: box_mask(64, 64, box_size=(8, 8, 8)), "box_size"),
    (lambda: box_mask(64, 64, margin=-1), "margin"),
    (lambda: random_mask(64, 64, p=1.5), "p"),
    (lambda: random_mask(64, 64, generator="abc"), "generator"),
    (lambda: add_measurement_noise(torch.zeros(1, 3, 4, 4), -0.1), "sigma_y"),
    (lambda: add_measurement_noise(torch.zeros(1, 3, 4, 4, dtype=torch.long), 0.1), "y"),
    (lambda: SuperResolution(scale=4).measurement_shape((3, 64, 64)), "image_shape"),
    (lambda: SuperResolution(scale=4).measurement_shape((1, 3, 18, 64)), "image_shape"),
]


@pytest.mark.parametrize("make, argument", BAD_CONSTRUCTIONS)
def test_bad_arguments_raise_value_errors_naming_the_argument(make, argument):
    with pytest.raises(ValueError, match=rf"\b{argument}\b") as info:
        make()
    assert "must" in str(info.value)  # says what is allowed


def _bad_calls():
    x = torch.zeros(2, 3, 16, 16)
    nan_x = x.clone()
    nan_x[0, 0, 0, 0] = float("nan")
    inf_y = torch.zeros(2, 3, 4, 4)
    inf_y[1, 2, 3, 3] = float("inf")
    sr, inpaint = SuperResolution(scale=4), Inpainting(mask=torch.ones(1, 1, 16, 16))
    return [
        (lambda: sr.forward(nan_x), "x"),
        (lambda: sr.forward(x[0]), "x"),
        (lambda: sr.forward(x.long()), "x"),
        (lambda: sr.forward(torch.zeros(1, 3, 18, 16)), "x"),
        (lambda: sr.project(x, inf_y), "y"),
        (lambda: sr.project(x, torch.zeros(2, 3, 8, 8)), "y"),
        (lambda: sr.adjoint(torch.zeros(3, 4, 4)), "y"),
        (lambda: inpaint.forward(torch.zeros(2, 3, 16, 17)), "x"),
        (lambda: Inpainting(mask=torch.ones(2, 1, 16, 16)).forward(torch.zeros(3, 3, 16, 16)), "x"),
        (lambda: inpaint.adjoint(torch.zeros(1, 3, 8, 8)), "y"),
        (lambda: GaussianBlur(kernel_size=31, sigma=3.0).forward(torch.zeros(1, 3, 12, 64)), "x"),
        (lambda: GaussianBlur(kernel_size=31, sigma=3.0).adjoint(torch.zeros(1, 3, 64, 12)), "y"),
        (lambda: Colorization().forward(torch.zeros(1, 4, 8, 8)), "x"),
        (lambda: Colorization().adjoint(torch.zeros(1, 3, 8, 8)), "y"),
        (lambda: Colorization().project(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)), "y"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_calls())))
def test_bad_inputs_raise_value_errors_naming_the_input(index):
    call, argument = _bad_calls()[index]
    with pytest.raises(ValueError, match=rf"\b{argument}\b") as info:
        call()
    assert "must" in str(info.value)


# ------------------------------------------------------------------------------------------ modes, dtypes, batches

@pytest.mark.parametrize("name", OPERATOR_NAMES)
def test_inference_mode_then_autograd(name):
    op = make_operators(16, 16)[name]
    exact = op.with_projection("exact")
    x = rand(2, 3, 16, 16, seed=26, dtype=torch.float32)
    y = op.forward(rand(2, 3, 16, 16, seed=27, dtype=torch.float32))
    with torch.inference_mode():  # first use (and cached casts) inside inference mode
        results = [op.forward(x), op.adjoint(y), op.project(x, y), exact.project(x, y)]
    assert all(r.is_inference() for r in results)
    leaf = x.clone().requires_grad_()
    loss = op.forward(leaf).norm() + op.project(leaf, y).norm() + exact.project(leaf, y).norm()
    (grad,) = torch.autograd.grad(loss, leaf)
    assert grad.shape == x.shape and bool(torch.isfinite(grad).all())


def test_projection_gradients_are_correct():
    for op in (SuperResolution(scale=2, projection="exact"), GaussianBlur(kernel_size=5, sigma=1.0),
               GaussianBlur(kernel_size=5, sigma=1.0, projection="exact"), Inpainting(mask=box_mask(
                   8, 8, box_size=3, margin=1, generator=0))):
        x = rand(1, 1, 8, 8, seed=28).requires_grad_()
        y = op.forward(rand(1, 1, 8, 8, seed=29))
        assert torch.autograd.gradcheck(lambda t: op.project(t, y), (x,))


def test_mask_made_in_inference_mode_still_allows_autograd():
    with torch.inference_mode():
        mask = random_mask(8, 8, p=0.5, generator=0)
    op = Inpainting(mask=mask)
    leaf = rand(1, 3, 8, 8, seed=30).requires_grad_()
    op.forward(leaf).sum().backward()
    torch.testing.assert_close(leaf.grad, op.mask.to(leaf).expand_as(leaf))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", OPERATOR_NAMES)
def test_half_precision_inputs_keep_their_dtype_and_device(name, dtype, device):
    op = make_operators(16, 16)[name]
    x64 = rand(2, 3, 16, 16, seed=31)
    y64 = op.forward(rand(2, 3, 16, 16, seed=32))
    x, y = x64.to(device, dtype), y64.to(device, dtype)
    for mode in ("paper", "exact"):
        outputs = {"forward": (op.forward(x), op.forward(x64)), "adjoint": (op.adjoint(y), op.adjoint(y64)),
                   "project": (op.with_projection(mode).project(x, y), op.with_projection(mode).project(x64, y64))}
        for what, (low, high) in outputs.items():
            assert (low.dtype, low.device.type) == (dtype, device), what
            scale = float(high.abs().max()) + 1e-3
            assert float((low.double().cpu() - high).abs().max()) <= 0.05 * scale, what


@pytest.mark.parametrize("name", OPERATOR_NAMES)
def test_batch_of_three_matches_one_at_a_time_and_inputs_are_untouched(name):
    op = make_operators(16, 16, batch=3)[name]
    x = rand(3, 3, 16, 16, seed=33)
    y = op.forward(rand(3, 3, 16, 16, seed=34))
    x_before, y_before = x.clone(), y.clone()
    together = op.project(x, y)
    if op.__class__ is Inpainting and op.mask.shape[0] == 3:
        singles = [Inpainting(mask=op.mask[i:i + 1]).project(x[i:i + 1], y[i:i + 1]) for i in range(3)]
    else:
        singles = [op.project(x[i:i + 1], y[i:i + 1]) for i in range(3)]
    torch.testing.assert_close(together, torch.cat(singles))
    op.adjoint(y), op.with_projection("exact").project(x, y)
    assert torch.equal(x, x_before) and torch.equal(y, y_before)


# ------------------------------------------------------------------------------------------ noise, protocol

def test_measurement_noise_is_seeded_and_has_the_right_size():
    y = torch.zeros(2, 3, 64, 64)
    noisy = add_measurement_noise(y, 0.05, generator=3)
    assert torch.equal(noisy, add_measurement_noise(y, 0.05, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(noisy, add_measurement_noise(y, 0.05, generator=4))
    assert float(noisy.std()) == pytest.approx(0.05, rel=0.05) and torch.equal(y, torch.zeros_like(y))
    half = add_measurement_noise(y.half(), 0.05, generator=3)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), noisy, rtol=0, atol=1e-3)
    torch.testing.assert_close(add_measurement_noise(y + 0.3, 0.0), y + 0.3)


def test_every_operator_and_a_user_operator_satisfy_the_protocol():
    assert all(isinstance(op, LinearOperator) for op in make_operators(16, 16).values())

    class Negate:
        def forward(self, x):
            return -x

        def adjoint(self, y):
            return -y

        def project(self, x, y):
            return -y

    assert isinstance(Negate(), LinearOperator)
    assert not isinstance(object(), LinearOperator)


def test_descriptions_are_short_and_informative():
    texts = {name: op.describe((2, 3, 16, 16)) for name, op in make_operators(16, 16).items()}
    assert texts["gaussian-13"] == "Gaussian blur 13 px, sigma 2, 16x16 -> 16x16"
    assert texts["colorization"].endswith("16x16 -> 16x16")
    assert texts["inpainting"].startswith("Inpainting 16x16, 60.2% observed")  # 256 - floor(0.4 * 256) = 154 kept
    assert all(len(text) < 80 for text in texts.values())
