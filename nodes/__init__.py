"""ComfyUI registration: one ComfyExtension listing every PSLD node (V3 schema, comfy_api.latest)."""
from comfy_api.latest import ComfyExtension, io

from .demo_image_node import NODES as DEMO_IMAGE_NODES
from .demo_nodes import NODES as DEMO_NODES
from .loss_nodes import NODES as LOSS_NODES
from .operator_nodes import NODES as OPERATOR_NODES
from . import routes  # noqa: F401  (registers POST /psld/preview when a ComfyUI server is running)
from .sampler_nodes import NODES as SAMPLER_NODES


class PSLDExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*OPERATOR_NODES, *LOSS_NODES, *SAMPLER_NODES, *DEMO_NODES, *DEMO_IMAGE_NODES]


async def comfy_entrypoint() -> PSLDExtension:
    return PSLDExtension()
