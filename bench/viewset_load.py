"""Time loading + hinting a 16-view set at 1024x1024 (the issue's target: under 2 s on the CPU).

Builds the set once in a temporary folder from ../shared/data/sample_views/512 upscaled to 1024 (RGBA PNGs and
float32 .npz depth, as a renderer would write them), then times scan + load + hint at working resolution 1024, best of
``--repeat`` runs, with the given torch thread counts. Prints one line per thread count: wall time per stage, and
the process CPU time of the whole (with one thread, the wall time the work takes on an otherwise idle core).

    python bench/viewset_load.py [--threads 1 2] [--repeat 3]
"""
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from glimpse.depth import depth_hint
from glimpse.viewset import load_view_set, scan_view_set

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "sample_views" / "512"


def build(folder: Path, size: int = 1024) -> None:
    for i in range(16):
        Image.open(SAMPLE / f"view_{i:02d}.png").resize((size, size), Image.BICUBIC).save(folder / f"view_{i:02d}.png")
        d = np.load(SAMPLE / f"view_{i:02d}_depth.npz")["depth"]
        d = np.repeat(np.repeat(d, size // d.shape[0], 0), size // d.shape[1], 1)
        np.savez_compressed(folder / f"view_{i:02d}_depth.npz", depth=d.astype(np.float32))
    cams = json.loads((SAMPLE / "cameras.json").read_text())
    (folder / "cameras.json").write_text(json.dumps(cams))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build(folder)
        for threads in args.threads:
            torch.set_num_threads(threads)
            best = {}
            for _ in range(args.repeat):
                c0, t0 = time.process_time(), time.perf_counter()
                spec = scan_view_set(folder)
                t1 = time.perf_counter()
                vs = load_view_set(spec, resolution=1024)
                t2 = time.perf_counter()
                hint = depth_hint(vs.depth)
                t3, c3 = time.perf_counter(), time.process_time()
                for k, v in (("scan", t1 - t0), ("load", t2 - t1), ("hint", t3 - t2), ("total", t3 - t0),
                             ("cpu", c3 - c0)):
                    best[k] = min(best.get(k, float("inf")), v)
            assert hint.shape == (16, 1024, 1024, 3)
            print(f"threads={threads}: 16 views 1024x1024 scan {best['scan']:.3f} s, load {best['load']:.3f} s, "
                  f"hint {best['hint']:.3f} s, total {best['total']:.3f} s wall, {best['cpu']:.3f} s CPU "
                  f"(best of {args.repeat}; load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
