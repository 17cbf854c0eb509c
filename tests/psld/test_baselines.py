"""Pixel baselines (psld/baselines.py): A^T y, A^+ y and TV-regularised least squares on the real operators."""
import pytest
import torch

from psld.baselines import (adjoint_estimate, conjugate_gradient_pseudo_inverse, image_divergence, image_gradient,
                            operator_norm, pseudo_inverse_estimate, total_variation, tv_least_squares,
                            tv_least_squares_objective)
from psld.linear_model import MatrixOperator
from psld.metrics import measurement_rmse, psnr
from psld.operators import (GaussianBlur, Inpainting, MotionBlur, SuperResolution, add_measurement_noise, box_mask,
                            random_mask)

SIZE = 32


def piecewise_constant(batch=2, dtype=torch.float32):
    """Flat shapes on a dark background (TV's favourite image), in [-1, 1]."""
    x = torch.full((batch, 3, SIZE, SIZE), -0.8, dtype=dtype)
    x[..., 6:26, 4:20] = 0.6
    x[..., 3:12, 21:29] = 0.0
    x[1:, :, 14:30, 14:30] = 0.9
    return x


def smooth_image(batch=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 4, 4, generator=g, dtype=dtype) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=False).clamp(-1, 1)


def error_psnr(estimate, truth):
    return float(psnr(estimate, truth, data_range=2.0).mean())


