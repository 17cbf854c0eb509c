"""PSLD_Sampler, PSLD_Guider and PSLD_PosteriorSampler on the real ComfyUI host (pack loaded by ComfyUI's loader,
nodes run under torch.inference_mode()), with the tiny random SD1.5 checkpoint at 64 x 64 px and few steps."""
import math

import pytest
import torch

from conftest import SIZE, run_node

DISPLAY_NAMES = {"PSLD_Sampler": "PSLD Sampler", "PSLD_Guider": "PSLD Guider",
                 "PSLD_PosteriorSampler": "PSLD Posterior Sampler"}


@pytest.fixture(scope="module")
def N(node_classes):
    return node_classes


@pytest.fixture(scope="module")
def inpainting(make_operator, degrade, sd15, node_classes):
    """A box-inpainting problem whose answer the tiny decoder can produce: y = A D(z*) for a random latent z*."""
    vae = sd15[2]
    operator = make_operator("box_inpaint")
    with torch.inference_mode():
        target = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(7))
        truth = run_node(node_classes["VAEDecode"], vae=vae,
                         samples={"samples": sd15[0].model.process_latent_out(target)})[0]
    return operator, degrade(truth, operator)


def composable(N, sd15, prompts, operator, measurement, *, seed, steps=2, cfg=1.0, eta=0.0, loss=None,
               width=SIZE, height=SIZE, batch=1, guider=None):
    """RandomNoise + BasicScheduler + PSLD_Guider + PSLD_PosteriorSampler + EmptyLatentImage -> SamplerCustomAdvanced,
    every node called as ComfyUI calls it. Returns SamplerCustomAdvanced's (output, denoised_output)."""
    model, _, vae = sd15
    noise = run_node(N["RandomNoise"], noise_seed=seed)[0]
    sigmas = run_node(N["BasicScheduler"], model=model, scheduler="ddim_uniform", steps=steps, denoise=1.0)[0]
    if guider is None:
        guider = run_node(N["PSLD_Guider"], model=model, vae=vae, positive=prompts[0], negative=prompts[1],
                          cfg=cfg)[0]
    inputs = dict(operator=operator, measurement=measurement, eta=eta)
    if loss is not None:
        inputs["loss"] = loss
    sampler = run_node(N["PSLD_PosteriorSampler"], **inputs)[0]
    latent = run_node(N["EmptyLatentImage"], width=width, height=height, batch_size=batch)[0]
    return run_node(N["SamplerCustomAdvanced"], noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                    latent_image=latent)


def residual(operator, image, measurement):
    """||A x - y|| with x, y given as ComfyUI IMAGEs ([-1, 1] units, as PSLD measures it)."""
    x = image.movedim(-1, 1) * 2 - 1
    y = measurement.movedim(-1, 1) * 2 - 1
    return float((operator.operator.forward(x) - y).norm())


# ------------------------------------------------------------------------------------------------ schema

@pytest.mark.parametrize("node_id", sorted(DISPLAY_NAMES))
def test_schema_ids_category_description_and_tooltips(N, comfy, node_id):
    cls = N[node_id]
    schema = cls.GET_SCHEMA()
    assert schema.node_id == node_id and schema.category == "image/restoration/PSLD"
    assert schema.description and comfy.NODE_DISPLAY_NAME_MAPPINGS[node_id] == DISPLAY_NAMES[node_id]
    info = cls.INPUT_TYPES()
    inputs = {**info["required"], **info.get("optional", {})}
    for name, spec in inputs.items():
        assert spec[1].get("tooltip"), f"{node_id} input {name} has no tooltip"
    for output in schema.outputs:
        assert output.tooltip, f"{node_id} output {output.display_name} has no tooltip"


