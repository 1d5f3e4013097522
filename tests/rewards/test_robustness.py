"""Any string in, a finite in-range float out, in bounded time; rewards/ stays light."""
import math
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from rewards import REGISTRY, score
from tests.budget import cases

SOLUTIONS = ["[10, 10, 50, 60]", "None", "B", "yes", "3/4", "the red circle",
             '```json\n[{"bbox_2d": [0, 0, 100, 100], "label": "dog"}, {"bbox_2d": [5, 5, 50, 50], "label": "cat"}]\n```']
PIECES = ["<think>", "</think>", "<answer>", "</answer>", "```json", "```", "[", "]", "{", "}", ",", ":",
          '"bbox_2d"', '"label"', '"dog"', "NaN", "Infinity", "-1", "1e308", "99999999999999999999",
          "\u0661\u0662", "None", "null", " ", "\n", "\x00", "\ud7ff", "💥"]


def _check(text: str, **info):
    for sol in SOLUTIONS:
        for name, fn in REGISTRY.items():
            v = fn(text, sol, **info)
            assert isinstance(v, float) and math.isfinite(v), (name, text[:80])
            assert fn.low <= v <= fn.high, (name, v)


@settings(max_examples=cases(300), deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text(text):
    _check(text)


@settings(max_examples=cases(500), deadline=None)
@given(st.lists(st.sampled_from(PIECES) | st.text(max_size=4), max_size=60).map("".join),
       st.sampled_from([{}, {"input_size": (28, 28), "image_size": (100, 50)}, {"input_size": (0, 0), "image_size": (1, 1)},
                        {"input_size": "bad"}, {"box_convention": "continuous"}]))
def test_structured_garbage(text, info):
    _check(text, **info)


def _ovd(items: str) -> str:
    return f"<think>x</think><answer>```json\n{items}\n```</answer>"


ADVERSARIAL = {
    "unclosed_answers": "<answer>" * 150_000,
    "unclosed_think": "<think>" * 150_000 + "</think>",
    "think_close_spam": "<think>" + "</think> " * 100_000,
    "megabyte_digits": "<think>a</think><answer>{[" + "1" * 1_000_000 + ", 2, 3, 4]}</answer>",
    "digit_runs_no_close": "<think></think><answer>{" + "[1, 2, 3, " * 100_000,
    "deep_json": _ovd("[" * 200_000 + "]" * 200_000),
    "deep_object": _ovd('{"a":' * 100_000 + "1" + "}" * 100_000),
    "huge_number": _ovd('[{"bbox_2d": [1e999, -1e999, NaN, Infinity], "label": "dog"}]'),
    "huge_int": _ovd('[{"bbox_2d": [' + "9" * 5000 + ', 1, 2, 3], "label": "dog"}]'),
    "wrong_shape": _ovd('{"bbox_2d": [1, 2, 3, 4], "label": "dog"}'),
    "many_boxes": _ovd("[" + ",".join(['{"bbox_2d": [1, 2, 30, 40], "label": "dog"}'] * 3000) + "]"),
    "regex_bomb": "[{" + ' "bbox_2d" "label"' * 50_000 + " x",
    "brace_bomb": "<think>a</think><answer>" + "{[1, 2, 3, 4]" * 80_000,
    "unicode_digits": "<think>a</think><answer>{[\u0661\u0660, \u0661\u0660, \u0665\u0660, \u0666\u0660]}</answer>",
    "fences": "```json" * 100_000,
    "words": "the cat " * 200_000,
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_inputs_finish_and_stay_in_range(name):
    _check(ADVERSARIAL[name])


def test_unicode_digits_are_digits_as_in_vlm_r1():
    # re's \d and int() accept Arabic-Indic digits: [10, 10, 50, 60] written in them scores 1
    assert REGISTRY["rec_iou"](ADVERSARIAL["unicode_digits"], "[10, 10, 50, 60]") == 1.0


def test_non_string_input_scores_zero_with_a_counted_failure():
    s = score(None, "[1, 2, 3, 4]", {"rec_iou": 1.0, "repetition": 1.0})  # type: ignore[arg-type]
    assert s.total == 0.0 and s.failures == {"rec_iou": "not_text", "repetition": "not_text"}


def test_rewards_import_nothing_heavy():
    code = ("import sys, rewards; heavy = [m for m in ('ray', 'vllm', 'deepspeed', 'torch', 'transformers')"
            " if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
