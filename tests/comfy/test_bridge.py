"""nodes/comfy_bridge.py on the real ComfyUI host: gradients through the user's own MODEL and VAE.

The tiny SD1.5 checkpoint (random UNet, CLIP-L, TAESD) is loaded by CheckpointLoaderSimple inside
torch.inference_mode(), so its weights are inference tensors exactly as in a running ComfyUI. Gradients are taken
the way the PSLD sampler takes them: inside guider.sample (itself called under inference mode, as
SamplerCustomAdvanced does), with psld.sampling.psld_gradient opening the gradient region.
"""
import math

import pytest
import torch

from conftest import SIZE, probe_in_sampler, run_node


@pytest.fixture(scope="module")
def bridge(pack_module):
    return pack_module("nodes.comfy_bridge")


@pytest.fixture(scope="module")
def inpainting(make_operator, degrade, photo):
    operator = make_operator("box_inpaint")
    return operator, degrade(photo, operator)


def make_guider(bridge, sd15, prompts, cfg=2.0):
    with torch.inference_mode():
        guider = bridge.PSLDGuider(sd15[0], sd15[2], node_id="PSLD_Guider")
        guider.set_conds(*prompts)
        guider.set_cfg(cfg)
    return guider


def psld_terms(pack_module, operator, y):
    """(loss, objective(model, extra_args, guider, x, sigma) -> scalar) for the reference PSLD objective."""
    losses = pack_module("psld.losses")
    loss = losses.PSLDLoss(omega=1.0, gamma=0.1)

    def objective(model, extra_args, guider, x, sigma):
        z0 = model(x, sigma, **extra_args)
        total, _ = losses.psld_objective(loss, operator.operator, y, z0, guider.vae.decode(z0), guider.vae.encode)
        return total
    return loss, objective


def test_gradient_reaches_the_latent_through_unet_decoder_and_encoder(bridge, pack_module, sd15, prompts, inpainting):
    """The PSLD objective (decode -> A -> y, and the gluing term through the encoder) has a finite, non-zero
    gradient with respect to z_t, and it is the right one: it matches a central finite difference."""
    sampling = pack_module("psld.sampling")
    operator, measurement = inpainting
    guider = make_guider(bridge, sd15, prompts)

    def probe(model, x, sigma, extra_args):
        y = (measurement.movedim(-1, 1) * 2 - 1).to(x)
        loss, objective = psld_terms(pack_module, operator, y)
        grad, z0, total, residuals = sampling.psld_gradient(
            lambda z, s: model(z, s, **extra_args), x, sigma, loss=loss, operator=operator.operator, y=y,
            decode=guider.vae.decode, encode=guider.vae.encode)
        # half along the gradient (a large, well-conditioned derivative), half random (checks its direction)
        direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(x)
        direction = direction / direction.norm() + grad / grad.norm()
        direction = direction / direction.norm()
        step = 1e-2
        ahead = objective(model, extra_args, guider, x + step * direction, sigma)
        behind = objective(model, extra_args, guider, x - step * direction, sigma)
        return (grad, float(total), residuals, float((ahead - behind) / (2 * step)),
                float((grad * direction).sum()), x.is_inference())

    grad, total, residuals, finite_difference, directional, x_was_inference = probe_in_sampler(guider, probe)
    assert x_was_inference  # the sampler's latent is an inference tensor: the gradient region had to cope
    assert torch.isfinite(grad).all() and grad.norm() > 0
    assert math.isfinite(total) and set(residuals) == {"measurement", "gluing"}
    assert directional == pytest.approx(finite_difference, rel=0.02, abs=1e-3 * grad.norm().item())


