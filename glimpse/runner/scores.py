"""The scores a finished run writes into its manifest: ``glimpse.consistency.score_views`` on OUT_DIR's views.

The enhanced ``view_XX.png`` files are compared with the set they came from, loaded at its native size: masks are
the set's alpha, depth and cameras give the cross-view warp consistency, and the input renders are the reference
(sharpness gain, colour shift). Enhanced views of another size are resized to the set's size first. Imported only
when a set is complete (torch).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..consistency import score_views
from ..viewset import load_view_set


def score_output(out_dir: Path, viewset: Path, views: list[int]) -> dict:
    vs = load_view_set(viewset, resolution=0)
    n, h, w = vs.images.shape[:3]
    if sorted(views) != list(range(n)):
        raise ValueError(f"{viewset} has {n} views but the output has views {views}")
    enhanced = []
    for i in range(n):
        with Image.open(Path(out_dir) / f"view_{i:02d}.png") as im:
            x = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)
        if tuple(x.shape[:2]) != (h, w):
            x = F.interpolate(x.permute(2, 0, 1)[None], size=(h, w), mode="bilinear", antialias=True,
                              align_corners=False)[0].permute(1, 2, 0).clamp(0, 1)
        enhanced.append(x)
    scores = score_views(torch.stack(enhanced), vs.alpha, vs.depth, vs.cameras, reference=vs.images)
    scores.pop("pairs", None)  # per-pair details stay out of the manifest; per_view keeps the per-view means
    return scores
