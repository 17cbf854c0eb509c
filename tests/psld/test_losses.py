"""The PSLD objective (psld/losses.py): values of each term, variants, per-sample norms, options, validation."""
import dataclasses

import pytest
import torch

from psld.linear_model import MatrixOperator
from psld.losses import (REFERENCE_WEIGHTS, TASKS, PSLDLoss, gluing_residual, measurement_residual, per_sample_norm,
                         psld_objective, reference_loss)
from psld.operators import Inpainting

B, C, H, W = 3, 3, 8, 8
LATENT = (B, 2, 4, 4)


def make_problem(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # only for the nn.Module initialisation below
    decoder = torch.nn.Sequential(torch.nn.ConvTranspose2d(2, C, 2, stride=2), torch.nn.Tanh()).to(dtype)
    encoder = torch.nn.Conv2d(C, 2, 2, stride=2).to(dtype)
    for p in (*decoder.parameters(), *encoder.parameters()):
        p.requires_grad_(False)
    mask = (torch.rand(1, 1, H, W, generator=g) > 0.4).float()
    operator = Inpainting(mask=mask)
    y = operator.forward(torch.rand(B, C, H, W, generator=g, dtype=dtype) * 2 - 1)
    z0_hat = torch.randn(LATENT, generator=g, dtype=dtype)
    return decoder, encoder, operator, y, z0_hat


def test_each_term_is_the_per_sample_norm_of_its_residual():
    decoder, encoder, operator, y, z = make_problem()
    image = decoder(z)
    mask = operator.mask.to(image.dtype)
    total, residuals = psld_objective(PSLDLoss(omega=0.7, gamma=0.3), operator, y, z, image, encoder)
    r_meas = torch.stack([(mask * image[b] - y[b]).norm() for b in range(B)])
    glued = y + (1 - mask) * image  # paper projection for inpainting: A^T y + (I - A^T A) x
    r_glue = torch.stack([(z[b] - encoder(glued)[b]).norm() for b in range(B)])
    torch.testing.assert_close(residuals["measurement"], r_meas, rtol=1e-12, atol=0)
    torch.testing.assert_close(residuals["gluing"], r_glue, rtol=1e-12, atol=0)
    torch.testing.assert_close(total, 0.7 * r_meas.sum() + 0.3 * r_glue.sum(), rtol=1e-12, atol=0)


def test_squared_norms_follow_the_paper_text():
    decoder, encoder, operator, y, z = make_problem()
    image = decoder(z)
    plain, res = psld_objective(PSLDLoss(omega=0.7, gamma=0.3), operator, y, z, image, encoder)
    squared, res_sq = psld_objective(PSLDLoss(omega=0.7, gamma=0.3, squared=True), operator, y, z, image, encoder)
    torch.testing.assert_close(squared, 0.7 * (res["measurement"] ** 2).sum() + 0.3 * (res["gluing"] ** 2).sum())
    torch.testing.assert_close(res_sq["measurement"], res["measurement"])  # residuals are reported unsquared


def test_gml_dps_glues_to_the_decoded_image_without_projection():
    decoder, encoder, operator, y, z = make_problem()
    image = decoder(z)
    _, residuals = psld_objective(PSLDLoss(variant="GML-DPS"), operator, y, z, image, encoder)
    expected = torch.stack([(z[b] - encoder(image)[b]).norm() for b in range(B)])
    torch.testing.assert_close(residuals["gluing"], expected, rtol=1e-12, atol=0)
    _, psld_residuals = psld_objective(PSLDLoss(), operator, y, z, image, encoder)
    assert not torch.allclose(psld_residuals["gluing"], expected)  # the projection changes the target


def test_ldps_and_zero_gamma_never_run_the_encoder():
    decoder, _, operator, y, z = make_problem()

    def encoder_must_not_run(image):
        raise AssertionError("the encoder ran although its result is unused")

    for loss in (PSLDLoss(variant="LDPS", gamma=0.5), PSLDLoss(gamma=0.0), PSLDLoss(variant="GML-DPS", gamma=0.0)):
        total, residuals = psld_objective(loss, operator, y, z, decoder(z), encoder_must_not_run)
        assert set(residuals) == {"measurement"}
        torch.testing.assert_close(total, loss.omega * residuals["measurement"].sum())
    assert PSLDLoss(variant="LDPS", gamma=0.5).gluing_weight == 0.0
    _, residuals = psld_objective(PSLDLoss(variant="LDPS"), operator, y, z, decoder(z), None)
    assert set(residuals) == {"measurement"}


def test_zero_omega_skips_the_measurement_term():
    decoder, encoder, operator, y, z = make_problem()
    total, residuals = psld_objective(PSLDLoss(omega=0.0, gamma=0.2), operator, y, z, decoder(z), encoder)
    assert set(residuals) == {"gluing"}
    torch.testing.assert_close(total, 0.2 * residuals["gluing"].sum())


def test_batch_items_never_couple():
    """The gradient for sample 0 does not change when sample 1 changes (one norm over the batch would couple them)."""
    decoder, encoder, operator, y, z = make_problem()

    def grad_of_first(z_batch):
        z_batch = z_batch.clone().requires_grad_(True)
        total, _ = psld_objective(PSLDLoss(), operator, y, z_batch, decoder(z_batch), encoder)
        return torch.autograd.grad(total, z_batch)[0][0]

    other = z.clone()
    other[1:] = torch.randn_like(other[1:]) * 5
    torch.testing.assert_close(grad_of_first(z), grad_of_first(other), rtol=1e-12, atol=1e-14)


def test_gradient_flows_through_the_gluing_target_unless_detached():
    decoder, encoder, operator, y, z = make_problem()

    def grad(loss, encode):
        z_leaf = z.clone().requires_grad_(True)
        total, _ = psld_objective(loss, operator, y, z_leaf, decoder(z_leaf), encode)
        return torch.autograd.grad(total, z_leaf)[0]

    only_glue = dict(omega=0.0, gamma=1.0)
    full = grad(PSLDLoss(**only_glue), encoder)
    detached = grad(PSLDLoss(**only_glue, detach_gluing_target=True), encoder)
    # by hand: d/dz ||z - t||, t held fixed, is (z - t) / ||z - t|| per sample
    target = encoder(y + (1 - operator.mask.double()) * decoder(z)).detach()
    by_hand = torch.stack([(z[b] - target[b]) / (z[b] - target[b]).norm() for b in range(B)])
    torch.testing.assert_close(detached, by_hand, rtol=1e-12, atol=1e-14)
    assert (full - detached).abs().max() > 1e-3  # the reference's gradient also goes through E and D

    calls = []

    def recording_encoder(image):
        calls.append(torch.is_grad_enabled())
        return encoder(image)

    grad(PSLDLoss(detach_gluing_target=True), recording_encoder)
    assert calls == [False]  # a detached target is encoded without autograd


def test_fresh_measurement_noise_comes_from_the_generator():
    decoder, encoder, operator, y, z = make_problem()
    image = decoder(z)
    loss = PSLDLoss(fresh_measurement_noise=0.05)

    def residual(seed):
        return psld_objective(loss, operator, y, z, image, encoder, generator=torch.Generator().manual_seed(seed)
                              )[1]["measurement"]

    torch.testing.assert_close(residual(3), residual(3), rtol=0, atol=0)
    assert not torch.equal(residual(3), residual(4))
    noise = 0.05 * torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=y.dtype)
    expected = measurement_residual(operator, image, y, noise)
    torch.testing.assert_close(residual(3), expected, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="generator"):
        psld_objective(loss, operator, y, z, image, encoder)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_norms_do_not_overflow(dtype):
    """||r|| over 3x512x512 entries of size 1: the float16 sum of squares would be Inf (max 65504)."""
    r = torch.ones(1, 3, 512, 512, dtype=dtype)
    if dtype == torch.float16:
        assert not torch.isfinite((r * r).sum())  # the naive float16 sum of squares overflows
    norm = per_sample_norm(r)
    assert norm.dtype == torch.float32
    assert float(norm) == pytest.approx((3 * 512 * 512) ** 0.5, rel=1e-3)


