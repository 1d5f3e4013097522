"""The learning benchmark's arithmetic: splits told apart by id, standard errors of a difference,
the verdict on the shift splits, the curves drawn from the numbers given (the runs themselves are
``orchestrator.py`` commands, tested end to end elsewhere)."""
import json
import math
import re
from types import SimpleNamespace

import pytest

from bench.learning import curve_series, tables, write_curves
from bench.rec_stats import diff_se, mean_se, split_metrics, split_tags


def _records(split: str, hits: list[int]) -> list[dict]:
    return [{"id": f"rec-{split}-{i}", "hit": h, "iou": 0.5 * h + 0.1} for i, h in enumerate(hits)]


def test_split_metrics_tell_splits_apart_by_id_and_keep_a_fixed_subset():
    tags = split_tags(["small"])
    assert tags == {"in": "-val-", "ood": "-val_ood-", "small": "-val_small-"}
    recs = _records("val", [1, 0, 1]) + _records("val_ood", [0, 0]) + _records("val_small", [1, 1, 0, 0])
    m = split_metrics(recs, tags)
    assert m["in"]["hit"] == [1.0, 0.0, 1.0] and m["ood"]["hit"] == [0.0, 0.0] and m["small"]["hit"] == [1, 1, 0, 0]
    sub = split_metrics(recs, tags, ids={"rec-val-0", "rec-val_small-3"})
    assert sub["in"]["hit"] == [1.0] and sub["ood"]["hit"] == [] and sub["small"]["hit"] == [0.0]


def test_difference_and_its_standard_error():
    a, b = [1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]
    (ma, sa), (mb, sb) = mean_se(a), mean_se(b)
    assert (ma, mb) == (0.75, 0.25) and sa == pytest.approx(math.sqrt(0.25 / 4))
    d, se = diff_se(a, b)
    assert d == 0.5 and se == pytest.approx(math.sqrt(sa ** 2 + sb ** 2))


def _results(grpo_small: list[int], sft_small: list[int]) -> dict:
    tags = split_tags(["small", "corners"])
    def arm(small, corners):
        return split_metrics(_records("val", [1] * 30 + [0] * 10) + _records("val_ood", [0] * 40) +
                             _records("val_small", small) + _records("val_corners", corners), tags)
    sft = split_metrics(_records("val", [1] * 20 + [0] * 20) + _records("val_ood", [0] * 40) +
                        _records("val_small", sft_small) + _records("val_corners", [1] * 20 + [0] * 20), tags)
    grpo = arm(grpo_small, [1] * 21 + [0] * 19)
    curve = {0: sft, 10: grpo}
    return {"base": sft, "sft": [sft], "grpo": [grpo], "sft_lr": 3e-4, "sft_sweep": {"0.0001": (0.4, 0.05), "0.0003": (0.5, 0.05)},
            "floor": {s: {"acc": 0.1, "iou": 0.2} for s in tags}, "curve": {"grpo": [curve], "sft": [{0: sft, 10: sft}]}}


def test_the_verdict_counts_shift_splits_won_by_more_than_two_standard_errors(tmp_path):
    args = SimpleNamespace(shifts=["small", "corners"], seeds=[0], steps=10, prompts_per_step=8, staleness=[0],
                           ovd_steps=0, legacy=False)
    won = _results([1] * 35 + [0] * 5, [1] * 10 + [0] * 30)   # small: 0.875 vs 0.25, far apart; corners: 0.525 vs 0.5
    md = tables(won, args)
    assert "on 1 of the 2 shift splits (small; target: at least 2)" in md
    row = next(line for line in md.splitlines() if line.startswith("| **GRPO - SFT**"))
    d, se = diff_se([1.0] * 30 + [0.0] * 10, [1.0] * 20 + [0.0] * 20)
    assert f"{100 * d:+.1f} pts ({d / se:+.1f})" in row and "+62.5 pts" in row
    assert "lr 0.0003: 0.500 ± 0.050" in md and "continued SFT (lr 0.0003)" in md
    assert "each seed" not in md  # one seed: no spread to show
    two = _results([1] * 35 + [0] * 5, [1] * 10 + [0] * 30)
    two["grpo"], two["sft"] = two["grpo"] * 2, [two["sft"][0], two["grpo"][0]]  # seed 2: SFT as good as GRPO
    row = next(line for line in tables(two, SimpleNamespace(**{**vars(args), "seeds": [0, 1]})).splitlines()
               if "each seed" in line)
    assert "| +25.0, +0.0 (+12.5 ± 12.5) |" in row  # in domain: 0.75 - 0.5, then 0
    lost = tables(_results([1] * 10 + [0] * 30, [1] * 10 + [0] * 30), args)
    assert "on 0 of the 2 shift splits (none;" in lost


