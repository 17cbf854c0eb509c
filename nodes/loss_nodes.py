"""PSLD_GluingLoss: the weights and options of the PSLD objective, as a PSLD_LOSS for the sampler."""
from __future__ import annotations

import math

from comfy_api.latest import io

from ..psld.losses import VARIANTS, PSLDLoss
from .errors import PSLDInputError
from .loss_settings import PROJECTION_CHOICES, LossSettings

CATEGORY = "image/restoration/PSLD"
NORMS = ("norm", "squared")  # reference code / paper text
GRADIENTS = ("full", "jacobian-free")  # through the UNet (paper) / without the UNet's backward (psld.sampling)
LossSocket = io.Custom("PSLD_LOSS")


class PSLDGluingLoss(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PSLD_GluingLoss",
            display_name="PSLD Gluing Loss",
            category=CATEGORY,
            description=("Weights of the PSLD objective omega ||A D(z0) - y|| + gamma ||z0 - E(glue(D(z0), y))|| "
                         "(Rout et al., NeurIPS 2023). Without this node the sampler uses the reference weights of "
                         "the operator's task."),
            inputs=[
                io.Float.Input("omega", default=1.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Weight of the measurement term ||A D(z0) - y|| (reference: 1.0; box "
                                       "inpainting 0.1). 0 turns the term off (both 0 = plain DDIM, y unused)."),
                io.Float.Input("gamma", default=0.1, min=0.0, max=100.0, step=0.001,
                               tooltip="Weight of the gluing term ||z0 - E(glue)|| that keeps the latent on the "
                                       "autoencoder's manifold (reference: 0.1; box inpainting 0.01). Ignored by "
                                       "LDPS."),
                io.Combo.Input("variant", options=list(VARIANTS), default="PSLD",
                               tooltip="PSLD: measurement + gluing term. GML-DPS: gluing target E(D(z0)) without "
                                       "the measurement projection. LDPS: measurement term only (latent DPS)."),
                io.Combo.Input("norm", options=list(NORMS), default="norm",
                               tooltip="norm = plain l2 norms as in the reference code (the weights are step "
                                       "lengths; the tuned weights assume this). squared = squared norms as in "
                                       "the paper text (retune the weights)."),
                io.Combo.Input("projection", options=list(PROJECTION_CHOICES), default="operator",
                               tooltip="Gluing image: operator = the operator's own setting; paper = the reference "
                                       "code's pseudo-transpose; exact = the pseudo-inverse."),
                io.Float.Input("fresh_noise", default=0.0, min=0.0, max=1.0, step=0.005,
                               tooltip="Standard deviation of new noise added to A D(z0) at every step, in [-1, 1] "
                                       "units. The reference code adds sigma_y (0.05); the paper and DPS add none "
                                       "(0, the default)."),
                io.Boolean.Input("detach_gluing_target", default=False,
                                 tooltip="On: no gradient through the encoder's target (less memory and time, but a "
                                         "different, cheaper algorithm). Off: as in the paper and code."),
                io.Combo.Input("gradient", options=list(GRADIENTS), default="full", optional=True,
                               tooltip="full: the gradient goes back through the UNet, as in the paper. "
                                       "jacobian-free: the gradient is taken with respect to the denoised latent "
                                       "and passed to the noisy one through the Jacobian of a Gaussian-prior "
                                       "denoiser (1 / (1 + sigma^2)) instead of the UNet's backward pass: the UNet "
                                       "runs forward only and stores no activations. Beyond the paper. Measured "
                                       "on the demo prior: 1-2.7 dB below full for inpainting and super-"
                                       "resolution (not recommended there), 0.3 dB above for deblurring; 25 % "
                                       "faster per step on SD1.5 at 512 px (docs/benchmarks.md)."),
            ],
            outputs=[
                LossSocket.Output(display_name="loss",
                                  tooltip="The PSLD objective's settings, for the PSLD sampler's loss input."),
            ],
        )

    @classmethod
    def execute(cls, *, omega, gamma, variant, norm, projection, fresh_noise, detach_gluing_target,
                gradient="full") -> io.NodeOutput:
        node_id = "PSLD_GluingLoss"
        for name, value in (("omega", omega), ("gamma", gamma), ("fresh_noise", fresh_noise)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < math.inf:
                raise PSLDInputError(node_id, name, f"{name}={value!r} is not allowed.",
                                     "use a finite number >= 0 (reference: omega 1.0, gamma 0.1, fresh_noise 0 "
                                     "or 0.05).")
        choices = (("variant", variant, VARIANTS), ("norm", norm, NORMS),
                   ("projection", projection, PROJECTION_CHOICES), ("gradient", gradient, GRADIENTS))
        for name, value, allowed in choices:
            if value not in allowed:
                raise PSLDInputError(node_id, name, f"{name}={value!r} is unknown.",
                                     f"choose one of {', '.join(allowed)}.")
        loss = PSLDLoss(omega=float(omega), gamma=float(gamma), variant=variant, squared=norm == "squared",
                        fresh_measurement_noise=float(fresh_noise),
                        detach_gluing_target=bool(detach_gluing_target), jacobian_free=gradient == "jacobian-free")
        settings = LossSettings(loss=loss, projection=None if projection == "operator" else projection)
        return io.NodeOutput(settings)


NODES = [PSLDGluingLoss]