def test_matrix_operator_gluing_is_the_exact_projection():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 12, generator=g, dtype=torch.float64)
    op = MatrixOperator(matrix=a)
    x = torch.randn(2, 1, 12, 1, generator=g, dtype=torch.float64)
    y = torch.randn(2, 1, 5, 1, generator=g, dtype=torch.float64)
    glued = op.project(x, y)
    torch.testing.assert_close(op.forward(glued), y, rtol=1e-10, atol=1e-10)  # agrees with y where A observes
    null = torch.eye(12, dtype=torch.float64) - torch.linalg.pinv(a) @ a
    torch.testing.assert_close(glued.reshape(2, 12) @ null.T, x.reshape(2, 12) @ null.T, rtol=1e-10, atol=1e-10)
    assert gluing_residual(x[:, :, :5], x[:, :, :5]).abs().max() == 0


def test_reference_weights_per_task():
    assert (reference_loss("box_inpaint").omega, reference_loss("box_inpaint").gamma) == (0.1, 0.01)
    for task in ("random_inpaint", "super_resolution", "gaussian_deblur", "motion_deblur"):
        assert (reference_loss(task).omega, reference_loss(task).gamma) == (1.0, 0.1)
    for task in TASKS:  # the other fields keep the defaults: plain norms, no fresh noise, PSLD
        loss = reference_loss(task)
        assert dataclasses.replace(loss, omega=1.0, gamma=0.1) == PSLDLoss()
        assert (loss.omega, loss.gamma) == REFERENCE_WEIGHTS[task]
    assert {"colorize", "denoise"} <= set(TASKS)
    with pytest.raises(ValueError, match=r"task='deblur'.*box_inpaint"):
        reference_loss("deblur")


@pytest.mark.parametrize("field, value, allowed", [
    ("omega", -1.0, ">= 0"), ("omega", float("nan"), ">= 0"), ("gamma", float("inf"), ">= 0"),
    ("gamma", "0.1", ">= 0"), ("omega", True, ">= 0"), ("variant", "DPS", "PSLD"), ("squared", 1, "True or False"),
    ("fresh_measurement_noise", -0.05, ">= 0"), ("detach_gluing_target", "no", "True or False"),
])
def test_invalid_fields_name_field_value_and_what_is_allowed(field, value, allowed):
    with pytest.raises(ValueError) as info:
        PSLDLoss(**{field: value})
    message = str(info.value)
    assert f"{field}={value!r}" in message and allowed in message


def test_psld_loss_is_frozen_and_describes_itself():
    loss = PSLDLoss(variant="LDPS", gamma=0.5, squared=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        loss.omega = 2.0
    assert loss.describe() == "LDPS: omega=1, gamma=0 (squared norms)"


def test_shape_mismatches_are_explained():
    decoder, encoder, operator, y, z = make_problem()
    with pytest.raises(ValueError, match="encode returned shape"):
        psld_objective(PSLDLoss(), operator, y, z, decoder(z), lambda image: image)
    op = MatrixOperator(matrix=torch.randn(4, C * H * W, dtype=torch.float64))
    with pytest.raises(ValueError, match="y must have that shape"):
        psld_objective(PSLDLoss(), op, torch.zeros(B, 1, 5, 1, dtype=torch.float64), z, decoder(z), encoder)
