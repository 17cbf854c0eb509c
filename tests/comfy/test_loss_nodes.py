"""PSLD_GluingLoss on the real ComfyUI host (pack loaded by ComfyUI's loader), run under torch.inference_mode()."""
import dataclasses

import pytest
import torch

import conftest
from conftest import LOSS_DEFAULTS

H, W = 64, 96
OPERATOR_DEFAULTS = {**conftest.OPERATOR_DEFAULTS, "width": W, "height": H}


@pytest.fixture(scope="module")
def G(node_classes):
    return node_classes["PSLD_GluingLoss"]


@pytest.fixture(scope="module")
def L(node_classes):
    return node_classes["PSLD_LinearOperator"]


def make_loss(G, **settings):
    with torch.inference_mode():
        return G.execute(**{**LOSS_DEFAULTS, **settings}).result[0]


def make_operator(L, task, **settings):
    with torch.inference_mode():
        return L.execute(task=task, mask=None, **{**OPERATOR_DEFAULTS, **settings}).result[0]


def test_schema_has_id_category_description_and_tooltips(comfy, G):
    schema = G.GET_SCHEMA()
    assert schema.node_id == "PSLD_GluingLoss"
    assert schema.category == "image/restoration/PSLD"
    assert schema.description
    assert comfy.NODE_DISPLAY_NAME_MAPPINGS["PSLD_GluingLoss"] == "PSLD Gluing Loss"
    info = G.INPUT_TYPES()
    inputs = {**info["required"], **info.get("optional", {})}
    assert set(inputs) == set(LOSS_DEFAULTS)
    for name, (_, options) in inputs.items():
        assert options.get("tooltip"), f"input {name} has no tooltip"
        assert options["default"] == LOSS_DEFAULTS[name], name
    assert [o.get_io_type() for o in schema.outputs] == ["PSLD_LOSS"]
    assert all(o.tooltip for o in schema.outputs)
    assert info["required"]["variant"][1]["options"] == ["PSLD", "GML-DPS", "LDPS"]
    assert list(info["optional"]) == ["gradient"]  # optional and last: saved workflows and API prompts still load
    assert info["optional"]["gradient"][1]["options"] == ["full", "jacobian-free"]


def test_defaults_are_the_reference_weights_with_plain_norms(G, pack_module):
    settings = make_loss(G)
    assert isinstance(settings, pack_module("nodes.loss_settings").LossSettings)
    assert settings.loss == pack_module("psld.losses").PSLDLoss(omega=1.0, gamma=0.1, variant="PSLD", squared=False)
    assert settings.projection is None


@pytest.mark.parametrize("variant", ["PSLD", "GML-DPS", "LDPS"])
def test_inputs_map_onto_the_psld_loss(G, variant):
    settings = make_loss(G, omega=0.1, gamma=0.01, variant=variant, norm="squared", projection="exact",
                         fresh_noise=0.05, detach_gluing_target=True, gradient="jacobian-free")
    loss = settings.loss
    assert (loss.omega, loss.gamma, loss.variant, loss.squared) == (0.1, 0.01, variant, True)
    assert (loss.fresh_measurement_noise, loss.detach_gluing_target, loss.jacobian_free) == (0.05, True, True)
    assert not make_loss(G).loss.jacobian_free and "Jacobian-free" in loss.describe()
    assert settings.projection == "exact"
    assert loss.gluing_weight == (0.0 if variant == "LDPS" else 0.01)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.projection = "paper"
    with pytest.raises(dataclasses.FrozenInstanceError):
        loss.omega = 2.0


def test_projection_override_changes_the_gluing_image_not_the_operator(G, L, pack_module):
    resolve = pack_module("nodes.loss_settings").resolve_loss
    spec = make_operator(L, "super_resolution")
    x = torch.rand(1, 3, H, W) * 2 - 1
    y = torch.rand(1, 3, H // 4, W // 4) * 2 - 1
    loss, exact_spec = resolve(make_loss(G, projection="exact"), spec)
    assert exact_spec.operator.projection == "exact" and spec.operator.projection == "paper"
    assert (exact_spec.task, exact_spec.height, exact_spec.width) == (spec.task, spec.height, spec.width)
    paper_glue = spec.operator.project(x, y)
    exact_glue = exact_spec.operator.project(x, y)
    # exact projection: the glued image reproduces y exactly; the paper's nearest-upsampling one does not
    torch.testing.assert_close(exact_spec.operator.forward(exact_glue), y, atol=1e-4, rtol=0)
    assert float((spec.operator.forward(paper_glue) - y).abs().max()) > 1e-2
    _, same_spec = resolve(make_loss(G, projection="operator"), spec)
    assert same_spec is spec


def test_without_a_loss_the_sampler_gets_the_reference_weights_of_the_task(L, pack_module):
    resolve = pack_module("nodes.loss_settings").resolve_loss
    loss, spec = resolve(None, make_operator(L, "box_inpaint"))
    assert (loss.omega, loss.gamma) == (0.1, 0.01)  # reference run script for box inpainting
    loss, _ = resolve(None, make_operator(L, "super_resolution"))
    assert (loss.omega, loss.gamma) == (1.0, 0.1)


def test_loss_and_operator_work_together_in_the_psld_objective(G, L, pack_module):
    """The payloads as the sampler uses them: the objective is finite and LDPS skips the encoder."""
    objective = pack_module("psld.losses").psld_objective
    resolve = pack_module("nodes.loss_settings").resolve_loss
    spec = make_operator(L, "random_inpaint")
    x = torch.rand(2, 3, H, W) * 2 - 1
    y = spec.operator.forward(x)
    z = torch.randn(2, 4, H // 8, W // 8)

    def encode(image):  # a fixed linear 'encoder' to latent size, enough to exercise the gluing term
        return torch.nn.functional.avg_pool2d(image, 8).repeat(1, 2, 1, 1)[:, :4]

    loss, op_spec = resolve(make_loss(G), spec)
    total, residuals = objective(loss, op_spec.operator, y, z, x, encode)
    assert torch.isfinite(total) and set(residuals) == {"measurement", "gluing"}
    assert float(residuals["measurement"].abs().max()) < 1e-5  # x explains y exactly

    loss, op_spec = resolve(make_loss(G, variant="LDPS"), spec)
    total, residuals = objective(loss, op_spec.operator, y, z, x, encode=None)
    assert set(residuals) == {"measurement"}


@pytest.mark.parametrize("settings, input_name", [
    (dict(omega=-1.0), "omega"),
    (dict(gamma=float("nan")), "gamma"),
    (dict(fresh_noise=-0.05), "fresh_noise"),
    (dict(variant="DPS"), "variant"),
    (dict(norm="l1"), "norm"),
    (dict(projection="pinv"), "projection"),
])
def test_bad_inputs_raise_input_errors(G, pack_module, settings, input_name):
    error_type = pack_module("nodes.errors").PSLDInputError
    with pytest.raises(error_type) as caught:
        make_loss(G, **settings)
    message = str(caught.value)
    assert message.startswith(f"PSLD_GluingLoss: input '{input_name}'") and "Fix:" in message
