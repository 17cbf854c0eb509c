"""comfyui-psld: PSLD posterior sampling for linear inverse problems, as ComfyUI nodes.

ComfyUI loads this folder as a package. Registration is V3 only (``comfy_entrypoint``);
there is deliberately no NODE_CLASS_MAPPINGS here, because ComfyUI would then ignore the entrypoint.
"""
from .nodes import comfy_entrypoint

WEB_DIRECTORY = "./web"

__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
