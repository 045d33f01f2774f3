"""The V3 node layer: thin classes that declare sockets and call into ``glimpse``."""
from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from .prompt import GlimpsePrompt


class GlimpseExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [
            GlimpsePrompt,
        ]
