"""The Qwen families: Qwen2-VL, Qwen2.5-VL and Qwen3-VL.

All three share the tokens (``<|vision_start|><|image_pad|>...<|vision_end|>``), the chat format
and the vision tower's parameter prefix (``visual``), and take their multimodal rotary positions
from the model's ``get_rope_index``. They differ in the vision tower (Qwen2-VL: 14 px patches,
no windows; Qwen2.5-VL: windowed attention; Qwen3-VL: 16 px patches, learned absolute position
embeddings, deepstack features fed to early language layers), in the language model (Qwen3-VL:
q/k norms, interleaved mrope) and in how grounding answers give coordinates (Qwen3-VL: a
0-1000 grid; see ``models.COORDS``).

``tiny_*`` build a random model of the family at a given size with the embedded tokenizer, for
the tests and the embedded testbed (``data.tiny_model``).
"""
from __future__ import annotations

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def rope_index(model):
    """``(ids, mm_token_type_ids, image_grid_thw) -> [3, 1, P]`` mrope positions, or None."""
    fn = getattr(getattr(model, "model", None), "get_rope_index", None)
    if fn is None:
        return None
    return lambda ids, types, grid: fn(ids, mm_token_type_ids=types, image_grid_thw=grid)[0]


def grid_vision(processor, images) -> tuple[dict, int]:
    """Vision inputs on a patch grid (``pixel_values``, ``image_grid_thw``) and the image tokens
    they fill: one per ``merge_size x merge_size`` patches."""
    ip = processor.image_processor
    v = ip(images=images, return_tensors="pt")
    grid = v["image_grid_thw"]
    return {"pixel_values": v["pixel_values"], "image_grid_thw": grid}, int(grid.prod(-1).sum()) // ip.merge_size ** 2


def _text(dims, ids, vocab, rope_theta, qwen3=False) -> dict:
    th, tl, tn, tk, ti = dims[:5]
    hd = th // tn  # head dim; mrope splits half of it into (t, h, w) sections
    rope = {"rope_type": "default", "rope_theta": rope_theta, "mrope_section": [hd // 8, hd * 3 // 16, hd * 3 // 16]}
    extra = {}
    if qwen3:  # interleaved mrope sections; Qwen3's head dim is a setting of its own (default 128)
        rope["mrope_interleaved"], extra["head_dim"] = True, hd
    return dict(vocab_size=vocab, hidden_size=th, intermediate_size=ti, num_hidden_layers=tl, num_attention_heads=tn,
                num_key_value_heads=tk, max_position_embeddings=2048, rms_norm_eps=1e-6,
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                tie_word_embeddings=False, rope_parameters=rope, **extra)


def _special(ids) -> dict:
    return dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                tie_word_embeddings=False)


def _image_processor(patch: int, max_tokens: int = 64, **kw):
    from transformers import Qwen2VLImageProcessor
    side = patch * 2  # one language-model token per (2 x 2 patches)
    return Qwen2VLImageProcessor(min_pixels=(2 * side) ** 2, max_pixels=side * side * max_tokens, patch_size=patch,
                                 temporal_patch_size=2, merge_size=2, **kw)


def _patch14_processor(processor_cls, tok, chat_template):
    """The processor of a Qwen2/2.5-VL tiny build: 14 px patches, video on the image's pixel budget."""
    from transformers import Qwen2VLVideoProcessor
    ip = _image_processor(14)
    video = Qwen2VLVideoProcessor(min_pixels=ip.size["shortest_edge"], max_pixels=ip.size["longest_edge"])
    return processor_cls(image_processor=ip, tokenizer=tok, video_processor=video, chat_template=chat_template)


def tiny_qwen2_5_vl(dims, ids, vocab, rope_theta, tok, chat_template):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    vh, vd, vn, vi = dims[5:]
    config = Qwen2_5_VLConfig(
        text_config=_text(dims, ids, vocab, rope_theta),
        vision_config=dict(depth=vd, hidden_size=vh, intermediate_size=vi, num_heads=vn, out_hidden_size=dims[0],
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[vd - 1]), **_special(ids))
    return Qwen2_5_VLForConditionalGeneration(config), _patch14_processor(Qwen2_5_VLProcessor, tok, chat_template)


def tiny_qwen2_vl(dims, ids, vocab, rope_theta, tok, chat_template):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    vh, vd, vn, vi = dims[5:]
    config = Qwen2VLConfig(
        text_config=_text(dims, ids, vocab, rope_theta),
        vision_config=dict(depth=vd, embed_dim=vh, mlp_ratio=max(1, vi // vh), num_heads=vn, hidden_size=dims[0],
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2), **_special(ids))
    return Qwen2VLForConditionalGeneration(config), _patch14_processor(Qwen2VLProcessor, tok, chat_template)


def tiny_qwen3_vl(dims, ids, vocab, rope_theta, tok, chat_template):
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    vh, vd, vn, vi = dims[5:]
    config = Qwen3VLConfig(
        text_config=_text(dims, ids, vocab, rope_theta, qwen3=True),
        # learned absolute position embeddings on an 8 x 8 grid of patches (bilinearly interpolated
        # to the image's grid, as Qwen3-VL's 48 x 48 are); deepstack: the first block's features
        # also enter the first language layer
        vision_config=dict(depth=vd, hidden_size=vh, intermediate_size=vi, num_heads=vn, out_hidden_size=dims[0],
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                           deepstack_visual_indexes=[0]), **_special(ids))
    ip = _image_processor(16, image_mean=[0.5] * 3, image_std=[0.5] * 3)  # Qwen3-VL's normalisation
    video = Qwen3VLVideoProcessor(size=dict(ip.size))
    proc = Qwen3VLProcessor(image_processor=ip, tokenizer=tok, video_processor=video, chat_template=chat_template)
    model = Qwen3VLForConditionalGeneration(config)
    # The position embeddings at unit scale instead of the generic 0.02: next to the random patch
    # projection they then say where each patch is from the first step on. A one-shape REC scene
    # (84 px, python -m bench.probe) reached 0.97 accuracy after 1500 supervised steps this way,
    # against 0.60 at 0.02 (and Qwen2.5-VL, with no absolute positions, 0.11).
    torch.nn.init.normal_(model.model.visual.pos_embed.weight, std=1.0)
    return model, proc
