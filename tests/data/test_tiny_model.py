"""The embedded tiny Qwen2.5-VL: loads offline in transformers, is deterministic, counts image tokens."""
import hashlib
import json
import pathlib

import pytest
import torch
from PIL import Image


def test_loads_and_generates_text_for_an_image_prompt(tiny_model, synthetic):
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from data.prompts import prompt_text
    proc = AutoProcessor.from_pretrained(tiny_model)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model).eval()
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    n_params = sum(p.numel() for p in model.parameters())
    assert 200_000 < n_params < 5_000_000
    row = json.loads(open(synthetic / "rec_train.jsonl").readline())
    text = prompt_text(proc, row["conversations"][0]["value"], 1, "rec")
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>" in text
    inputs = proc(text=[text], images=[Image.open(synthetic / row["image"]).convert("RGB")], return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=12, do_sample=True)
    new = out[0, inputs["input_ids"].shape[1]:]
    assert len(new) > 0 and len(proc.tokenizer.decode(new)) > 0


@pytest.mark.parametrize("size,tokens", [((112, 112), 16), ((120, 128), 20), ((56, 56), 4), ((224, 112), 32)])
def test_processor_gives_one_token_per_28px_patch(tiny_model, size, tokens):
    # 14 px patches merged 2x2: (W/28) x (H/28) tokens after rounding each side to a multiple of 28
    # (120 -> 112 = 4, 128 -> 140 = 5: 4 * 5 = 20)
    from transformers import AutoProcessor
    from models import model_input_size
    proc = AutoProcessor.from_pretrained(tiny_model)
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                                    add_generation_prompt=True, tokenize=False)
    ids = proc(text=[text], images=[Image.new("RGB", size, "white")], return_tensors="pt")["input_ids"][0]
    image_pad = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((ids == image_pad).sum()) == tokens
    w, h = model_input_size(proc.image_processor, *size)
    assert (w // 28) * (h // 28) == tokens


def test_build_is_deterministic_and_digits_are_single_tokens(tiny_model, tmp_path):
    from transformers import AutoTokenizer
    from data.tiny_model import build
    again = build(tmp_path / "again", seed=0)
    digest = lambda d: hashlib.sha256((pathlib.Path(d) / "model.safetensors").read_bytes()).hexdigest()  # noqa: E731
    assert digest(again) == digest(tiny_model)
    assert (pathlib.Path(again) / "tokenizer.json").read_text() == (pathlib.Path(tiny_model) / "tokenizer.json").read_text()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert tok.tokenize("[103, 48]") == ["[", "1", "0", "3", ",", "Ġ", "4", "8", "]"]
    for special in ("<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|vision_start|>"):
        assert len(tok.encode(special, add_special_tokens=False)) == 1


def test_model_path_resolution(tmp_path, monkeypatch):
    from data.tiny_model import BUILTIN_RANDOM, resolve_model_path
    assert resolve_model_path("/some/local/dir") == "/some/local/dir"
    assert resolve_model_path("Qwen/Qwen2.5-VL-3B-Instruct") == "Qwen/Qwen2.5-VL-3B-Instruct"
    monkeypatch.setenv("VLM_R1_RAY_CACHE", str(tmp_path))
    path = resolve_model_path(BUILTIN_RANDOM)
    assert pathlib.Path(path, "config.json").exists() and pathlib.Path(path).parent == tmp_path
    mtime = pathlib.Path(path, "model.safetensors").stat().st_mtime
    assert resolve_model_path(BUILTIN_RANDOM) == path  # cached: built once
    assert pathlib.Path(path, "model.safetensors").stat().st_mtime == mtime


def test_a_builtin_not_shipped_is_warm_started_by_its_recipe(tmp_path, monkeypatch):
    """A warm recipe with no shipped build (another family here) is built, then warm-started with the
    recipe's steps, scene and tasks, into the cache directory its name says."""
    from data import tiny_model
    calls = []

    def record(base, out, seed, steps, scene, tasks):  # the warm start itself is minutes: its call is what is checked
        calls.append((base.name, out.name, seed, steps, scene, tasks))
        return out
    monkeypatch.setenv("VLM_R1_RAY_CACHE", str(tmp_path))
    monkeypatch.setattr(tiny_model, "warm_start", record)
    path = tiny_model.resolve_model_path("builtin:tiny-glm4v-one-shape-ovd")
    recipe = tiny_model.RECIPES["-one-shape-ovd"]
    base = f"tiny-glm4v-v{tiny_model.BUILD_VERSION}-s0"
    assert calls == [(base, f"{base}-warm-one_shape-ovd", 0, recipe["steps"], "one_shape", "ovd")]
    assert path == str(tmp_path / f"{base}-warm-one_shape-ovd") and (tmp_path / base / "BUILD.json").exists()
