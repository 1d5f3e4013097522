"""The per-step hack signals that reward triggers watch, on hand-made OVD samples."""
import json

import pytest

from samples import Prompt, Rollout
from trainer import evaluate
from trainer.summary import hack_signals, screen_out


def _rollout(pid, gt_items, pred_items, size=(100, 100)):
    sol = "```json\n" + json.dumps(gt_items) + "\n```" if gt_items else "None"
    text = "<think>x</think><answer>" + ("```json\n" + json.dumps(pred_items) + "\n```" if pred_items else "None") + "</answer>"
    return Rollout(Prompt(pid, ("im.png",), (size,), "q", sol, "ovd"), 0, [1], [2], text, "stop", [0.0], ())


def test_hack_signals_by_hand():
    cat = lambda b: {"bbox_2d": b, "label": "cat"}  # noqa: E731
    rollouts = [
        _rollout("a", [cat([10, 10, 30, 30])], [cat([10, 10, 30, 30]), cat([10, 10, 30, 31]), cat([0, 0, 100, 100])]),
        _rollout("b", [cat([50, 50, 60, 60])], []),            # None where there is a cat
        _rollout("c", [], []),                                 # None where there is nothing: right
        _rollout("d", [cat([1, 1, 5, 5]), cat([6, 6, 9, 9])], [cat([1, 1, 5, 5])]),
    ]
    s = hack_signals(rollouts, [evaluate.record(r) for r in rollouts])
    assert s["hack/boxes_over_gt"] == pytest.approx(4 / 4)  # 4 predicted boxes, 4 true ones
    assert s["hack/duplicate_box_frac"] == pytest.approx(1 / 4)  # the near-copy in "a"
    assert s["hack/whole_image_frac"] == pytest.approx(1 / 4)
    assert s["hack/none_frac"] == pytest.approx(1 / 3)  # "b" of the 3 answers whose image has a target


def test_drift_signals_use_the_first_step_and_the_newest_saved_evaluation(tmp_path):
    from trainer.summary import drift_signals
    (tmp_path / "eval").mkdir()
    for step, acc in ((0, 0.10), (20, 0.30), (40, 0.50)):
        (tmp_path / "eval" / f"step_{step:06d}.json").write_text(json.dumps({"metrics": {"accuracy": acc}, "records": []}))
    assert evaluate.latest(tmp_path, 39) == {"accuracy": 0.30}  # a run resumed at 39 sees step 20's
    assert evaluate.latest(tmp_path / "none", 5) is None
    first = {"completion_len/mean": 40.0}
    row = {"completion_len/mean": 90.0, "accuracy": 0.75}
    assert drift_signals(row, first, evaluate.latest(tmp_path, 39)) == {
        "hack/length_growth": 2.25, "hack/train_eval_gap": 0.45}
    assert drift_signals({"completion_len/mean": 30.0}, None, None) == {"hack/length_growth": 1.0}  # the first step
    ovd = drift_signals({"reward/ovd_map": 0.6}, None, {"mAP": 0.2, "AP50": 0.4})
    assert ovd == {"hack/train_eval_gap": 0.4}


def test_screened_completions_get_no_advantage_and_the_rest_keep_theirs():
    import torch


    from trainer.summary import sample_flags
    cat = lambda b: {"bbox_2d": b, "label": "cat"}  # noqa: E731
    rollouts = [_rollout("a", [cat([10, 10, 30, 30])], [cat([10, 10, 30, 30])]),                       # clean
                _rollout("b", [cat([10, 10, 30, 30])], [cat([10, 10, 30, 30]), cat([11, 10, 30, 30])]),  # duplicate
                _rollout("c", [cat([10, 10, 30, 30])], [cat([0, 0, 100, 100])]),                        # whole image
                _rollout("d", [cat([10, 10, 30, 30])], [])]                                             # no box
    flags = [sample_flags(r, evaluate.record(r)) for r in rollouts]
    assert flags == [set(), {"duplicate_boxes", "extra_boxes"}, {"whole_image"}, {"no_box"}]
    adv = torch.tensor([1.0, -0.5, 2.0, -1.0], dtype=torch.float64)
    assert screen_out(rollouts, frozenset({"duplicate_boxes", "whole_image"}), adv) == 0.5
    assert adv.tolist() == [1.0, 0.0, 0.0, -1.0]
    assert screen_out(rollouts, frozenset(), adv) == 0.0 and adv.tolist() == [1.0, 0.0, 0.0, -1.0]
