"""Data carried between nodes: the values behind GLIMPSE_DEPTH, GLIMPSE_CAMERAS and GLIMPSE_SETTINGS."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the runner reads Settings without importing torch
    import torch


@dataclass(frozen=True)
class DepthMaps:
    """Metric camera-space z per view. ``depth`` is float32 [N,H,W] with 0 where ``valid`` (bool [N,H,W]) is False."""

    depth: torch.Tensor
    valid: torch.Tensor
    # The depth range of the WHOLE view set (robust near/far over every view), fixed before any view selection so a
    # chunk of views gets the same hint grey levels as the full set. None: compute it from these maps.
    near: float | None = None
    far: float | None = None

    def select(self, views: slice | torch.Tensor) -> DepthMaps:
        """The maps of these views only, keeping the whole set's near/far."""
        return DepthMaps(depth=self.depth[views], valid=self.valid[views], near=self.near, far=self.far)

    @staticmethod
    def cat(chunks: list[DepthMaps]) -> DepthMaps:
        """The maps of several chunks as one, in chunk order; the set-wide near/far is kept when every chunk carries
        the same one (the chunks of one set do), else dropped (None: computed from the joined maps)."""
        import torch  # here, not at the top: the runner imports this module without torch

        if not chunks:
            raise ValueError("no depth chunks to join")
        ranges = {(d.near, d.far) for d in chunks}
        near, far = ranges.pop() if len(ranges) == 1 else (None, None)
        return DepthMaps(depth=torch.cat([d.depth for d in chunks]), valid=torch.cat([d.valid for d in chunks]),
                         near=near, far=far)


@dataclass(frozen=True)
class Cameras:
    """Pinhole cameras of a view set in the OpenCV convention, pixel centres at +0.5.

    ``intrinsics`` float64 [N,3,3] is for ``image_size`` (height, width); ``world_to_camera`` float64 [N,3,4];
    ``camera_to_world`` float64 [N,4,4]; ``azimuth_deg`` / ``elevation_deg`` float64 [N] (world +z up).
    Every tensor field has one row per view (``glimpse.cameras.select_cameras`` / ``cat_cameras`` take and join
    rows); every other field describes the whole set.
    """

    intrinsics: torch.Tensor
    world_to_camera: torch.Tensor
    camera_to_world: torch.Tensor
    azimuth_deg: torch.Tensor
    elevation_deg: torch.Tensor
    image_size: tuple[int, int]
    # Index of each view in its set on disk (int64 [N]); a selection of views keeps its original names (view_07).
    view_index: torch.Tensor | None = None
    # The set's anchor views (set indices; empty: none), for each view here the anchors from nearest to farthest
    # viewing direction (int64 [N, A], -1 padded: an anchor is not its own neighbour), and an identity of the loaded
    # set (its files and load parameters) that stays the same across the chunks and prompts of one set.
    anchors: tuple[int, ...] = ()
    anchor_order: torch.Tensor | None = None
    set_key: str | None = None

    def __len__(self) -> int:
        return self.intrinsics.shape[0]


@dataclass(frozen=True)
class Settings:
    """What a MemoryPreset hands to the other nodes (GLIMPSE_SETTINGS)."""

    preset: str
    steps: int
    strength: float
    controlnet_strength: float
    resolution: int
    views_per_chunk: int
    tiled_vae: bool
    vae_tile_size: int
    unet_dtype: str
    controlnet_size: str
    cross_view: str = "off"  # off | extended | correspondence (glimpse.crossview)
    anchor_count: int = 4
    anchor_neighbours: int = 2
