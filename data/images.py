"""Opening images and computing the size the model actually sees (for reward rescaling)."""
from __future__ import annotations

from PIL import Image


def open_rgb(path: str) -> Image.Image:
    """The image as RGB, fully loaded (so the file handle is closed)."""
    with Image.open(path) as im:
        return im.convert("RGB")


def model_input_size(image_processor, width: int, height: int) -> tuple[int, int]:
    """(w, h) after the Qwen2-VL processor's ``smart_resize``: the pixels the model saw.

    Boxes a model writes are in these pixels; rewards rescale them to the original size."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
    ip = image_processor
    factor = ip.patch_size * ip.merge_size
    min_px = getattr(ip, "min_pixels", None) or ip.size.get("shortest_edge", 56 * 56)
    max_px = getattr(ip, "max_pixels", None) or ip.size.get("longest_edge", 28 * 28 * 1280)
    h, w = smart_resize(height, width, factor=factor, min_pixels=min_px, max_pixels=max_px)
    return w, h