def test_schema_sockets_and_defaults(N):
    import comfy.samplers
    from comfy_api.latest import io

    sampler = N["PSLD_Sampler"]
    info = sampler.INPUT_TYPES()
    assert list(info["required"]) == ["model", "vae", "positive", "negative", "operator", "measurement", "seed",
                                      "steps", "cfg", "eta", "scheduler"]
    assert list(info["optional"]) == ["loss", "memory"]
    for node_id in ("PSLD_Sampler", "PSLD_Guider"):
        # optional and last: API prompts saved without it still validate, UI widget values keep their places
        memory = N[node_id].INPUT_TYPES()["optional"]["memory"]
        assert list(N[node_id].INPUT_TYPES()["optional"])[-1] == "memory"
        assert list(memory[1].get("options") or memory[0]) == ["auto", "fast", "low"]
        assert memory[1]["default"] == "auto"
    assert info["required"]["operator"][0] == "PSLD_LINEAR_OPERATOR" and info["optional"]["loss"][0] == "PSLD_LOSS"
    assert info["required"]["seed"][1]["control_after_generate"] is True
    assert info["required"]["steps"][1]["default"] == 50 and "1000" in info["required"]["steps"][1]["tooltip"]
    scheduler = info["required"]["scheduler"]  # ("COMBO", {"options": [...]}) on 0.30, ([...], {...}) on 0.3.75
    assert list(scheduler[1].get("options") or scheduler[0]) == list(comfy.samplers.SCHEDULER_NAMES)
    assert info["required"]["scheduler"][1]["default"] == "ddim_uniform"
    assert [o.get_io_type() for o in sampler.GET_SCHEMA().outputs] == ["LATENT", "IMAGE"]
    assert [o.get_io_type() for o in N["PSLD_Guider"].GET_SCHEMA().outputs] == ["GUIDER"]
    posterior = N["PSLD_PosteriorSampler"]
    assert [o.get_io_type() for o in posterior.GET_SCHEMA().outputs] == ["SAMPLER"]
    assert list(posterior.INPUT_TYPES()["required"]) == ["operator", "measurement", "eta"]
    for node_id in ("PSLD_Sampler", "PSLD_PosteriorSampler"):  # they report per-step residuals to the browser
        assert io.Hidden.unique_id in N[node_id].GET_SCHEMA().hidden


# ------------------------------------------------------------------------------------------------ end to end

def test_guidance_makes_the_sample_consistent_with_the_measurement(psld_sample, make_loss, inpainting, pack_module,
                                                                   sd15):
    """Same seed, same steps: PSLD's result explains the measurement much better than plain DDIM (omega = gamma =
    0) does. Measured on the decoder output PSLD works with (unclamped), and on the node's IMAGE output (clamped to
    0..1 by VAEDecode, which hides part of the gain). Random networks: the gain is modest but deterministic."""
    operator, measurement = inpainting
    guided_latent, guided_image = psld_sample(operator, measurement, seed=3, loss=make_loss(omega=1.0, gamma=0.1))
    plain_latent, plain_image = psld_sample(operator, measurement, seed=3, loss=make_loss(omega=0.0, gamma=0.0))
    bridge = pack_module("nodes.comfy_bridge")
    with torch.inference_mode():
        decoder = bridge.DifferentiableVAE(sd15[2], sd15[0].get_model_object("latent_format"), "test")
        import comfy.model_management
        comfy.model_management.load_models_gpu([decoder.patcher])
        process_in = sd15[0].model.process_latent_in
        raw = [decoder.decode(process_in(lat["samples"])) for lat in (guided_latent, plain_latent)]
    y = measurement.movedim(-1, 1) * 2 - 1
    guided_raw, plain_raw = (float((operator.operator.forward(x) - y).norm()) for x in raw)
    assert guided_raw < 0.75 * plain_raw  # measured 0.65 (2 steps)
    assert residual(operator, guided_image, measurement) < 0.85 * residual(operator, plain_image, measurement)
    assert guided_image.shape == (1, SIZE, SIZE, 3) and torch.isfinite(guided_image).all()


