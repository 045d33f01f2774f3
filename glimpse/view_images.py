"""View and mask images: their header (size, alpha, a pixel limit), and their pixels as 8-bit RGBA (numpy, Pillow).

- A view or strip image may have at most :data:`MAX_VIEW_PIXELS` pixels (about 151 Mpx, e.g. 12288x12288): above it
  the header check fails naming the file, before anything is decoded.
- 16-bit PNGs are converted to 8 bits by value (65535 -> 255): RGB(A) and grey, views and masks alike.
- :func:`read_rgba` can box-reduce a view by an integer factor right after decoding (Pillow's ``reduce``, alpha
  weighted), so a huge view loaded for a small working size never exists as a full-size float array.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_VIEW_PIXELS = 12288 * 12288
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I")  # 16-bit grey PNGs (and 32-bit integer grey)


def image_header(path: Path, what: str, limit: int = MAX_VIEW_PIXELS) -> tuple[tuple[int, int], bool, str]:
    """(height, width), has alpha, mode; checks the whole PNG stream (CRCs, truncation) without keeping pixels."""
    try:
        with Image.open(path) as im:
            size, mode = (im.height, im.width), im.mode
            has_alpha = mode in _ALPHA_MODES or "transparency" in im.info
            if size[0] * size[1] > limit:
                raise ValueError(f"{what}: {path} is {size[1]}x{size[0]} ({size[0] * size[1] / 1e6:.0f} Mpx), above "
                                 f"the limit of {limit / 1e6:.0f} Mpx per image; downscale it")
            im.verify()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: {path} does not exist") from None
    except Image.DecompressionBombError as e:
        raise ValueError(f"{what}: {path} is above the limit of {limit / 1e6:.0f} Mpx per image ({e}); "
                         "downscale it") from None
    except ValueError as e:
        if str(e).startswith(what):
            raise
        raise ValueError(f"{what}: {path} is not a readable image (truncated or corrupt: {e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{what}: {path} is not a readable image (truncated or corrupt: {e})") from None
    return size, has_alpha, mode


def _eight_bit(im: Image.Image, mode: str) -> Image.Image:
    """``im`` in the 8-bit ``mode`` ("RGBA", "RGB" or "L"); wide grey is scaled by value, not clipped."""
    if im.mode in _WIDE_MODES:
        v = np.asarray(im).astype(np.float32)
        im = Image.fromarray(np.clip(v * (255.0 / 65535.0) + 0.5, 0, 255).astype(np.uint8), "L")
    return im if im.mode == mode else im.convert(mode)


def _decode(path: Path, mode: str, reduce: int, what: str) -> Image.Image:
    """The decoded image in ``mode``; ValueError naming the file when its pixel data does not decode (a header can
    be intact while the data is not)."""
    try:
        with Image.open(path) as im:
            im.load()
            im = _eight_bit(im, mode)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{what}: {path} cannot be decoded ({e})") from None
    return im.reduce(reduce) if reduce > 1 else im


def read_rgba(image: Path, mask: Path | None = None, has_alpha: bool = True, reduce: int = 1,
              what: str = "view") -> np.ndarray:
    """uint8 [H,W,4] of one view: alpha from the image, else from its mask file, else opaque; box-reduced by
    ``reduce`` (an integer factor) right after decoding. ``what`` names the view in errors."""
    if has_alpha:
        return np.asarray(_decode(image, "RGBA", reduce, what))
    rgb = np.asarray(_decode(image, "RGB", reduce, what))
    a = np.asarray(_decode(mask, "L", reduce, what)) if mask is not None else np.full(rgb.shape[:2], 255, np.uint8)
    return np.concatenate([rgb, a[..., None]], axis=-1)


def alpha_is_empty(image: Path, mask: Path | None = None, has_alpha: bool = True, what: str = "view") -> bool:
    """True when the view's alpha (its own, else its mask's) is 0 everywhere: nothing of it is visible."""
    if not has_alpha and mask is None:
        return False
    im = _decode(image, "RGBA", 1, what).getchannel("A") if has_alpha else _decode(mask, "L", 1, what)
    return im.getextrema()[1] == 0


def reduce_factor(size: tuple[int, int], target: tuple[int, int], above: int = 4096 * 4096) -> int:
    """The integer box-reduction a view of ``size`` (h, w) can take before being resized to ``target``: views of more
    than ``above`` pixels keep at least twice the target size on each side; smaller ones are not reduced."""
    if size[0] * size[1] <= above:
        return 1
    return max(1, min(size[0] // (2 * target[0]), size[1] // (2 * target[1])))