def test_adjoint_estimate_is_the_operators_adjoint():
    y = add_measurement_noise(torch.zeros(2, 3, SIZE // 4, SIZE // 4), 0.3, generator=1)
    operator = SuperResolution(scale=4)
    torch.testing.assert_close(adjoint_estimate(operator, y), operator.adjoint(y))
    inpaint = Inpainting(mask=random_mask(SIZE, SIZE, p=0.5, generator=2))
    noisy = add_measurement_noise(torch.zeros(2, 3, SIZE, SIZE), 0.3, generator=1)
    torch.testing.assert_close(adjoint_estimate(inpaint, noisy), inpaint.mask * noisy)  # A^T y = m ⊙ y


def test_pseudo_inverse_satisfies_the_penrose_conditions_and_matches_cgls():
    x = smooth_image()
    operator = SuperResolution(scale=4)
    clean = operator.forward(x)
    y = clean + 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    estimate = pseudo_inverse_estimate(operator, y)
    torch.testing.assert_close(operator.forward(estimate), y)  # A A^+ y = y (A has full row rank)
    # minimum norm: A^+ y lies in the row space of A, so it is unchanged by the projector A^+ A
    torch.testing.assert_close(pseudo_inverse_estimate(operator, operator.forward(estimate)), estimate)
    matrix = torch.randn(40, 64, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    generic = MatrixOperator(matrix=matrix)
    y_generic = torch.randn(2, 1, 40, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = torch.linalg.pinv(generic.matrix) @ y_generic[:, 0, :, 0].T
    got = conjugate_gradient_pseudo_inverse(generic, y_generic, iterations=200)
    torch.testing.assert_close(got[:, 0, :, 0].T, expected, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(pseudo_inverse_estimate(generic, y_generic, iterations=200), got)  # no exact mode: CGLS


def test_pseudo_inverse_of_inpainting_keeps_the_observed_pixels():
    inpaint = Inpainting(mask=box_mask(SIZE, SIZE, centred=True))
    y = inpaint.forward(smooth_image())
    torch.testing.assert_close(pseudo_inverse_estimate(inpaint, y), y)  # A^+ = m ⊙ (an orthogonal projector)


def test_gradient_and_divergence_are_negative_adjoints():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 7, 9, generator=g, dtype=torch.float64)
    p = torch.randn(2, 2, 3, 7, 9, generator=g, dtype=torch.float64)
    torch.testing.assert_close((image_gradient(x) * p).sum(), -(x * image_divergence(p)).sum())
    step = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    step[..., 2:] = 1.0  # one vertical edge of height 1 and length 4: TV = 4
    assert float(total_variation(step)) == pytest.approx(4.0)


def test_operator_norm_by_power_iteration():
    matrix = torch.randn(30, 50, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    generic = MatrixOperator(matrix=matrix)
    image = torch.zeros(1, 1, 50, 1, dtype=torch.float64)
    assert operator_norm(generic, image, iterations=300) == pytest.approx(
        float(torch.linalg.matrix_norm(generic.matrix, ord=2)), rel=1e-4)
    blur = MotionBlur(kernel_size=9, intensity=0.5, seed=0)  # reflect padding: ||A|| is a little above 1
    basis = torch.eye(16 * 16, dtype=torch.float64).reshape(-1, 1, 16, 16)
    dense = blur.forward(basis).reshape(16 * 16, -1).T  # column j = A e_j
    assert operator_norm(blur, torch.zeros(1, 1, 16, 16, dtype=torch.float64), iterations=300) == pytest.approx(
        float(torch.linalg.matrix_norm(dense, ord=2)), rel=1e-3)


@pytest.mark.parametrize("operator", [GaussianBlur(kernel_size=9, sigma=1.0),
                                      MotionBlur(kernel_size=9, intensity=0.5, seed=0)],
                         ids=["gaussian", "motion"])
def test_tv_least_squares_fits_a_blurred_measurement_better_than_the_adjoint(operator):
    truth = piecewise_constant()
    y = add_measurement_noise(operator.forward(truth), 0.05, generator=8)
    baseline = adjoint_estimate(operator, y).clamp(-1, 1)
    estimate = tv_least_squares(operator, y, weight=0.02)
    assert float(measurement_rmse(operator, estimate, y).mean()) < 0.7 * float(measurement_rmse(operator, baseline,
                                                                                                y).mean())
    assert error_psnr(estimate, truth) > error_psnr(baseline, truth) + 5.0
    # it minimises its objective: below the objective of the truth and of the adjoint estimate
    objective = tv_least_squares_objective(operator, estimate, y, 0.02)
    assert (objective < tv_least_squares_objective(operator, truth, y, 0.02)).all()
    assert (objective < tv_least_squares_objective(operator, baseline, y, 0.02)).all()


def test_tv_least_squares_recovers_a_piecewise_constant_image_from_few_pixels():
    truth = piecewise_constant()
    operator = Inpainting(mask=random_mask(SIZE, SIZE, p=0.7, generator=9))
    y = add_measurement_noise(operator.forward(truth), 0.05, generator=10)
    baseline = adjoint_estimate(operator, y).clamp(-1, 1)
    estimate = tv_least_squares(operator, y, weight=0.05)
    assert error_psnr(estimate, truth) > error_psnr(baseline, truth) + 7.0  # about 19.5 dB against 10 dB
    assert estimate.min() >= -1.0 and estimate.max() <= 1.0


def test_tv_least_squares_with_no_weight_fits_the_data_and_more_weight_flattens():
    truth = smooth_image(dtype=torch.float32)
    operator = SuperResolution(scale=4)
    y = operator.forward(truth)
    plain = tv_least_squares(operator, y, weight=0.0, iterations=500)
    assert float(measurement_rmse(operator, plain, y).max()) < 0.01  # noiseless, weight 0: A x = y
    strong = tv_least_squares(operator, y, weight=1.0, iterations=500)
    assert (total_variation(strong) < 0.5 * total_variation(plain)).all()


def test_the_measurement_and_the_start_are_not_modified():
    operator = Inpainting(mask=box_mask(SIZE, SIZE, centred=True))
    y = operator.forward(piecewise_constant())
    start = torch.zeros_like(y)
    y_copy, start_copy = y.clone(), start.clone()
    tv_least_squares(operator, y, weight=0.05, iterations=5, initial=start)
    pseudo_inverse_estimate(operator, y)
    assert torch.equal(y, y_copy) and torch.equal(start, start_copy)


@pytest.mark.parametrize("call, argument", [
    (lambda op, y: tv_least_squares(op, y, weight=-0.1), "weight=-0.1"),
    (lambda op, y: tv_least_squares(op, y, weight=float("nan")), "weight=nan"),
    (lambda op, y: tv_least_squares(op, y, weight=0.1, iterations=0), "iterations=0"),
    (lambda op, y: tv_least_squares(op, y, weight=0.1, initial=torch.zeros(1, 3, 8, 8)), "initial is"),
    (lambda op, y: adjoint_estimate(op, y[0]), "y is a tensor"),
    (lambda op, y: pseudo_inverse_estimate(op, y.int()), "y is a tensor"),
    (lambda op, y: adjoint_estimate(object(), y), "operator is a object"),
    (lambda op, y: conjugate_gradient_pseudo_inverse(op, y, iterations=1.5), "iterations=1.5"),
])
def test_bad_arguments_raise_value_errors_naming_them(call, argument):
    operator = Inpainting(mask=box_mask(SIZE, SIZE, centred=True))
    y = operator.forward(piecewise_constant())
    with pytest.raises(ValueError) as error:
        call(operator, y)
    assert argument in str(error.value)
