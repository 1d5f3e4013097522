"""Opening images: fully loaded as RGB, the file handle closed (engines, learner and report use it)."""
from __future__ import annotations

from PIL import Image


def open_rgb(path: str) -> Image.Image:
    """The image as RGB, fully loaded (so the file handle is closed)."""
    with Image.open(path) as im:
        return im.convert("RGB")
