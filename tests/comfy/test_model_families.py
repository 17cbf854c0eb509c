"""Model families beyond SD1.5, built with ComfyUI's own classes (comfy.supported_models / comfy.model_base) at tiny
size with seeded random weights, inside torch.inference_mode() as ComfyUI's loaders build them:

- SD 2.x v-prediction (ModelType.V_PREDICTION, linear transformer projections, head channels 64-style layout),
- SDXL (ADM "y" conditioning from the pooled text embedding and size embeddings, SDXL latent format),
- Flux (a flow-matching model), which must be refused with a clear message.

The VAE is the tiny checkpoint's TAESD (4 latent channels, as for all three SD families).
"""
import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from conftest import SIZE, probe_in_sampler, run_node

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from make_tiny_models import seeded_init_  # noqa: E402  (the tiny checkpoints' deterministic initialisation)

CONTEXT = 64  # text embedding width of the tiny models (any width works: the conds below match it)
UNET = dict(use_checkpoint=False, image_size=32, use_spatial_transformer=True, legacy=False, in_channels=4,
            out_channels=4, model_channels=32, num_res_blocks=[1, 1], transformer_depth=[0, 1], channel_mult=[1, 2],
            transformer_depth_middle=1, use_linear_in_transformer=True, context_dim=CONTEXT, num_heads=-1,
            num_head_channels=16, transformer_depth_output=[0, 0, 1, 1])


def patcher_for(model):
    import comfy.model_management
    import comfy.model_patcher
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def build_sd2_v():
    import comfy.model_base
    import comfy.supported_models
    config = comfy.supported_models.SD20(dict(UNET, adm_in_channels=None))
    config.set_inference_dtype(torch.float32, None)
    model = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.V_PREDICTION)
    seeded_init_(model.diffusion_model, seed=1)
    conds = [[torch.randn(1, 77, CONTEXT, generator=torch.Generator().manual_seed(2)), {}]]
    return model, conds, [[torch.zeros(1, 77, CONTEXT), {}]]


def build_sdxl():
    import comfy.supported_models
    config = comfy.supported_models.SDXL(dict(UNET, adm_in_channels=2816, num_classes="sequential"))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    seeded_init_(model.diffusion_model, seed=3)
    generator = torch.Generator().manual_seed(4)
    conds = [[torch.randn(1, 77, CONTEXT, generator=generator), {"pooled_output": torch.randn(1, 1280,
                                                                                               generator=generator)}]]
    return model, conds, [[torch.zeros(1, 77, CONTEXT), {"pooled_output": torch.zeros(1, 1280)}]]


def build_flux():
    import comfy.ldm.flux.model
    import comfy.supported_models
    settings = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32,
                    hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12],
                    theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True)
    if "txt_ids_dims" in {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}:
        settings["txt_ids_dims"] = []  # ComfyUI 0.30 asks for it; 0.3.75 does not know it
    config = comfy.supported_models.Flux(settings)
    config.set_inference_dtype(torch.float32, None)
    return config.get_model({})


@pytest.fixture(scope="module", params=["sd2_v", "sdxl"])
def family(request, comfy):
    with torch.inference_mode():
        model, positive, negative = {"sd2_v": build_sd2_v, "sdxl": build_sdxl}[request.param]()
        return request.param, patcher_for(model), positive, negative


def test_families_are_what_comfyui_makes_of_them(family):
    import comfy.latent_formats
    import comfy.model_sampling
    name, patcher, _, _ = family
    sampling = patcher.get_model_object("model_sampling")
    if name == "sd2_v":
        assert patcher.model.model_type.name == "V_PREDICTION"
        assert isinstance(sampling, comfy.model_sampling.V_PREDICTION)
    else:
        assert type(patcher.model).__name__ == "SDXL" and patcher.model.model_type.name == "EPS"
        assert isinstance(patcher.model.latent_format, comfy.latent_formats.SDXL)


def test_gradient_is_finite_nonzero_and_correct(family, pack_module, sd15, make_operator, degrade, photo):
    name, patcher, positive, negative = family
    bridge, sampling, losses = (pack_module(m) for m in ("nodes.comfy_bridge", "psld.sampling", "psld.losses"))
    operator = make_operator("super_resolution", sr_scale="4")
    measurement = degrade(photo, operator)
    with torch.inference_mode():
        guider = bridge.PSLDGuider(patcher, sd15[2], node_id="PSLD_Guider")
        guider.set_conds(positive, negative)
        guider.set_cfg(2.0)
    loss = losses.PSLDLoss(omega=1.0, gamma=0.1)

    def probe(model, x, sigma, extra_args):
        y = (measurement.movedim(-1, 1) * 2 - 1).to(x)

        def objective(z):
            z0 = model(z, sigma, **extra_args)
            return losses.psld_objective(loss, operator.operator, y, z0, guider.vae.decode(z0), guider.vae.encode)[0]

        grad, _, _, _ = sampling.psld_gradient(lambda z, s: model(z, s, **extra_args), x, sigma, loss=loss,
                                               operator=operator.operator, y=y, decode=guider.vae.decode,
                                               encode=guider.vae.encode)
        # half along the gradient (a large, well-conditioned derivative), half random (checks its direction)
        direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(5)).to(x)
        direction = direction / direction.norm() + grad / grad.norm()
        direction = direction / direction.norm()
        step = 1e-2
        finite_difference = (objective(x + step * direction) - objective(x - step * direction)) / (2 * step)
        return grad, float(finite_difference), float((grad * direction).sum())

    grad, finite_difference, directional = probe_in_sampler(guider, probe)
    assert torch.isfinite(grad).all() and grad.norm() > 0, name
    assert directional == pytest.approx(finite_difference, rel=0.02, abs=1e-3 * grad.norm().item()), name


def test_psld_sampler_runs_a_few_steps(family, node_classes, sd15, make_operator, degrade, photo):
    name, patcher, positive, negative = family
    operator = make_operator("random_inpaint")
    measurement = degrade(photo, operator, sigma_y=0.05)
    latent, image = run_node(node_classes["PSLD_Sampler"], model=patcher, vae=sd15[2], positive=positive,
                             negative=negative, operator=operator, measurement=measurement, seed=0, steps=3, cfg=2.0,
                             eta=0.0, scheduler="ddim_uniform")
    assert latent["samples"].shape == (1, 4, SIZE // 8, SIZE // 8), name
    assert torch.isfinite(latent["samples"]).all() and torch.isfinite(image).all(), name


def test_flow_model_is_refused(node_classes, sd15, prompts, input_error, make_operator, degrade, photo):
    with torch.inference_mode():
        flux = patcher_for(build_flux())
    assert flux.model.model_type.name == "FLUX"
    operator = make_operator("box_inpaint")
    with pytest.raises(input_error) as error:
        run_node(node_classes["PSLD_Sampler"], model=flux, vae=sd15[2], positive=prompts[0], negative=prompts[1],
                 operator=operator, measurement=degrade(photo, operator), seed=0, steps=2, cfg=1.0, eta=0.0,
                 scheduler="ddim_uniform")
    message = str(error.value)
    assert message.startswith("PSLD_Sampler: input 'model':") and "Flux" in message
    assert "flow models (SD3, Flux) are not supported yet" in message and "Fix:" in message
