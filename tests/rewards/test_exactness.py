"""Rewards equal VLM-R1's definitions: mAP against pycocotools, parsing against VLM-R1's regexes."""
import json
import random
import re

import pytest
from hypothesis import given, settings, strategies as st

from rewards import REGISTRY, parse
from rewards.coco_ap import coco_ap, reference_coco_ap as pycoco_stats
from tests.budget import cases

LABELS = ["dog", "cat", "red circle", "car"]


def _box(rng, base=None):
    kind = rng.random()
    if base is not None and kind < 0.55:  # jitter a ground-truth box: every IoU level
        s = rng.choice([0, 1, 2, 5, 15, 40])
        b = [v + rng.randint(-s, s) for v in base]
    elif kind < 0.62:
        x, y = rng.randint(0, 2000), rng.randint(0, 2000)
        b = [x, y, x, y + rng.randint(0, 30)]  # zero area
    elif kind < 0.68:
        b = [rng.randint(0, 2000) for _ in range(4)]  # often inverted
    elif kind < 0.72:
        b = [-rng.randint(0, 500), -rng.randint(0, 500), rng.randint(2048, 300000), rng.randint(2048, 300000)]
    else:
        x, y = rng.uniform(-50, 2000), rng.uniform(-50, 2000)
        b = [x, y, x + rng.uniform(1, 400), y + rng.uniform(1, 400)]
    return [round(v, rng.choice([0, 1, 3])) if isinstance(v, float) else v for v in b]


def _case(rng):
    n_gt = rng.randint(1, 7)
    gt = [([rng.randint(0, 1500), rng.randint(0, 1500)], rng.choice(LABELS)) for _ in range(n_gt)]
    gt = [([x, y, x + rng.randint(0, 300), y + rng.randint(0, 300)], lab) for (x, y), lab in gt]
    if rng.random() < 0.05:  # a ground truth COCO ignores (negative area)
        gt.append(([100, 100, 50, 300], rng.choice(LABELS)))
    n_dt = rng.choice([0, 1, 2, 3, 5, 8, 12, 20, 105]) if rng.random() < 0.9 else rng.randint(0, 4)
    dts = []
    for _ in range(n_dt):
        base, lab = rng.choice(gt)
        if rng.random() < 0.15:
            lab = rng.choice(LABELS + ["unknown"])
        dts.append((_box(rng, base), lab))
    if dts and rng.random() < 0.2:
        dts += dts[: rng.randint(1, len(dts))]  # exact duplicates (the padding hack)
    return gt, dts


@pytest.mark.parametrize("n", [600, pytest.param(5000, marks=pytest.mark.slow)])
def test_native_coco_ap_equals_pycocotools_on_random_cases(n):
    rng = random.Random(1234)
    checked, n = 0, cases(n)
    for _ in range(n):
        gt, dts = _case(rng)
        gb, gl = [b for b, _ in gt], [lab for _, lab in gt]
        kept = [(b, lab) for b, lab in dts if lab in set(gl)]
        ref = pycoco_stats(gb, gl, [b for b, _ in dts], [lab for _, lab in dts])
        if ref is None:
            assert not kept
            continue
        ours = coco_ap(gb, gl, [b for b, _ in kept], [lab for _, lab in kept])
        for k in range(3):
            assert ours[k] == pytest.approx(ref[k], abs=1e-9), (gt, dts, k)
        checked += 1
    assert checked > 0.75 * n  # (the others have no predicted label among the truth's: both say so)


def _fenced(items):
    return "```json\n" + json.dumps(items) + "\n```"


def test_ovd_rewards_equal_vlm_r1_protocol_through_the_full_text_path():
    rng = random.Random(99)
    for _ in range(cases(400)):
        gt, dts = _case(rng)
        sol = _fenced([{"bbox_2d": b, "label": lab} for b, lab in gt])
        comp = "<think>look</think><answer>" + _fenced([{"bbox_2d": b, "label": lab} for b, lab in dts]) + "</answer>"
        ref = pycoco_stats([b for b, _ in gt], [lab for _, lab in gt], [b for b, _ in dts], [lab for _, lab in dts])
        if not dts:
            expected = (0.0, 0.0)
        elif ref is None:
            expected = (0.0, 0.0)
        else:
            expected = (max(0.0, ref[0]), max(0.0, ref[1]))
        assert REGISTRY["ovd_map"](comp, sol) == pytest.approx(expected[0], abs=1e-9)
        assert REGISTRY["ovd_map50"](comp, sol) == pytest.approx(expected[1], abs=1e-9)
        n_gt, n_dt = len(gt), len(dts)
        length = 1.0 if n_gt >= n_dt else n_gt / n_dt
        assert REGISTRY["ovd_odlength"](comp, sol) == pytest.approx(expected[0] * length, abs=1e-9)


# --------------------------------------------------------------- parsing == VLM-R1's regexes
FRAGMENTS = ["<think>", "</think>", "<answer>", "</answer>", "{", "}", "[", "]", ",", " ", "\n",
             "1", "23", "x", '"bbox_2d"', ":", "```json", "```", "\u0663", "\u00a0"]
fragment_text = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)

REC_FORMAT = re.compile(r"<think>.*?</think>\s*<answer>.*?\{.*\[\d+,\s*\d+,\s*\d+,\s*\d+\].*\}.*?</answer>", re.DOTALL)
FORMAT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)


@settings(max_examples=cases(3000), deadline=None)
@given(fragment_text)
def test_linear_parsers_equal_vlm_r1_regexes(text):
    assert parse.has_rec_format(text) == (REC_FORMAT.search(text) is not None)
    assert parse.has_think_answer_format(text) == (FORMAT.fullmatch(text) is not None)
    assert parse.find_all_between(text, "<answer>", "</answer>") == re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    m = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
    assert parse.first_answer(text) == (m.group(1).strip() if m else None)
    m = re.search(r"\[(\d+),\s*(\d+),\s*(\d+),\s*(\d+)]", text)
    assert parse.first_int_box(text) == ([int(g) for g in m.groups()] if m else None)


@settings(max_examples=cases(1500), deadline=None)
@given(st.lists(st.sampled_from(["[", "]", "{", "}", " ", '"bbox_2d"', '"label"', "x", "\n"]), max_size=30).map("".join))
def test_item_list_span_equals_vlm_r1_regex(text):
    from rewards.ovd import _first_item_list_span
    m = re.search(r'\[\s*{.*?"bbox_2d".*?"label".*?}\s*\]', text, re.DOTALL)
    assert _first_item_list_span(text) == (m.group(0) if m else None)