def test_differentiable_decode_and_encode_agree_with_comfyui_vae(bridge, sd15):
    """decode/encode of the gradient path give what ComfyUI's own VAE.decode / VAE.encode give (which clamp and
    work in [0, 1]), so PSLD sees the images the user sees."""
    _, _, vae = sd15
    model = sd15[0]
    with torch.inference_mode():
        differentiable = bridge.DifferentiableVAE(vae, model.get_model_object("latent_format"), "PSLD_Guider")
        import comfy.model_management
        comfy.model_management.load_models_gpu([differentiable.patcher])
        z = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(2))
        ours = differentiable.decode(z)
        comfy_image = vae.decode(model.model.process_latent_out(z))  # [B, H, W, C] in [0, 1]
        assert ours.shape == (1, 3, SIZE, SIZE) and ours.dtype == z.dtype
        assert torch.allclose(((ours + 1) / 2).clamp(0, 1).movedim(1, -1), comfy_image, atol=1e-4)
        assert ours.min() < -1 or ours.max() > 1  # the random decoder leaves [-1, 1]: no clamp on our side
        picture = comfy_image.clone()
        encoded = differentiable.encode(picture.movedim(-1, 1) * 2 - 1)
        assert torch.allclose(encoded, model.model.process_latent_in(vae.encode(picture)), atol=1e-4)


def test_decode_gradient_uses_raw_vae_parameters_by_reference(bridge, pack_module, sd15):
    """TAESD's vae_scale / vae_shift are plain parameters that no comfy.ops layer owns: inside the gradient region
    (weights by reference, as psld_gradient opens it) they take part like every other weight."""
    _, _, vae = sd15
    memory = pack_module("psld.memory")
    assert "vae_scale" in dict(vae.first_stage_model.named_parameters())
    with torch.inference_mode():
        differentiable = bridge.DifferentiableVAE(vae, sd15[0].get_model_object("latent_format"), "PSLD_Guider")
        import comfy.model_management
        comfy.model_management.load_models_gpu([differentiable.patcher])
        with torch.inference_mode(False), torch.enable_grad(), memory.weights_by_reference():
            z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
            (grad,) = torch.autograd.grad(differentiable.decode(z).square().sum(), z)
    assert torch.isfinite(grad).all() and grad.norm() > 0


def recorded_psld_step(pack_module, guider, operator, measurement, model, x, sigma, extra_args, low_memory):
    """One PSLD gradient step as the sampler takes it (psld_gradient over bridge_sampler.gradient_path), with every
    allocation and every saved tensor recorded. Returns (gradient, allocated shapes, SavedTensorBytes, weights),
    weights being the UNet's and VAE's parameters as loaded for this step (LoRA patches baked in)."""
    from helpers.allocations import AllocationRecorder, SavedTensorBytes

    weights = [p for m in (guider.model_patcher.model.diffusion_model, guider.vae.module) for p in m.parameters()]
    y = (measurement.movedim(-1, 1) * 2 - 1).to(x)
    denoise, decode, encode = pack_module("nodes.bridge_sampler").gradient_path(model, guider, extra_args,
                                                                                low_memory=low_memory)
    recorder = AllocationRecorder()
    with recorder, SavedTensorBytes(weights) as saved:
        grad = pack_module("psld.sampling").psld_gradient(
            denoise, x, sigma, loss=psld_terms(pack_module, operator, y)[0], operator=operator.operator, y=y,
            decode=decode, encode=encode)[0]
    return grad, recorder.shapes, saved, weights


def test_a_psld_step_uses_every_weight_by_reference_in_both_memory_modes(bridge, pack_module, sd15, prompts,
                                                                         inpainting):
    """One PSLD gradient step through the real UNet (cfg 2), TAESD decoder and encoder, as the sampler takes it.
    Every tensor allocated in its forward and backward pass is recorded: none has the shape of a weight matrix or
    kernel of the UNet or VAE (a per-step weight copy or a weight gradient would), and the weights autograd keeps
    are the loaded weights themselves. `low` recomputes block activations: same gradient, less stored."""
    from helpers.allocations import weight_shapes

    guider = make_guider(bridge, sd15, prompts)
    models = [sd15[0].model.diffusion_model, sd15[2].first_stage_model]
    shapes = weight_shapes(models)

    def probe(model, x, sigma, extra_args):
        steps = [recorded_psld_step(pack_module, guider, *inpainting, model, x, sigma, extra_args, low)
                 for low in (False, True)]
        return steps + [guider.unet_blocks()]

    (fast, fast_shapes, fast_saved, _), (low, low_shapes, low_saved, _), blocks = probe_in_sampler(guider, probe)
    assert len(shapes) > 10 and len(blocks) >= 4 and bridge.checkpoint_blocks(models[1])
    assert not fast_shapes & shapes and not low_shapes & shapes
    assert fast_saved.by_reference > 20 and low_saved.by_reference > 0
    assert torch.allclose(low, fast, rtol=1e-5, atol=1e-6 * fast.abs().max().item()) and fast.norm() > 0
    assert low_saved.total < fast_saved.total / 2


