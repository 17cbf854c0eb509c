"""The in-process layer stands on the real host: our pack is loaded by ComfyUI's own loader, and the tiny
generated checkpoint loads as an SD1.5 epsilon-prediction model."""
import torch

import helpers.hosts


def test_pack_loaded_by_comfyui_loader(comfy):
    psld_ids = sorted(k for k in comfy.NODE_CLASS_MAPPINGS if k.startswith("PSLD_"))
    assert psld_ids, "no PSLD_ node registered"
    module_dirs = {str(p) for p in comfy.LOADED_MODULE_DIRS.values()}
    assert any(p.endswith("comfyui-psld") for p in module_dirs), module_dirs
    # every node of ours is a V3 node registered through comfy_entrypoint, in the pack's category
    for node_id in psld_ids:
        node_class = comfy.NODE_CLASS_MAPPINGS[node_id]
        schema = node_class.GET_SCHEMA()
        assert schema.node_id == node_id
        assert schema.category.startswith("image/restoration/PSLD"), (node_id, schema.category)


def test_host_is_the_selected_comfyui_version(comfy):
    import comfyui_version

    expected = {"current": "0.30.0", "floor": "0.3.75"}[helpers.hosts.selected_host()]
    assert comfyui_version.__version__ == expected


def test_tiny_checkpoint_loads_as_sd15_eps(comfy, tiny_models):
    import comfy.model_base
    import comfy.sd

    with torch.inference_mode():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(tiny_models["checkpoint_path"]))[:4]
    assert type(model.model.model_config).__name__ == "SD15"
    assert model.model.model_type == comfy.model_base.ModelType.EPS
    assert clip is not None and vae is not None
