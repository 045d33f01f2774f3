"""Time ConfidenceBlend and the consistency score on 16 views at 1024x1024 (the fox sample upsampled).

    python bench/blend_score.py [--size 1024] [--repeat 5] [--threads N]

Prints the best wall and CPU time of each of: blend with depth at the image size, blend with the set's 256 px depth,
score (enhanced + reference views, depth at the image size).
"""
import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from glimpse.blend import confidence_blend
from glimpse.consistency import score_views
from glimpse.types import DepthMaps
from glimpse.viewset import load_view_set

FOX = Path(__file__).resolve().parents[1] / "examples" / "fox"


def best(fn, repeat):
    walls, cpus = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    vs = load_view_set(FOX, resolution=0)
    s = args.size
    images = F.interpolate(vs.images.permute(0, 3, 1, 2), size=(s, s), mode="bilinear").permute(0, 2, 3, 1)
    images = images.contiguous()
    alpha = F.interpolate(vs.alpha[:, None], size=(s, s), mode="bilinear")[:, 0].contiguous()
    z = F.interpolate(vs.depth.depth[:, None], size=(s, s), mode="nearest")[:, 0]
    depth = DepthMaps(depth=z, valid=z > 0)
    enhanced = images.flip(-1).contiguous()
    cases = {
        f"blend 16x{s} (depth {s})": lambda: confidence_blend(images, enhanced, alpha, depth, vs.cameras),
        f"blend 16x{s} (depth 256)": lambda: confidence_blend(images, enhanced, alpha, vs.depth, vs.cameras),
        f"score 16x{s} (+reference)": lambda: score_views(enhanced, alpha, depth, vs.cameras, reference=images),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for name, fn in cases.items():
        wall, cpu = best(fn, args.repeat)
        print(f"{name}: best wall {wall:.3f} s, best CPU {cpu:.3f} s")


if __name__ == "__main__":
    main()
