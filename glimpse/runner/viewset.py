"""View sets as the runner sees them: finding the sets under VIEWSET_DIR, and checking each one here, before any
server starts, with the library's own header-only scan (:mod:`glimpse.scan`), so errors name the user's files.

What travels to a server is exactly what the scan accepted (:meth:`glimpse.scan.ViewSetSpec.files`): the views, their
depth and mask files and cameras.json; stray files and sub-folders (e.g. the sample set's clean/) stay behind. A file
of the set that is a link leading out of the set's folder is refused, named, and never uploaded.
"""
from __future__ import annotations

from pathlib import Path

from ..scan import ViewSetSpec, scan_images, scan_view_set
from ..views import VIEW_RE


class ViewSetError(ValueError):
    """A folder that is not a usable view set."""


def is_viewset(folder: Path) -> bool:
    folder = Path(folder)
    return folder.is_dir() and (any(VIEW_RE.match(p.name) for p in folder.iterdir())
                                or (folder / "cameras.json").is_file())


def find_viewsets(folder: Path) -> list[Path]:
    """``folder`` itself when it is a view set, else its sub-folders that are (a folder of sets), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ViewSetError(f"view set folder {folder} does not exist or is not a folder")
    if is_viewset(folder):
        return [folder]
    sets = sorted(p for p in folder.iterdir() if is_viewset(p))
    if not sets:
        raise ViewSetError(f"{folder} is neither a view set (view_XX.png + cameras.json) nor a folder of view sets")
    return sets


def check_set(folder: Path, images_only: bool = False) -> ViewSetSpec:
    """The set's scan (``images_only``: its view images and masks, for image workflows that need no cameras or depth);
    ViewSetError naming the file on anything the server would refuse, and on links that leave the set's folder."""
    try:
        return scan_images(folder, contained=True) if images_only else scan_view_set(folder, contained=True)
    except (OSError, ValueError) as e:
        raise ViewSetError(str(e)) from None