def random_lora(model, rank=4, seed=11) -> dict:
    """A LoRA (lora_up / lora_down pairs) on every linear weight of the UNet, in the key format ComfyUI loads."""
    import comfy.lora

    generator = torch.Generator().manual_seed(seed)
    state = model.model.state_dict()
    lora = {}
    for name, key in comfy.lora.model_lora_keys_unet(model.model, {}).items():
        weight = state.get(key) if isinstance(key, str) and name.startswith("lora_unet_") else None
        if weight is not None and weight.ndim == 2:
            lora[f"{name}.lora_up.weight"] = torch.randn(weight.shape[0], rank, generator=generator) / 2
            lora[f"{name}.lora_down.weight"] = torch.randn(rank, weight.shape[1], generator=generator) / 2
    return lora


def test_lora_patched_weights_are_what_the_gradient_uses_by_reference(bridge, pack_module, sd15, prompts,
                                                                      inpainting):
    """A LoRA applied as LoraLoaderModelOnly applies it (comfy.sd.load_lora_for_models): the PSLD gradient changes
    with it, still without a weight-shaped allocation, and autograd keeps the patched weights themselves."""
    import comfy.sd
    from helpers.allocations import weight_shapes

    lora = random_lora(sd15[0])
    with torch.inference_mode():
        patched = comfy.sd.load_lora_for_models(sd15[0], None, lora, 1.0, 0.0)[0]
    assert len(lora) > 8 and patched.patches

    def gradient_of(model_patcher):
        guider = make_guider(bridge, (model_patcher, *sd15[1:]), prompts)
        return probe_in_sampler(guider, lambda model, x, sigma, extra: recorded_psld_step(
            pack_module, guider, *inpainting, model, x, sigma, extra, False))

    import comfy.model_management

    plain, _, _, _ = gradient_of(sd15[0])
    try:
        with_lora, shapes, saved, _ = gradient_of(patched)
    finally:  # the shared module holds the LoRA-patched weights while that clone is loaded: load the plain one
        with torch.inference_mode():
            comfy.model_management.load_models_gpu([sd15[0]])
    assert not shapes & weight_shapes([sd15[0].model.diffusion_model, sd15[2].first_stage_model])
    assert saved.by_reference > 20 and torch.isfinite(with_lora).all()
    assert (with_lora - plain).norm() > 1e-3 * plain.norm()  # the patched weights are what ran


def test_auto_memory_picks_low_when_fast_would_not_fit_and_says_so(bridge, sd15, prompts, caplog):
    """auto compares its estimate of what fast mode stores with the free memory ComfyUI reports: a 64-image batch
    of 4096 px latents cannot fit in this machine's memory, a 64 px image can; the log says which it picked."""
    import logging

    import comfy.model_management

    with torch.inference_mode():
        guider = bridge.PSLDGuider(sd15[0], sd15[2], node_id="PSLD_Guider", memory="auto")
        guider.set_conds(*prompts)
        guider.set_cfg(2.0)
    free = comfy.model_management.get_free_memory(guider.model_patcher.load_device)
    small, huge = torch.zeros(1).expand(1, 4, 8, 8), torch.zeros(1).expand(64, 4, 512, 512)
    assert guider.estimated_bytes(small, "fast") < free < guider.estimated_bytes(huge, "fast")
    assert guider.estimated_bytes(huge, "low") < guider.estimated_bytes(huge, "fast")
    with caplog.at_level(logging.INFO):
        assert guider.choose_memory_mode(small) == "fast" and guider.choose_memory_mode(huge) == "low"
    assert "PSLD_Guider: memory 'auto' chose 'low' for a 64x4x512x512 latent" in caplog.text
    fixed = bridge.PSLDGuider(sd15[0], sd15[2], node_id="PSLD_Guider", memory="fast")
    assert fixed.choose_memory_mode(huge) == "fast"  # a chosen mode is kept