def test_curves_are_drawn_from_the_pooled_seeds(tmp_path):
    args = SimpleNamespace(shifts=["small", "corners"], seeds=[0])
    res = _results([1] * 35 + [0] * 5, [1] * 10 + [0] * 30)
    assert curve_series(res, "grpo", "small") == [(0, 0.25, mean_se([1.0] * 10 + [0.0] * 30)[1]),
                                                  (10, 0.875, mean_se([1.0] * 35 + [0.0] * 5)[1])]
    res = json.loads(json.dumps(res))  # as read back from learning.json: steps are strings
    assert curve_series(res, "grpo", "small")[1][1] == 0.875
    empty = json.loads(json.dumps(res))  # a curve subset holding no image of a split: no point, not NaN
    empty["curve"]["grpo"][0]["10"]["small"]["hit"] = []
    assert [p for p, _, _ in curve_series(empty, "grpo", "small")] == [0]
    paths = write_curves(res, args, tmp_path)
    assert [p.name for p in paths] == ["curves_in.svg", "curves_ood.svg", "curves_small.svg", "curves_corners.svg"]
    svg = (tmp_path / "curves_small.svg").read_text()
    assert svg.count("<polyline") == 2 and svg.count("<polygon") == 2 and "constant-box floor" in svg
    ys = [float(v) for v in re.findall(r",([\d.]+)", re.search(r'<polyline points="([^"]+)"', svg).group(1))]
    assert ys[0] > ys[1]  # GRPO's line rises (SVG y grows downwards)


def test_ovd_table_names_each_lever_and_its_gain_over_the_warm_start():
    args = SimpleNamespace(shifts=["small", "corners"], seeds=[0, 1], steps=10, prompts_per_step=8, staleness=[0],
                           ovd_steps=20, legacy=False)
    res = _results([1] * 35 + [0] * 5, [1] * 10 + [0] * 30)
    row = lambda m: {"mAP": m, "AP50": 2 * m, "recall@0.5": 3 * m, "boxes_per_answer": 1.0}  # noqa: E731
    curve = [{"step": i, "reward/ovd_odlength": 0.1, "reward/ovd_map": 0.2, "boxes/pred_per_answer": 1.0,
              "boxes/gt_per_answer": 0.7} for i in range(20)]
    for arm, after in (("odlength", (0.02, 0.02)), ("iou", (0.05, 0.07))):
        res[f"ovd_{arm}"] = [{"eval_first": row(0.01), "eval_last": row(a)} for a in after]
        res["curves"] = {**res.get("curves", {}), **{f"ovd_{arm}_s{s}": curve for s in (0, 1)}}
    md = tables(res, args)
    lines = {line.split(" | ")[0]: line for line in md.splitlines() if line.startswith("| format")}
    assert set(lines) == {"| format + ovd_odlength (conf=ovd)", "| format + ovd_iou"}
    assert "| 0.010, 0.010 -> 0.050, 0.070 | 6.0x |" in lines["| format + ovd_iou"]
    assert "| 2.0x |" in lines["| format + ovd_odlength (conf=ovd)"]


def test_equal_time_takes_median_step_times_pooled_over_the_seeds():
    from bench.learning import equal_time_steps
    grpo = [[2.0] * 9 + [60.0], [2.0] * 10]  # one 60 s pause does not count: median 2 s x 10 steps
    sft = [[0.2] * 9 + [5.0], [0.25] * 10]   # pooled median 0.25 (the 10th and 11th of 20) -> 20 s / 0.25 s
    assert equal_time_steps(grpo, sft, 10) == (80, 20.0)
    assert equal_time_steps(grpo, sft, 30) == (90, 20.0)   # 80 / 30 = 2.67 -> 3 x 30
    assert equal_time_steps([[0.1] * 10], [[1.0] * 10], 10)[0] == 10  # never fewer steps than SFT's own


def test_every_ovd_arm_composes_with_conf_ovd_and_trains_the_rewards_its_label_names():
    import conf
    from bench.ovd_arms import OVD_ARMS
    from rewards import validate_funcs
    for name, (label, overrides) in OVD_ARMS.items():
        cfg = conf.load(["conf=ovd", *overrides])
        funcs = validate_funcs(dict(cfg.reward.funcs))
        named = [part.strip().split(",")[0].split(" (")[0] for part in label.split("+")]
        assert {n for n in named} == {f for f, w in funcs.items() if w > 0}, name
        ds = cfg.rollout.dynamic_sampling
        assert ds.enabled == ("dynamic" in name) and (ds.metric in funcs if ds.enabled else True), name
    assert conf.load(["conf=ovd", *OVD_ARMS["odlength_g16"][1]]).rollout.num_generations == 16
