"""Model families: what differs between vision-language model families, in one place.

    fam = family_of(model_path)            # from the model's config.model_type
    fam = family_of(model_path, "qwen2_vl")  # or named (``model.family`` in the config)

A family says which special tokens must never be sampled, which parameters form the vision
tower (frozen with ``model.freeze_vision_tower``), how grounding answers give coordinates, and how
the learner gets the multimodal rotary positions of a prompt, and how to build a tiny random
model of it (``builtin:tiny-<family>``). Adding a family is a small module (like ``models/qwen.py``)
and one entry in ``FAMILIES``; nothing else in the project names a family's tokens or modules.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

from models import glm, internvl, qwen

# How a family's grounding answers give box coordinates (``Family.coords``; ``model.coords`` overrides):
COORDS = {
    "input_pixels": "absolute pixels of the image as the processor resized it for the model",
    "norm1000": "a 0-1000 grid over the image, whatever its size (x * 1000 / width, y * 1000 / height)",
}


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # config.model_type values that select it
    vision_tokens: tuple[str, ...]  # special tokens a completion may never contain
    vision_prefix: str  # parameter names containing this belong to the vision tower
    coords: str  # how grounding answers give boxes: a key of COORDS
    rope_index: Callable | None = None  # model -> positions function (None: the model computes its own)
    vlm_r1_module: str = ""  # the VLM-R1 plug-in (vlm_modules/) it matches
    tiny: Callable | None = None  # (dims, ids, vocab, rope_theta, tokenizer, chat template) -> (model, processor)
    tokens: dict = field(default_factory=dict)  # the tiny build's own named special tokens (Qwen's are built in)
    vision: Callable = qwen.grid_vision  # (processor, images) -> (vision model inputs, image tokens they fill)

    def vision_inputs(self, processor) -> Callable:
        """``images -> (vision model inputs, image tokens expected)`` for this family's processor."""
        return functools.partial(self.vision, processor)


FAMILIES = {
    "qwen2_5_vl": Family("qwen2_5_vl", ("qwen2_5_vl",), qwen.VISION_TOKENS, "visual", "input_pixels",
                         qwen.rope_index, "qwen_module.py", qwen.tiny_qwen2_5_vl),
    # Qwen2-VL was pretrained on a 0-1000 grid, but VLM-R1 trains it with the Qwen2.5-VL module
    # (input pixels); model.coords=norm1000 gives the native convention
    "qwen2_vl": Family("qwen2_vl", ("qwen2_vl",), qwen.VISION_TOKENS, "visual", "input_pixels",
                       qwen.rope_index, "qwen_module.py", qwen.tiny_qwen2_vl),
    "qwen3_vl": Family("qwen3_vl", ("qwen3_vl",), qwen.VISION_TOKENS, "visual", "norm1000",
                       qwen.rope_index, "qwen_module.py", qwen.tiny_qwen3_vl),
    "glm4v": Family("glm4v", ("glm4v",), tuple(glm.TOKENS.values()), "visual", "norm1000",
                    qwen.rope_index, "glm_module.py", glm.tiny_glm4v, glm.TOKENS),
    "internvl": Family("internvl", ("internvl",), tuple(internvl.TOKENS.values()), "vision_tower", "norm1000",
                       None, "internvl_module.py", internvl.tiny_internvl, internvl.TOKENS, internvl.tile_vision),
}


def answer_frame(coords: str, image_processor, width: int, height: int) -> tuple[int, int]:
    """(w, h) of the frame a model writes box coordinates in, for an image of ``width x height``:
    the resized input (``input_pixels``) or the 1000 x 1000 grid (``norm1000``). Rewards map
    boxes from this frame to the original image, and supervised answers are written in it.

    >>> answer_frame("norm1000", None, 640, 480)
    (1000, 1000)
    """
    if coords == "norm1000":
        return 1000, 1000
    if coords == "input_pixels":
        if not hasattr(image_processor, "merge_size"):
            raise ValueError(f"model.coords=input_pixels needs a processor that resizes onto a patch grid "
                             f"(Qwen2/2.5-VL's); {type(image_processor).__name__} does not: use norm1000")
        return model_input_size(image_processor, width, height)
    raise ValueError(f"model.coords={coords!r}: use one of {', '.join(COORDS)} (or auto: the family's own)")


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


def coords_of(family: "Family", override: str | None = "auto") -> str:
    """The coordinate convention in use: ``model.coords`` if set, else the family's."""
    if override and override != "auto":
        if override not in COORDS:
            raise ValueError(f"model.coords={override!r}: use auto or one of {', '.join(COORDS)}")
        return override
    return family.coords


def family_named(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"model.family={name!r} is not a known family: {', '.join(sorted(FAMILIES))} (or auto)")
    return FAMILIES[name]


def family_of(model_path: str, name: str | None = "auto", trust_remote_code: bool = False) -> Family:
    """The family of the model at ``model_path`` (a local directory or a hub id), or the one named."""
    if name and name != "auto":
        return family_named(name)
    from transformers import AutoConfig
    model_type = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code).model_type
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    raise ValueError(f"{model_path}: model_type {model_type!r} belongs to no known family "
                     f"({', '.join(sorted(FAMILIES))}); set model.family to one that matches its tokens and "
                     f"vision tower, or add the family to models/__init__.py")