def test_image_output_is_the_vae_decode_of_the_latent_output(psld_sample, inpainting, N, sd15):
    latent, image = psld_sample(*inpainting, seed=1)
    assert latent["samples"].shape == (1, 4, SIZE // 8, SIZE // 8)
    assert torch.equal(image, run_node(N["VAEDecode"], vae=sd15[2], samples=latent)[0])


def test_composable_path_gives_the_all_in_one_result(N, sd15, prompts, psld_sample, inpainting):
    """PSLD_Guider + PSLD_PosteriorSampler through core SamplerCustomAdvanced = PSLD_Sampler (same seed, eta > 0
    so the seeded DDIM noise is compared too)."""
    operator, measurement = inpainting
    latent, _ = psld_sample(operator, measurement, seed=11, eta=0.5, cfg=2.0)
    output, denoised = composable(N, sd15, prompts, operator, measurement, seed=11, eta=0.5, cfg=2.0)
    assert torch.equal(output["samples"], latent["samples"])
    assert denoised["samples"].shape == latent["samples"].shape


def test_memory_modes_give_the_same_result(N, sd15, prompts, psld_sample, make_loss, inpainting, caplog):
    """low recomputes the activations fast stores: the same samples up to float rounding, on both sampling paths
    (cfg 2: conditional and unconditional UNet passes); auto says in the log which one it picked."""
    import logging

    results = {m: psld_sample(*inpainting, seed=3, steps=3, cfg=2.0, memory=m)[0]["samples"]
               for m in ("fast", "low")}
    assert torch.allclose(results["low"], results["fast"], rtol=1e-5, atol=1e-5)
    plain = psld_sample(*inpainting, seed=3, steps=3, cfg=2.0, loss=make_loss(omega=0.0, gamma=0.0))[0]["samples"]
    assert (results["fast"] - plain).abs().max() > 1e-3  # the guidance the two modes agree on is there
    guider = run_node(N["PSLD_Guider"], model=sd15[0], vae=sd15[2], positive=prompts[0], negative=prompts[1],
                      cfg=2.0, memory="low")[0]
    composed = composable(N, sd15, prompts, *inpainting, seed=3, steps=3, cfg=2.0, guider=guider)[0]["samples"]
    assert torch.allclose(composed, results["fast"], rtol=1e-5, atol=1e-5)
    with caplog.at_level(logging.INFO):
        auto = psld_sample(*inpainting, seed=3, steps=3, cfg=2.0)[0]["samples"]
    assert "PSLD_Sampler: memory 'auto' chose 'fast'" in caplog.text  # a few MiB at 64 px
    assert torch.equal(auto, results["fast"])


def test_same_seed_same_result_other_seed_other_result(psld_sample, inpainting):
    first = psld_sample(*inpainting, seed=5, eta=0.5)[0]["samples"]
    again = psld_sample(*inpainting, seed=5, eta=0.5)[0]["samples"]
    other = psld_sample(*inpainting, seed=6, eta=0.5)[0]["samples"]
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_one_measurement_serves_a_batch_of_samples(N, sd15, prompts, inpainting):
    output, _ = composable(N, sd15, prompts, *inpainting, seed=2, batch=2, steps=1)
    samples = output["samples"]
    assert samples.shape[0] == 2 and torch.isfinite(samples).all()
    assert not torch.allclose(samples[0], samples[1])  # different noise per batch item


def test_ksampler_output_is_bit_identical_before_and_after_psld(N, sd15, prompts, psld_sample, inpainting):
    """The user's MODEL and VAE stay untouched: a plain KSampler + VAEDecode gives the same bits after PSLD ran."""
    model, _, vae = sd15

    def plain_run():
        latent = run_node(N["EmptyLatentImage"], width=SIZE, height=SIZE, batch_size=1)[0]
        samples = run_node(N["KSampler"], model=model, seed=4, steps=2, cfg=3.0, sampler_name="euler",
                           scheduler="normal", positive=prompts[0], negative=prompts[1], latent_image=latent,
                           denoise=1.0)[0]
        return samples["samples"], run_node(N["VAEDecode"], vae=vae, samples=samples)[0]

    before = plain_run()
    psld_sample(*inpainting, seed=0)
    composable(N, sd15, prompts, *inpainting, seed=0)
    after = plain_run()
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_super_resolution_from_a_small_measurement(make_operator, degrade, photo, psld_sample):
    operator = make_operator("super_resolution", sr_scale="4")
    measurement = degrade(photo, operator)
    assert measurement.shape == (1, SIZE // 4, SIZE // 4, 3)
    latent, image = psld_sample(operator, measurement, steps=1)
    assert image.shape == (1, SIZE, SIZE, 3) and torch.isfinite(latent["samples"]).all()


# ------------------------------------------------------------------------------------------------ interrupt

def test_cancel_stops_within_one_step_and_is_not_swallowed(psld_sample, inpainting):
    """ComfyUI's cancel button: the interrupt raised at the next step boundary (or earlier, inside the UNet) leaves
    the node as InterruptProcessingException (Exception on 0.3.75, BaseException on 0.30), not as another error."""
    import comfy.model_management
    import comfy.utils

    seen = []

    def hook(value, total, preview, node_id=None):
        seen.append(value)
        comfy.model_management.interrupt_current_processing(True)

    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            psld_sample(*inpainting, steps=20)
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
        comfy.model_management.interrupt_current_processing(False)
    assert seen == [1]  # step 1 of 20 finished, step 2 never did


# ------------------------------------------------------------------------------------------------ bad inputs

def raises_input_error(error_type, node_id, input_name, *fragments):
    pattern = f"{node_id}: input '{input_name}':" + "".join(f"(?s:.*){f}" for f in fragments)
    return pytest.raises(error_type, match=pattern)


def test_measurement_of_the_wrong_size(input_error, psld_sample, make_operator, inpainting, N):
    operator, measurement = inpainting
    with raises_input_error(input_error, "PSLD_Sampler", "measurement", "expects a 64x64 measurement"):
        psld_sample(operator, measurement[:, :32, :32])
    sr = make_operator("super_resolution", sr_scale="4")  # a 64 px image has a 16 px measurement, not 20 px
    with raises_input_error(input_error, "PSLD_Sampler", "measurement", "16x16"):
        psld_sample(sr, torch.rand(1, 20, 20, 3))
    with raises_input_error(input_error, "PSLD_PosteriorSampler", "measurement", "NaN"):
        run_node(N["PSLD_PosteriorSampler"], operator=operator, measurement=measurement * math.nan, eta=0.0)


def test_latent_not_matching_the_operator(input_error, N, sd15, prompts, inpainting, make_operator):
    operator, measurement = inpainting
    with raises_input_error(input_error, "PSLD_PosteriorSampler", "operator", "latent is 12x8", "width 64"):
        composable(N, sd15, prompts, operator, measurement, seed=0, width=96)
    mask = torch.zeros(1, SIZE, SIZE)
    mask[:, 16:40, 16:40] = 1.0
    masked = make_operator("mask_inpaint", mask=mask)  # a 64 px mask, sampled into a 96 px latent
    with raises_input_error(input_error, "PSLD_PosteriorSampler", "operator", "acts on 64x64"):
        composable(N, sd15, prompts, masked, measurement, seed=0, height=96)


def test_operator_size_the_vae_cannot_encode(input_error, psld_sample, pack_module):
    """A custom operator for a 60 px image: not a multiple of the VAE's factor 8."""
    factory = pack_module("nodes.operator_factory")
    identity = pack_module("psld.operators").Identity()
    spec = factory.OperatorSpec(task="custom", operator=identity, height=60, width=64)
    with raises_input_error(input_error, "PSLD_Sampler", "operator", "multiples of 8"):
        psld_sample(spec, torch.rand(1, 60, 64, 3))


def test_batch_mismatch(input_error, N, sd15, prompts, inpainting):
    operator, measurement = inpainting
    two = torch.cat([measurement, measurement])
    with raises_input_error(input_error, "PSLD_PosteriorSampler", "measurement", "2 images", "latent batch has 3"):
        composable(N, sd15, prompts, operator, two, seed=0, batch=3)


def test_a_guider_without_vae(input_error, N, sd15, prompts, inpainting):
    core = run_node(N["CFGGuider"], model=sd15[0], positive=prompts[0], negative=prompts[1], cfg=1.0)[0]
    with raises_input_error(input_error, "PSLD_PosteriorSampler", "guider", "connect a PSLD_Guider"):
        composable(N, sd15, prompts, *inpainting, seed=0, guider=core)


def test_divergence_becomes_advice_to_lower_the_weights(input_error, psld_sample, make_loss, inpainting):
    huge = make_loss(omega=1e38, gamma=0.0)  # the node's widget stops at 100; execute checks only finiteness
    with raises_input_error(input_error, "PSLD_Sampler", "loss", "diverged", "Lower omega and gamma"):
        psld_sample(*inpainting, loss=huge)


def test_flow_model_is_refused_before_any_work(input_error, N, sd15, prompts, psld_sample, inpainting):
    flow = run_node(N["ModelSamplingSD3"], model=sd15[0], shift=3.0)[0]
    with raises_input_error(input_error, "PSLD_Sampler", "model", r"flow models \(SD3, Flux\) are not supported"):
        psld_sample(*inpainting, model=flow)
    with raises_input_error(input_error, "PSLD_Guider", "model", "not supported yet"):
        run_node(N["PSLD_Guider"], model=flow, vae=sd15[2], positive=prompts[0], negative=prompts[1], cfg=1.0)


def test_wrong_objects_and_values_on_inputs(input_error, psld_sample, inpainting, N, sd15, prompts):
    operator, measurement = inpainting
    with raises_input_error(input_error, "PSLD_Sampler", "operator", "PSLD_LinearOperator"):
        psld_sample(measurement, measurement)
    with raises_input_error(input_error, "PSLD_Sampler", "loss", "PSLD_GluingLoss"):
        psld_sample(operator, measurement, loss=operator)
    with raises_input_error(input_error, "PSLD_Sampler", "eta", "eta=2"):
        psld_sample(operator, measurement, eta=2.0)
    with raises_input_error(input_error, "PSLD_Sampler", "steps", "steps=0"):
        psld_sample(operator, measurement, steps=0)
    with raises_input_error(input_error, "PSLD_Sampler", "scheduler", "unknown"):
        psld_sample(operator, measurement, scheduler="ddim")
    with raises_input_error(input_error, "PSLD_Sampler", "vae", "VAE"):
        psld_sample(operator, measurement, vae=sd15[0])
    with raises_input_error(input_error, "PSLD_Guider", "positive", "CONDITIONING"):
        run_node(N["PSLD_Guider"], model=sd15[0], vae=sd15[2], positive=None, negative=prompts[1], cfg=1.0)
    latent, _ = psld_sample(operator, measurement, seed=0, steps=1)  # and the next run works
    assert torch.isfinite(latent["samples"]).all()


# ------------------------------------------------------------------------------------------------ server

@pytest.mark.server
def test_server_reports_steps_and_keeps_serving_after_a_bad_input(comfy_client, tiny_checkpoint):
    """Over HTTP, as the browser drives it: one psld.progress event per step tagged with the sampler's node id;
    a wrong measurement fails that prompt with the node, input and fix; the next prompt runs."""
    from helpers.comfy_client import PromptFailed

    def prompt(seed, measurement_size):
        return {
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_checkpoint}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["1", 1]}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
            "4": {"class_type": "EmptyImage", "inputs": {"width": measurement_size, "height": measurement_size,
                                                         "batch_size": 1, "color": 0x4080C0}},
            "5": {"class_type": "PSLD_LinearOperator",
                  "inputs": {"task": "denoise", "width": SIZE, "height": SIZE, "seed": 0, "projection": "paper",
                             "box_size": 0, "box_placement": "random", "drop_fraction": 0.0, "sr_scale": "4",
                             "sr_mode": "bicubic", "kernel_size": 0, "blur_sigma": 3.0, "motion_intensity": 0.5}},
            "7": {"class_type": "PSLD_Sampler",
                  "inputs": {"model": ["1", 0], "vae": ["1", 2], "positive": ["2", 0], "negative": ["3", 0],
                             "operator": ["5", 0], "measurement": ["4", 0], "seed": seed, "steps": 2, "cfg": 1.0,
                             "eta": 0.0, "scheduler": "ddim_uniform"}},
            "8": {"class_type": "PreviewImage", "inputs": {"images": ["7", 1]}},
        }

    result = comfy_client.run(prompt(seed=1, measurement_size=SIZE))
    steps = [event for event in result.custom_events("psld.progress") if event["node"] == "7"]
    assert [event["step"] for event in steps] == [0, 1] and all(event["total"] == 2 for event in steps)
    assert all(math.isfinite(v) for event in steps for values in event["values"].values() for v in values)
    assert result.outputs["8"]["images"]
    with pytest.raises(PromptFailed) as failure:
        comfy_client.run(prompt(seed=1, measurement_size=SIZE // 2))
    assert failure.value.data["node_type"] == "PSLD_Sampler"
    assert "PSLD_Sampler: input 'measurement'" in failure.value.data["exception_message"]
    assert "Fix:" in failure.value.data["exception_message"]
    assert comfy_client.run(prompt(seed=2, measurement_size=SIZE)).outputs["8"]["images"]
