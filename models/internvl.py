"""InternVL in the Hugging Face format (``InternVLForConditionalGeneration``: an InternViT vision
tower with learned absolute position embeddings, a pixel-shuffle projector, a Qwen2 language model
with 1D rotary positions). Images are resized to fixed tiles (``GotOcr2ImageProcessor``), each
tile filling ``image_seq_length`` tokens between ``<img>`` and ``</img>``; grounding answers use a
0-1000 grid. The learner scores its completions unshared (no 3D positions to share a prompt by).
"""
from __future__ import annotations

TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
          "video_token": "<video>"}
TILE = 112  # the tiny build's tile side: (112 / 14)^2 patches, pixel-shuffled by 2 -> 16 tokens a tile


def tile_vision(processor, images) -> tuple[dict, int]:
    """Vision inputs as tiles (``pixel_values`` of every tile) and the image tokens they fill."""
    v = processor.image_processor(images=images, return_tensors="pt")
    return {"pixel_values": v["pixel_values"]}, int(v["num_patches"].sum()) * processor.image_seq_length


def tiny_internvl(dims, ids, vocab, rope_theta, tok, chat_template):
    from transformers import GotOcr2ImageProcessor, InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor
    from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor
    th, tl, tn, tk, ti, vh, vd, vn, vi = dims
    config = InternVLConfig(
        text_config=dict(model_type="qwen2", vocab_size=vocab, hidden_size=th, intermediate_size=ti,
                         num_hidden_layers=tl, num_attention_heads=tn, num_key_value_heads=tk,
                         max_position_embeddings=2048, rms_norm_eps=1e-6, bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False,
                         rope_parameters={"rope_type": "default", "rope_theta": rope_theta}),
        vision_config=dict(hidden_size=vh, num_hidden_layers=vd, num_attention_heads=vn, intermediate_size=vi,
                           image_size=[TILE, TILE], patch_size=[14, 14]),
        downsample_ratio=0.5, image_seq_length=(TILE // 14) ** 2 // 4, image_token_id=ids["<IMG_CONTEXT>"],
        tie_word_embeddings=False)
    ip = GotOcr2ImageProcessor(size={"height": TILE, "width": TILE}, crop_to_patches=False)
    template = chat_template.replace("<|vision_start|><|image_pad|><|vision_end|>", "<IMG_CONTEXT>").replace(
        "<|vision_start|><|video_pad|><|vision_end|>", "<video>")
    proc = InternVLProcessor(image_processor=ip, tokenizer=tok, chat_template=template,
                             video_processor=InternVLVideoProcessor(size={"height": TILE, "width": TILE}),
                             image_seq_length=config.image_seq_length)
    return InternVLForConditionalGeneration(config), proc
