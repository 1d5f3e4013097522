"""Opening images: fully loaded as RGB, the file handle closed (engines, learner and report use it)."""
from __future__ import annotations

from PIL import Image


def open_rgb(path: str) -> Image.Image:
    """The image as RGB, fully loaded (so the file handle is closed)."""
    with Image.open(path) as im:
        return im.convert("RGB")


def open_rgb_or_none(path: str | None) -> Image.Image | None:
    """``open_rgb``, or None when there is no path or the file cannot be read (galleries skip it)."""
    if not path:
        return None
    try:
        return open_rgb(path)
    except OSError:
        return None
