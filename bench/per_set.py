"""Our own per-set work, pure library on the CPU (no ComfyUI, no models): what LoadViewSet, DepthControlNet's hint,
ConfidenceBlend and ViewConsistency cost for one set, by default 16 views at 1024x1024 (issue 8's target: under 1 s
in all). Formerly bench/viewset_load.py (scan + load + hint) and bench/blend_score.py (blend + score).

    python -m bench.per_set [--size 1024] [--views 16] [--repeat 3] [--threads N] [--out F.json]

The set is the sample (samples/fox) written at the size as a renderer would (bench.common.build_view_set). Each
part is timed ``--repeat`` times; the JSON holds the best wall time and its CPU time per part:

- ``scan``: header-only validation of the folder; ``load``: decode, composite, letterbox at the working size;
- ``hint``: the set's depth hint (one near/far for the whole set);
- ``blend``: confidence_blend with depth at the image size (enhanced = the views mirrored, so that it has work);
- ``blend_depth_256``: the same with the set's native 256 px depth;
- ``score``: score_views of the blended views with the renders as reference.

Then each part runs once more under bench.work.WorkCounter (``work``: FLOPs, element writes, bytes, ops per part; the
loader's decode threads are not seen), which the benchmark sets against the models' work.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .common import build_view_set, write_json
from .work import WorkCounter


def _best(fn, repeat: int) -> tuple[float, float, object]:
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    i = min(range(len(walls)), key=walls.__getitem__)
    return walls[i], cpus[i], out


def run(size: int = 1024, views: int = 16, repeat: int = 3, folder: Path | None = None) -> dict:
    """Time the parts on ``views`` views at ``size`` px; returns {part: {"wall_s", "cpu_s"}} plus the total."""
    from glimpse.blend import confidence_blend
    from glimpse.consistency import score_views
    from glimpse.depth import depth_hint
    from glimpse.types import DepthMaps
    from glimpse.scan import scan_view_set
    from glimpse.viewset import load_view_set

    with tempfile.TemporaryDirectory(prefix="glimpse-bench-set-") as tmp:
        folder = build_view_set(Path(tmp) / f"fox_{size}", size, views) if folder is None else folder
        parts, state = {}, {}

        def scan():
            state["spec"] = scan_view_set(folder)

        def load():
            state["vs"] = load_view_set(state["spec"], resolution=size)

        def hint():
            return depth_hint(state["vs"].depth)

        for name, fn in (("scan", scan), ("load", load), ("hint", hint)):
            wall, cpu, _ = _best(fn, repeat)
            parts[name] = {"wall_s": wall, "cpu_s": cpu}
        vs = state["vs"]
        images, alpha, depth, cameras = vs.images, vs.alpha, vs.depth, vs.cameras
        enhanced = images.flip(-2).contiguous()
        native = load_view_set(folder, resolution=0) if size != 256 else vs
        z = F.interpolate(native.depth.depth[:, None], size=(256, 256), mode="nearest")[:, 0]
        depth_256 = DepthMaps(depth=z, valid=z > 0)
        wall, cpu, blended = _best(lambda: confidence_blend(images, enhanced, alpha, depth, cameras), repeat)
        parts["blend"] = {"wall_s": wall, "cpu_s": cpu}
        wall, cpu, _ = _best(lambda: confidence_blend(images, enhanced, alpha, depth_256, cameras), repeat)
        parts["blend_depth_256"] = {"wall_s": wall, "cpu_s": cpu}
        wall, cpu, _ = _best(lambda: score_views(blended[0], alpha, depth, cameras, reference=images), repeat)
        parts["score"] = {"wall_s": wall, "cpu_s": cpu}
        counter = WorkCounter()
        with counter:
            for name, fn in (("scan", scan), ("load", load), ("hint", hint),
                             ("blend", lambda: confidence_blend(images, enhanced, alpha, depth, cameras)),
                             ("score", lambda: score_views(blended[0], alpha, depth, cameras, reference=images))):
                with counter.phase(name):
                    fn()
    total = sum(parts[k]["wall_s"] for k in ("scan", "load", "hint", "blend", "score"))
    return {"views": views, "size": size, "repeat": repeat, "threads": torch.get_num_threads(), "parts": parts,
            "total_s": total, "target_s": 1.0, "met": total < 1.0 if size == 1024 and views == 16 else None,
            "work": {k: w.as_dict() for k, w in counter.by_phase.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.per_set")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--views", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.size, args.views, args.repeat)
    for name, p in result["parts"].items():
        print(f"{name:16s} {p['wall_s']:.3f} s wall, {p['cpu_s']:.3f} s CPU")
    print(f"total (scan+load+hint+blend+score) {result['total_s']:.3f} s for {args.views} views at {args.size} px "
          f"({result['threads']} threads)")
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
