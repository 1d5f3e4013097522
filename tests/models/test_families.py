"""Model families: chosen from config.model_type (or named), with a clear error otherwise."""
import json

import pytest

from models import COORDS, FAMILIES, answer_frame, coords_of, family_of


def _config_dir(tmp_path, model_type):
    d = tmp_path / model_type
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps({"model_type": model_type}))
    return str(d)


def test_the_family_follows_the_model_type(tiny_model, tmp_path):
    assert family_of(tiny_model).name == "qwen2_5_vl"  # the embedded model
    assert family_of(_config_dir(tmp_path, "qwen2_vl")).name == "qwen2_vl"
    assert family_of(_config_dir(tmp_path, "qwen2_vl"), "qwen2_5_vl").name == "qwen2_5_vl"  # named wins
    assert family_of(_config_dir(tmp_path, "qwen3_vl")).name == "qwen3_vl"
    for fam in FAMILIES.values():
        assert fam.vision_tokens and fam.vision_prefix and fam.coords in COORDS
    assert [FAMILIES[f].coords for f in ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "glm4v", "internvl")] == \
        ["input_pixels"] * 2 + ["norm1000"] * 3
    assert family_of(_config_dir(tmp_path, "internvl")).name == "internvl"
    assert family_of(_config_dir(tmp_path, "glm4v")).name == "glm4v"


def test_an_unknown_family_says_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="model_type 'llava' belongs to no known family .* set model.family"):
        family_of(_config_dir(tmp_path, "llava"))
    with pytest.raises(ValueError, match="model.family='llava' is not a known family: glm4v, internvl, qwen2_5_vl, qwen2_vl, qwen3_vl"):
        family_of("anything", "llava")


def test_the_embedded_tokenizer_knows_every_token_the_family_bans(tiny_model):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = [tok.convert_tokens_to_ids(t) for t in family_of(tiny_model).vision_tokens]
    assert None not in ids and tok.unk_token_id not in ids and len(set(ids)) == len(ids)


def test_answer_frames_by_hand(tiny_model):
    from transformers import AutoProcessor
    ip = AutoProcessor.from_pretrained(tiny_model).image_processor  # 28 px per token, 56..28*28*64 pixels
    assert answer_frame("input_pixels", ip, 120, 128) == (112, 140)  # 120 -> 4 x 28, 128 -> 5 x 28
    assert answer_frame("norm1000", ip, 120, 128) == (1000, 1000)
    assert coords_of(FAMILIES["qwen3_vl"]) == "norm1000" and coords_of(FAMILIES["qwen3_vl"], "input_pixels") == "input_pixels"
    with pytest.raises(ValueError, match="model.coords='pixels': use auto or one of input_pixels, norm1000"):
        coords_of(FAMILIES["qwen2_vl"], "pixels")


@pytest.mark.parametrize("coords", sorted(COORDS))
def test_one_data_file_trains_every_convention(tiny_model, coords):
    """The ground truth written as a supervised answer in a convention's frame, scored by the
    rewards with that frame, is the ground truth: the same rows serve every family."""
    from transformers import AutoProcessor
    from data.prompts import sft_answer
    from rewards import REGISTRY
    ip = AutoProcessor.from_pretrained(tiny_model).image_processor
    size, gt = (120, 128), "[13, 20, 61, 97]"
    frame = answer_frame(coords, ip, *size)
    answer = sft_answer("rec", "region this sentence describes: the red circle.", gt, size, frame)
    box = json.loads(answer.split('"bbox_2d": ')[1].split("}")[0])
    by_hand = {"input_pixels": [12, 22, 57, 106], "norm1000": [108, 156, 508, 758]}  # x*112/120, y*140/128 | x*1000/120, y*1000/128
    assert box == by_hand[coords]
    assert REGISTRY["rec_iou"](answer, gt, image_size=size, input_size=frame) > 0.95  # rounding to integers only
    ovd = sft_answer("ovd", "objects: [circle]", json.dumps([{"bbox_2d": json.loads(gt), "label": "circle"}]), size, frame)
    assert REGISTRY["ovd_map"](ovd, json.dumps([{"bbox_2d": json.loads(gt), "label": "circle"}]), image_size=size,
                               input_size=frame) == pytest.approx(1.0)


def test_builtin_names():
    from data.tiny_model import parse_builtin
    assert parse_builtin("builtin:tiny-qwen2-vl") == ("qwen2_vl", {"scene": "default", "tasks": "rec:ovd", "steps": 400})
    assert parse_builtin("builtin:tiny-qwen2.5-vl-random") == ("qwen2_5_vl", None)
    assert parse_builtin("builtin:tiny-qwen3-vl-one-shape") == ("qwen3_vl", {"scene": "one_shape", "tasks": "rec", "steps": 1200})
    family, recipe = parse_builtin("builtin:tiny-qwen3-vl-one-shape-ovd")
    assert family == "qwen3_vl" and recipe["scene"] == "one_shape" and recipe["tasks"] == "ovd"
    assert parse_builtin("Qwen/Qwen3-VL-2B-Instruct") is None
    with pytest.raises(ValueError, match="'builtin:tiny-llava' is not an embedded model: use one of builtin:tiny, "
                                         "builtin:tiny-qwen2.5-vl, builtin:tiny-qwen2-vl, builtin:tiny-qwen3-vl, builtin:tiny-glm4v, "
                                         "builtin:tiny-internvl"):
        parse_builtin("builtin:tiny-llava")


def test_tiny_qwen3_vl_position_embeddings_start_at_unit_scale(tmp_path):
    """The testbed's localisation lever (bench.probe): the tiny Qwen3-VL's learned absolute
    position embeddings are drawn at std 1, far above the generic init of every other weight."""
    from safetensors.torch import load_file

    from data.tiny_model import build
    weights = load_file(str(build(tmp_path / "q3", seed=0, family="qwen3_vl") / "model.safetensors"))
    pos = next(v for k, v in weights.items() if k.endswith("visual.pos_embed.weight"))
    patch = next(v for k, v in weights.items() if k.endswith("visual.patch_embed.proj.weight"))
    assert pos.shape[0] == 64 and 0.9 < float(pos.float().std()) < 1.1
    assert float(patch.float().std()) < 0.05


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl", "glm4v", "internvl"])
def test_prompt_length_counts_every_familys_image_tokens_as_its_processor(family, tmp_path):
    """data.prepare.PromptLength: after two measured sizes, the processor's own count plus the
    learned constant gives what the processor itself expands an image to, at any size."""
    import random

    from transformers import AutoProcessor

    from data.prepare import PromptLength
    from data.tiny_model import build
    count = PromptLength(AutoProcessor.from_pretrained(build(tmp_path / family, seed=0, family=family)))
    rng = random.Random(0)
    sizes = [(rng.randint(20, 1500), rng.randint(20, 1500)) for _ in range(12)]
    assert [count.image(s) for s in sizes] == [count.measure(s) for s in sizes]
    assert count.offset is not None  # the fast path was taken for all but the first two