def test_clones_leave_the_users_model_and_vae_untouched(bridge, sd15, prompts):
    """Building the guider and sampling with it changes nothing on the user's MODEL / VAE patchers or weights."""
    model, _, vae = sd15

    def snapshot(patcher):
        return dict(wrappers={k: list(v) for k, v in patcher.weight_wrapper_patches.items()},
                    patches={k: list(v) for k, v in patcher.patches.items()},
                    object_patches=dict(patcher.object_patches), options=repr(patcher.model_options),
                    additional=dict(patcher.additional_models), uuid=patcher.patches_uuid,
                    weights={k: v.clone() for k, v in patcher.model.state_dict().items()})

    before = [snapshot(model), snapshot(vae.patcher)]
    guider = make_guider(bridge, sd15, prompts)
    assert guider.model_patcher is not model and guider.vae.patcher is not vae.patcher
    assert guider.model_patcher.get_additional_models_with_key(bridge.PSLD_KEY) == [guider.vae.patcher]
    assert not guider.model_patcher.weight_wrapper_patches  # no per-forward weight copies
    assert not guider.vae.patcher.weight_wrapper_patches
    probe_in_sampler(guider, lambda model_k, x, sigma, extra: float(model_k(x, sigma, **extra).norm()))
    after = [snapshot(model), snapshot(vae.patcher)]
    for old, new in zip(before, after):
        weights_old, weights_new = old.pop("weights"), new.pop("weights")
        assert old == new
        assert weights_old.keys() == weights_new.keys()
        assert all(torch.equal(weights_old[k], weights_new[k]) for k in weights_old)


def test_attention_without_backward_is_replaced_while_gradients_are_on(bridge, pack_module, sd15, prompts,
                                                                       monkeypatch):
    """Sage and flash attention have no backward pass (GPU only). Stand-in: the host's attention replaced by a
    kernel whose backward raises. A plain grad-enabled clone fails; the PSLD guider's override routes the
    gradient pass through PyTorch attention and gets the same gradient as an unmodified host."""
    import comfy.ldm.modules.attention as attention
    import comfy.samplers

    class NoBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, heads):
            return attention.attention_pytorch(q, k, v, heads)

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("this attention kernel has no backward pass")

    @attention.wrap_attn
    def attention_without_backward(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                                   skip_output_reshape=False, **kwargs):
        return NoBackward.apply(q, k, v, heads)

    def gradient_through(guider):
        def probe(model, x, sigma, extra_args):
            by_reference = pack_module("psld.memory").weights_by_reference
            with torch.inference_mode(False), torch.enable_grad(), by_reference():
                leaf = x.clone().requires_grad_(True)
                (grad,) = torch.autograd.grad(model(leaf, sigma, **extra_args).square().sum(), leaf)
            return grad
        return probe_in_sampler(guider, probe)

    reference = gradient_through(make_guider(bridge, sd15, prompts))
    monkeypatch.setattr(attention, "optimized_attention", attention_without_backward)
    with torch.inference_mode():
        plain = comfy.samplers.CFGGuider(sd15[0].clone())
        plain.set_conds(*prompts)
        plain.set_cfg(2.0)
    with pytest.raises(RuntimeError, match="no backward pass"):
        gradient_through(plain)
    replaced = gradient_through(make_guider(bridge, sd15, prompts))
    assert torch.allclose(replaced, reference, rtol=1e-4, atol=1e-6)


