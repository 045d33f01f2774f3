"""ViewNoise: the NOISE of SamplerCustomAdvanced, drawn per view from the set's seed and the view's index."""
from __future__ import annotations

import torch

from comfy_api.latest import io

from ..glimpse.noise import view_noise
from ..glimpse.types import Cameras as CamerasValue
from .types import Cameras


class _ViewNoise:
    """ComfyUI's NOISE interface (``seed``, ``generate_noise(latent)``) with one generator per view."""

    def __init__(self, seed: int, views: list[int]):
        self.seed = seed
        self.views = views

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        samples = input_latent["samples"]
        if samples.shape[0] != len(self.views):
            raise ValueError(f"ViewNoise: the latent holds {samples.shape[0]} views but its cameras "
                             f"{len(self.views)}; wire the cameras of the same Load View Set chunk")
        return view_noise(samples.shape, self.seed, self.views, dtype=samples.dtype)


class ViewNoise(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GlimpseViewNoise",
            display_name="View Noise (Glimpse)",
            category="Glimpse",
            description="Initial noise for SamplerCustomAdvanced that depends only on the seed and each view's index "
                        "in its set, so a view samples the same whatever chunk or preset it runs in (core RandomNoise "
                        "draws by batch position).",
            inputs=[
                io.Int.Input("noise_seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="The set's seed, shared by every view; each view's noise is drawn from (seed, "
                                     "view index)."),
                Cameras.Input("cameras", tooltip="Load View Set's cameras of the same chunk: they carry each view's "
                                                 "index in the set."),
            ],
            outputs=[io.Noise.Output(display_name="NOISE", tooltip="Per-view noise for SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, noise_seed: int, cameras: CamerasValue) -> io.NodeOutput:
        views = cameras.view_index.tolist() if cameras.view_index is not None else list(range(len(cameras)))
        return io.NodeOutput(_ViewNoise(int(noise_seed), views))
