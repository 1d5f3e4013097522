"""GLM-4.1V (``Glm4vForConditionalGeneration``): a Qwen2-VL-like layout (3D rotary positions from
``get_rope_index``, 14 px patches merged 2 x 2, a ``visual`` tower) with its own image tokens
(``<|begin_of_image|><|image|>...<|end_of_image|>``), learned absolute position embeddings in
the vision tower (interpolated to the image's grid), partial rotary embeddings in the language
model, and grounding answers on a 0-1000 grid.
"""
from __future__ import annotations

TOKENS = {"image_start_token": "<|begin_of_image|>", "image_end_token": "<|end_of_image|>",
          "image_token": "<|image|>", "video_start_token": "<|begin_of_video|>",
          "video_end_token": "<|end_of_video|>", "video_token": "<|video|>"}


def tiny_glm4v(dims, ids, vocab, rope_theta, tok, chat_template):
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration, Glm4vImageProcessor, Glm4vProcessor
    from transformers.models.glm4v.video_processing_glm4v import Glm4vVideoProcessor
    th, tl, tn, tk, ti, vh, vd, vn, vi = dims
    hd = th // tn  # half of each head is rotary (partial_rotary_factor 0.5), split into (t, h, w)
    config = Glm4vConfig(
        text_config=dict(vocab_size=vocab, hidden_size=th, intermediate_size=ti, num_hidden_layers=tl,
                         num_attention_heads=tn, num_key_value_heads=tk, max_position_embeddings=2048,
                         rms_norm_eps=1e-6, pad_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         tie_word_embeddings=False,
                         rope_parameters={"rope_type": "default", "rope_theta": rope_theta,
                                          "partial_rotary_factor": 0.5,
                                          "mrope_section": [hd // 16, hd * 3 // 32, hd * 3 // 32]}),
        vision_config=dict(depth=vd, hidden_size=vh, intermediate_size=vi, num_heads=vn, out_hidden_size=th,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, image_size=112),
        image_token_id=ids["<|image|>"], video_token_id=ids["<|video|>"],
        image_start_token_id=ids["<|begin_of_image|>"], image_end_token_id=ids["<|end_of_image|>"],
        video_start_token_id=ids["<|begin_of_video|>"], video_end_token_id=ids["<|end_of_video|>"],
        tie_word_embeddings=False)
    size = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 64}
    ip = Glm4vImageProcessor(size=size, patch_size=14, temporal_patch_size=2, merge_size=2)
    template = chat_template.replace("<|vision_start|><|image_pad|><|vision_end|>",
                                     "<|begin_of_image|><|image|><|end_of_image|>").replace(
        "<|vision_start|><|video_pad|><|vision_end|>", "<|begin_of_video|><|video|><|end_of_video|>")
    proc = Glm4vProcessor(image_processor=ip, tokenizer=tok, video_processor=Glm4vVideoProcessor(size=size),
                          chat_template=template)
    return Glm4vForConditionalGeneration(config), proc
