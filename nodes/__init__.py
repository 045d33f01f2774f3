"""The V3 node layer: thin classes that declare sockets and call into ``glimpse``."""
from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from .blend import ConfidenceBlend
from .consistency import ViewConsistency
from .crossview import CrossViewAttention
from .depth import DepthControlNet
from .depth_estimator import register_depth_estimator_folder
from .lightning import GlimpseCheckpointLoader, LightningLoader
from .memory import MemoryPreset, MemoryReport
from .noise import ViewNoise
from .prompt import GlimpsePrompt, register_prompt_folder
from .save import SaveViewSet
from .vae import GlimpseVAEDecode, GlimpseVAEEncode
from .viewset import LoadViewSet


class GlimpseExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # Called once when ComfyUI registers the pack (v0.3.64 never calls on_load): register the pack's folders.
        register_prompt_folder()
        register_depth_estimator_folder()
        return [
            GlimpsePrompt,
            LightningLoader,
            GlimpseCheckpointLoader,
            MemoryPreset,
            MemoryReport,
            LoadViewSet,
            DepthControlNet,
            CrossViewAttention,
            ViewNoise,
            ConfidenceBlend,
            ViewConsistency,
            SaveViewSet,
            GlimpseVAEEncode,
            GlimpseVAEDecode,
        ]
