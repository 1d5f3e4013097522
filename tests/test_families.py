"""Model families: chosen from config.model_type (or named), with a clear error otherwise."""
import json

import pytest

from models import FAMILIES, family_of


def _config_dir(tmp_path, model_type):
    d = tmp_path / model_type
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps({"model_type": model_type}))
    return str(d)


def test_the_family_follows_the_model_type(tiny_model, tmp_path):
    assert family_of(tiny_model).name == "qwen2_5_vl"  # the embedded model
    assert family_of(_config_dir(tmp_path, "qwen2_vl")).name == "qwen2_vl"
    assert family_of(_config_dir(tmp_path, "qwen2_vl"), "qwen2_5_vl").name == "qwen2_5_vl"  # named wins
    for fam in FAMILIES.values():
        assert fam.vision_tokens and fam.vision_prefix and fam.coords == "input_pixels"


def test_an_unknown_family_says_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="model_type 'llava' belongs to no known family .* set model.family"):
        family_of(_config_dir(tmp_path, "llava"))
    with pytest.raises(ValueError, match="model.family='llava' is not a known family: qwen2_5_vl, qwen2_vl"):
        family_of("anything", "llava")


def test_the_embedded_tokenizer_knows_every_token_the_family_bans(tiny_model):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = [tok.convert_tokens_to_ids(t) for t in family_of(tiny_model).vision_tokens]
    assert None not in ids and tok.unk_token_id not in ids and len(set(ids)) == len(ids)
