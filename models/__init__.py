"""Model families: what differs between vision-language model families, in one place.

    fam = family_of(model_path)            # from the model's config.model_type
    fam = family_of(model_path, "qwen2_vl")  # or named (``model.family`` in the config)

A family says which special tokens must never be sampled, which parameters form the vision
tower (frozen with ``model.freeze_vision_tower``), how grounding answers give coordinates, and how
the learner gets the multimodal rotary positions of a prompt. Adding a family is one entry in
``FAMILIES``; nothing else in the project names a family's tokens or modules.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

QWEN_VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def _qwen_rope_index(model) -> Callable | None:
    """``(ids, mm_token_type_ids, image_grid_thw) -> [3, 1, P]`` mrope positions (Qwen2/2.5-VL)."""
    fn = getattr(getattr(model, "model", None), "get_rope_index", None)
    if fn is None:
        return None
    return lambda ids, types, grid: fn(ids, mm_token_type_ids=types, image_grid_thw=grid)[0]


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # config.model_type values that select it
    vision_tokens: tuple[str, ...]  # special tokens a completion may never contain
    vision_prefix: str  # parameter names containing this belong to the vision tower
    coords: str  # grounding answers: "input_pixels" (absolute, in the processor's resized image)
    rope_index: Callable | None = None  # model -> positions function (None: the model computes its own)
    vlm_r1_module: str = ""  # the VLM-R1 plug-in (vlm_modules/) it matches


FAMILIES = {
    "qwen2_5_vl": Family("qwen2_5_vl", ("qwen2_5_vl",), QWEN_VISION_TOKENS, "visual", "input_pixels",
                         _qwen_rope_index, "qwen_module.py"),
    "qwen2_vl": Family("qwen2_vl", ("qwen2_vl",), QWEN_VISION_TOKENS, "visual", "input_pixels",
                       _qwen_rope_index, "qwen_module.py"),
}


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
