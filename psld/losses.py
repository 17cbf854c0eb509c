"""The PSLD objective: a measurement term and a gluing term on the Tweedie estimate z0_hat of the clean latent.

    L(z0_hat) = omega ||A D(z0_hat) - y||  +  gamma ||z0_hat - E(project(D(z0_hat), y))||        (PSLD)

with project(x, y) = A^T y + (I - A^T A) x in the paper (the operator decides how: see psld/operators). Variants:

- "PSLD":    the two terms above.
- "GML-DPS": the gluing target is E(D(z0_hat)), without the projection (pushes z0_hat to a fixed point of E o D).
- "LDPS":    the measurement term only (latent DPS). gamma is ignored and the encoder is never run.

Every norm is taken per batch item and the items are summed, so the gradient of one sample never depends on
another (the reference takes one norm over the whole batch tensor, which couples the samples when B > 1).

Choices where the reference code and the paper differ, and the default picked here (docs/paper-map.md repeats this):

1. Plain or squared norms: the paper writes squared l2 norms; the reference code uses plain norms, whose gradient
   J^T r / ||r|| has unit length whatever the residual size, so omega and gamma are step lengths. Default
   `squared=False` (the code), because the only tuned weights that exist (omega=1, gamma=0.1; box inpainting
   0.1/0.01) were tuned for plain norms. `squared=True` follows the paper text; its weights need retuning.
2. Fresh noise on A x_hat: the reference adds new sigma_y N(0, I) noise to A D(z0_hat) in every step (`noiser`);
   the paper does not, nor does DPS. Default `fresh_measurement_noise=0.0`: the extra noise only raises the residual
   floor (to about sigma_y sqrt(2m)), which with plain norms shrinks the effective step, and makes the guidance
   random. Set it to sigma_y to reproduce the reference.
3. Encoder sample or mean: the reference's E draws a sample of the VAE posterior; E here is whatever `encode`
   callable the caller passes. The ComfyUI bridge passes the posterior mean (ComfyUI's encoder returns the mode), which
   is deterministic and does not add the posterior's noise to the gluing target.
4. Gluing target not detached: in both the paper's gradient and the reference code, gradients flow through E and D on
   the target side as well as through z0_hat. Default `detach_gluing_target=False` (faithful). True stops the gradient
   at the target: the encoder then runs without autograd (less memory, no encoder backward), but this is a different,
   cheaper algorithm. Beware: with plain norms and a nearly exact autoencoder the detached GML-DPS residual is
   rounding noise whose unit-length gradient is not small.

Precision: norms are accumulated in float32 at least (`torch.linalg.vector_norm(..., dtype=float32)`), because a
float16 sum of squares over a 3x512x512 image overflows (max 65504) for residuals of order 1; the tensors themselves
and the gradient stay in the caller's dtype.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Literal

import torch
from torch import Tensor

Variant = Literal["PSLD", "GML-DPS", "LDPS"]
VARIANTS = ("PSLD", "GML-DPS", "LDPS")

# Reference weights per task (psld-algorithm.md section 3, SD-1.5 run scripts); colorize/denoise are our own guesses.
REFERENCE_WEIGHTS = {
    "box_inpaint": (0.1, 0.01),       # run/inverse_bip.sh: omega 0.1, gamma 0.01
    "random_inpaint": (1.0, 0.1),     # run/inverse_rip.sh: CLI defaults
    "super_resolution": (1.0, 0.1),   # run/inverse.sh: CLI defaults
    "gaussian_deblur": (1.0, 0.1),    # run/inverse_gb.sh
    "motion_deblur": (1.0, 0.1),      # run/inverse_mb.sh
    "colorize": (1.0, 0.1),           # NOT from the paper: the general-task defaults, untuned
    "denoise": (0.1, 0.01),           # NOT from the paper: y covers every pixel, so a weak pull (untuned)
}
TASKS = tuple(REFERENCE_WEIGHTS)


def _check_weight(name: str, value) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    if not ok:
        raise ValueError(f"{name}={value!r} is not allowed: {name} must be a finite number >= 0.")
    return float(value)


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not allowed: {name} must be True or False.")
    return value


@dataclasses.dataclass(frozen=True)
class PSLDLoss:
    """Weights and options of the PSLD objective (see the module docstring for the choices and defaults)."""

    omega: float = 1.0                      # measurement weight
    gamma: float = 0.1                      # gluing weight (ignored by LDPS)
    variant: Variant = "PSLD"
    squared: bool = False                   # False = plain norm (reference code), True = squared norm (paper)
    fresh_measurement_noise: float = 0.0    # sigma of noise added to A x_hat each step (reference: sigma_y = 0.05)
    detach_gluing_target: bool = False      # True = no gradient through E(...) (not the paper, not the code)
    jacobian_free: bool = False             # True = the gradient skips the denoiser (psld.sampling, not the paper)

    def __post_init__(self):
        object.__setattr__(self, "omega", _check_weight("omega", self.omega))
        object.__setattr__(self, "gamma", _check_weight("gamma", self.gamma))
        if self.variant not in VARIANTS:
            raise ValueError(f"variant={self.variant!r} is not allowed: variant must be one of {VARIANTS}.")
        _check_bool("squared", self.squared)
        _check_bool("detach_gluing_target", self.detach_gluing_target)
        _check_bool("jacobian_free", self.jacobian_free)
        object.__setattr__(self, "fresh_measurement_noise",
                           _check_weight("fresh_measurement_noise", self.fresh_measurement_noise))

    @property
    def gluing_weight(self) -> float:
        """gamma, or 0 for LDPS (which has no gluing term)."""
        return 0.0 if self.variant == "LDPS" else self.gamma

    @property
    def uses_measurement(self) -> bool:
        return self.omega > 0.0

    @property
    def uses_gluing(self) -> bool:
        """Whether the encoder runs at all."""
        return self.gluing_weight > 0.0

    @property
    def needs_gradient(self) -> bool:
        """False when both weights are 0: the sampler is then plain DDIM and skips decoder, encoder and backward."""
        return self.uses_measurement or self.uses_gluing

    def describe(self) -> str:
        norm = "squared norms" if self.squared else "norms"
        text = f"{self.variant}: omega={self.omega:g}, gamma={self.gluing_weight:g} ({norm})"
        if self.fresh_measurement_noise > 0:
            text += f", fresh noise {self.fresh_measurement_noise:g} on A x"
        if self.jacobian_free:
            text += ", Jacobian-free"
        return text


def reference_loss(task: str) -> PSLDLoss:
    """The reference code's weights for a task (SD-1.5 scripts); 'colorize' and 'denoise' are not from the paper.

    Only omega and gamma come from the reference; the other fields keep the PSLDLoss defaults (plain norms as in the
    code, no fresh measurement noise).
    """
    if task not in REFERENCE_WEIGHTS:
        raise ValueError(f"task={task!r} is not allowed: task must be one of {TASKS}.")
    omega, gamma = REFERENCE_WEIGHTS[task]
    return PSLDLoss(omega=omega, gamma=gamma)


def per_sample_norm(r: Tensor) -> Tensor:
    """||r_b||_2 for every batch item b, accumulated in float32 or wider (module docstring)."""
    dtype = torch.promote_types(r.dtype, torch.float32)
    return torch.linalg.vector_norm(r.reshape(r.shape[0], -1), dim=1, dtype=dtype)


def measurement_residual(operator, image: Tensor, y: Tensor, noise: Tensor | None = None) -> Tensor:
    """||A x_hat (+ n) - y||_b per batch item; `noise` n is the optional fresh measurement noise."""
    prediction = operator.forward(image)
    if prediction.shape != y.shape:
        raise ValueError(f"y has shape {tuple(y.shape)}, but the operator maps the decoded image of shape "
                         f"{tuple(image.shape)} to shape {tuple(prediction.shape)}: y must have that shape.")
    if noise is not None:
        prediction = prediction + noise  # n(A x_hat) = A x_hat + sigma n
    return per_sample_norm(prediction - y)


def gluing_image(operator, image: Tensor, y: Tensor) -> Tensor:
    """x_glue = A^T y + (I - A^T A) x_hat (the operator's `project`)."""
    return operator.project(image, y)


def gluing_residual(z0_hat: Tensor, target: Tensor) -> Tensor:
    """||z0_hat - E(x_glue)||_b per batch item."""
    if target.shape != z0_hat.shape:
        raise ValueError(f"encode returned shape {tuple(target.shape)} for the gluing image, but the latent z0_hat "
                         f"has shape {tuple(z0_hat.shape)}: encode must map decoded images back to latents of "
                         f"the same shape.")
    return per_sample_norm(z0_hat - target)


def gluing_target(loss: PSLDLoss, operator, y: Tensor, image: Tensor, encode: Callable[[Tensor], Tensor]) -> Tensor:
    """E(project(x_hat, y)) for PSLD, E(x_hat) for GML-DPS; under no_grad when the target is detached."""
    source = image.detach() if loss.detach_gluing_target else image
    with torch.set_grad_enabled(torch.is_grad_enabled() and not loss.detach_gluing_target):
        glued = gluing_image(operator, source, y) if loss.variant == "PSLD" else source
        return encode(glued)


def fresh_noise(loss: PSLDLoss, y: Tensor, generator: torch.Generator | None) -> Tensor | None:
    """sigma_f N(0, I) shaped like y, from `generator`; None when fresh_measurement_noise is 0."""
    if loss.fresh_measurement_noise == 0.0:
        return None
    if generator is None:
        raise ValueError(f"generator is None: fresh_measurement_noise={loss.fresh_measurement_noise} needs a "
                         f"torch.Generator for its noise (the global RNG is never used).")
    noise = torch.randn(y.shape, generator=generator, device=generator.device, dtype=y.dtype)
    return loss.fresh_measurement_noise * noise.to(y.device)


def psld_objective(loss: PSLDLoss, operator, y: Tensor, z0_hat: Tensor, image_hat: Tensor,
                   encode: Callable[[Tensor], Tensor] | None, *, generator: torch.Generator | None = None
                   ) -> tuple[Tensor, dict[str, Tensor]]:
    """omega sum_b ||A x_hat_b - y_b||^p + gamma sum_b ||z0_hat_b - E(x_glue_b)||^p, p = 1 (code) or 2 (paper).

    `image_hat` = D(z0_hat), decoded once by the caller and shared by both terms. Returns the scalar objective and
    the per-sample residual norms (detached, unweighted, never squared): "measurement" when omega > 0 and "gluing"
    when the variant has a gluing term and gamma > 0. A term whose weight is 0 is not computed.
    """
    power = 2 if loss.squared else 1
    total = image_hat.new_zeros((), dtype=torch.promote_types(image_hat.dtype, torch.float32))
    residuals: dict[str, Tensor] = {}
    if loss.uses_measurement:
        r = measurement_residual(operator, image_hat, y, fresh_noise(loss, y, generator))
        total = total + loss.omega * (r ** power).sum()
        residuals["measurement"] = r.detach()
    if loss.uses_gluing:
        if encode is None:
            raise ValueError(f"encode is None: the {loss.variant} gluing term (gamma={loss.gamma}) needs the "
                             f"encoder; pass encode, or use variant='LDPS' / gamma=0.")
        g = gluing_residual(z0_hat, gluing_target(loss, operator, y, image_hat, encode))
        total = total + loss.gluing_weight * (g ** power).sum()
        residuals["gluing"] = g.detach()
    return total, residuals