def test_override_keeps_differentiable_attention_and_an_earlier_override(bridge):
    import comfy.ldm.modules.attention as attention

    calls = []

    def earlier(func, *args, **kwargs):
        calls.append(func.__name__)
        return func(*args, **kwargs)

    override = bridge.make_attention_override(earlier)
    q = torch.randn(1, 4, 8)
    basic = attention.attention_basic.__wrapped__
    with torch.inference_mode(False), torch.enable_grad():
        out = override(basic, q, q, q, 2, _inside_attn_wrapper=True)
        assert torch.allclose(out, attention.attention_pytorch(q, q, q, 2), atol=1e-5)
        override(lambda *a, **k: None, q, q, q, 2, _inside_attn_wrapper=True)  # unknown kernel: replaced
    with torch.no_grad():
        assert override(lambda *a, **k: "kept", q, q, q, 2) == "kept"  # no gradients: left alone
    assert calls == ["attention_basic", "attention_pytorch", "<lambda>"]


def test_plain_patchers_are_used_as_they_are(bridge, sd15):
    """CPU ComfyUI never makes dynamic-VRAM patchers (bench/gpu_psld.py checks the GPU case)."""
    model, _, vae = sd15
    assert bridge.non_dynamic(model, "PSLD_Guider", "model") is model
    assert bridge.non_dynamic(vae.patcher, "PSLD_Guider", "vae") is vae.patcher


def test_guider_refuses_an_unknown_memory_mode(bridge, sd15, input_error):
    with pytest.raises(input_error, match="PSLD_Guider: input 'memory': memory='huge' is unknown.*auto, fast, low"):
        bridge.PSLDGuider(sd15[0], sd15[2], node_id="PSLD_Guider", memory="huge")


def test_guider_refuses_a_vae_of_another_latent_space(bridge, sd15, input_error):
    import comfy.sd
    import comfy.taesd.taesd

    with torch.inference_mode():
        other = comfy.sd.VAE(sd=comfy.taesd.taesd.TAESD(latent_channels=16).state_dict())
        with pytest.raises(input_error) as error:
            bridge.PSLDGuider(sd15[0], other, node_id="PSLD_Guider")
    assert "PSLD_Guider: input 'vae'" in str(error.value) and "16-channel" in str(error.value)


def test_latent_shape_needs_image_sizes_the_vae_can_encode(bridge, sd15, input_error):
    with torch.inference_mode():
        guider = bridge.PSLDGuider(sd15[0], sd15[2], node_id="PSLD_Sampler")
    assert guider.latent_shape(2, 64, 96, "PSLD_Sampler", "operator") == (2, 4, 8, 12)
    with pytest.raises(input_error, match="PSLD_Sampler: input 'operator'.*multiples of 8"):
        guider.latent_shape(1, 60, 64, "PSLD_Sampler", "operator")


def test_refuses_models_that_are_not_variance_preserving(bridge, node_classes, sd15, input_error):
    """Model-sampling patch nodes can turn an SD1.5 model into a flow or x0 model: the check looks at what runs."""
    model = sd15[0]
    bridge.check_model(model, "PSLD_Guider")  # the plain model is fine
    flow = run_node(node_classes["ModelSamplingSD3"], model=model, shift=3.0)[0]
    with pytest.raises(input_error, match=r"PSLD_Guider: input 'model'.*flow models \(SD3, Flux\) are not supported"):
        bridge.check_model(flow, "PSLD_Guider")
    x0 = run_node(node_classes["ModelSamplingDiscrete"], model=model, sampling="x0", zsnr=False)[0]
    with pytest.raises(input_error, match="PSLD_Guider: input 'model'.*eps or v prediction"):
        bridge.check_model(x0, "PSLD_Guider")
    v_prediction = run_node(node_classes["ModelSamplingDiscrete"], model=model, sampling="v_prediction",
                            zsnr=False)[0]
    bridge.check_model(v_prediction, "PSLD_Guider")
