"""The server layer stands on a real main.py: it answers, lists our nodes, and runs a plain txt2img prompt on the
tiny checkpoint."""
import numpy as np

import helpers.comfy_server


def txt2img(checkpoint: str, size: int = 64, steps: int = 2, seed: int = 1) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                  "latent_image": ["4", 0], "seed": seed, "steps": steps, "cfg": 7.0,
                                                  "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }


def test_object_info_lists_our_nodes(comfy_client):
    info = comfy_client.get_json("/object_info")
    ours = {k for k in info if k.startswith("PSLD_")}
    assert ours, "no PSLD_ node in /object_info"
    for node_id in ours:
        assert info[node_id]["category"].startswith("image/restoration/PSLD")
        assert info[node_id]["python_module"].endswith("comfyui-psld")


def test_no_import_failure_in_the_log(comfy_server):
    log = comfy_server.log_path.read_text(errors="replace")
    assert not helpers.comfy_server.IMPORT_FAILURE.search(log)


def test_txt2img_prompt_runs_on_the_tiny_checkpoint(comfy_client, tiny_checkpoint):
    result = comfy_client.run(txt2img(tiny_checkpoint))
    assert result.status.get("status_str") == "success"
    image = comfy_client.image(result.outputs["7"]["images"][0])
    assert image.shape == (64, 64, 3)
    assert np.isfinite(image).all()
