"""``glimpse-enhance score VIEWS_DIR --set VIEWSET_DIR [--json OUT]``: how consistent and sharp a set of views is.

VIEWS_DIR holds ``view_XX.png`` (XX = 00..N-1, RGB or RGBA) at any resolution with the set's aspect ratio: they are
resized to the set's native size. VIEWSET_DIR is a view set (see :mod:`glimpse.viewset`): its depth and cameras drive
the warps, its alpha is the foreground mask of both, and its own views are the reference for the sharpness gain and
the colour drift. Both are composited over the same grey before scoring. The JSON object of
:func:`glimpse.consistency.score_views` goes to stdout (and to OUT, written atomically), plus ``views_dir``,
``set_dir``. Without depth the consistency is null and a note says so, also on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .views import view_indices

# torch, Pillow and the scoring modules are imported when the command runs, so that building the CLI parser (and
# ``glimpse-enhance --help``) stays fast.

BACKGROUND = (0.5, 0.5, 0.5)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("score", help="score a set of views for multi-view consistency and sharpness",
                       description="Warp each view into its ring neighbours with the set's depth and cameras and "
                                   "report masked PSNR/MAE, colour drift and sharpness gain as one JSON object.")
    p.add_argument("views", metavar="VIEWS_DIR", type=Path, help="folder of view_XX.png to score (any resolution)")
    p.add_argument("--set", dest="viewset", required=True, type=Path, metavar="VIEWSET_DIR",
                   help="the view set the views belong to (cameras.json, view_XX.png, view_XX_depth.*)")
    p.add_argument("--json", dest="json_out", type=Path, metavar="OUT", help="also write the JSON object to OUT")
    p.add_argument("--depth-tolerance", type=float, default=0.01,
                   help="occlusion test: relative z difference allowed between a warped point and the other view's "
                        "depth (default 0.01)")
    return p


def _view_files(folder: Path) -> dict[int, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: VIEWS_DIR is not a folder")
    try:
        found = {i: folder / name for i, name in view_indices([p.name for p in folder.iterdir()]).items()}
    except ValueError as e:
        raise ValueError(f"{folder}: {e}") from None
    if not found:
        raise ValueError(f"{folder}: no view_XX.png files")
    return found


def load_views(folder: Path, n: int, size: tuple[int, int], canvas: tuple[int, int], offset: tuple[int, int],
               spec):
    """VIEWS_DIR's views as float [N,canvas_h,canvas_w,3]: composited over grey by the view-set loader (so views
    identical to the set's load bit for bit identically), resized to ``size`` (h, w) when they differ and placed at
    ``offset`` (top, left) of the set's canvas. ``spec`` is the set's ViewSetSpec. Errors name the file."""
    import torch

    from .resize import resize_to
    from .scan import ViewFiles, ViewSetSpec
    from .view_images import image_header
    from .viewset import load_view_set

    files = _view_files(folder)
    missing = [i for i in range(n) if i not in files]
    extra = sorted(i for i in files if i >= n)
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(f"view_{i:02d}.png" for i in missing))
        if extra:
            parts.append("no camera for " + ", ".join(files[i].name for i in extra))
        raise ValueError(f"{folder}: {len(files)} views but the set has {n} ({'; '.join(parts)})")
    h, w = size
    views = []
    for i in range(n):
        path = files[i]
        (ih, iw), has_alpha, _ = image_header(path, path.name)
        if views and (ih, iw) != views[0].size:
            raise ValueError(f"{path.name} is {iw}x{ih} but {views[0].image.name} is {views[0].size[1]}x"
                             f"{views[0].size[0]}: the views of VIEWS_DIR must share one size")
        if abs(iw * h - ih * w) > max(iw, ih, w, h):
            raise ValueError(f"{path.name} is {iw}x{ih} but the set's views are {w}x{h}: different aspect ratio")
        views.append(ViewFiles(i, path, None, None, (ih, iw), has_alpha))
    mine = ViewSetSpec(root=folder, kind="folder", views=tuple(views), cameras=spec.cameras, cameras_path=None,
                       depth_png_scale=None)
    loaded = load_view_set(mine, resolution=0, background=BACKGROUND)
    top, left, ch, cw = loaded.content
    rgb = loaded.images[:, top:top + ch, left:left + cw]
    rgb = resize_to(rgb, (h, w))
    out = torch.tensor(BACKGROUND).view(1, 1, 1, 3).repeat(n, *canvas, 1)
    out[:, offset[0]:offset[0] + h, offset[1]:offset[1] + w] = rgb
    return out


def score_folders(views_dir: Path, set_dir: Path, depth_tolerance: float = 0.01) -> dict:
    """Score VIEWS_DIR against the view set at SET_DIR (see the module docstring)."""
    from .consistency import score_views
    from .scan import scan_view_set
    from .viewset import load_view_set, views_without_depth

    spec = scan_view_set(set_dir)
    vs = load_view_set(spec, resolution=0, background=BACKGROUND)
    top, left, h, w = vs.content
    views = load_views(Path(views_dir), len(spec), (h, w), tuple(vs.images.shape[1:3]), (top, left), spec)
    notes = []
    no_depth = views_without_depth(vs.depth)
    depth = vs.depth
    if len(no_depth) == len(spec):
        depth = None
    elif no_depth:
        notes.append("views without depth (their pairs are not scored): "
                     + ", ".join(f"view_{i:02d}" for i in no_depth))
    out = score_views(views, vs.alpha, depth, vs.cameras, reference=vs.images, depth_tolerance=depth_tolerance)
    out["notes"] = notes + out["notes"]
    return {"views_dir": str(views_dir), "set_dir": str(set_dir), **out}


def main(args: argparse.Namespace) -> int:
    try:
        result = score_folders(args.views, args.viewset, args.depth_tolerance)
    except (FileNotFoundError, ValueError) as e:
        sys.stderr.write(f"glimpse-enhance score: error: {e}\n")
        return 2
    for note in result["notes"]:
        sys.stderr.write(f"glimpse-enhance score: {note}\n")
    text = json.dumps(result, allow_nan=False)
    if args.json_out is not None:
        from .files import atomic_write_json

        try:
            atomic_write_json(args.json_out, result)
        except OSError as e:
            sys.stderr.write(f"glimpse-enhance score: error: {e}\n")
            return 1
    sys.stdout.write(text + "\n")
    return 0
