"""The per-step hack signals that reward triggers watch, on hand-made OVD samples."""
import json

import pytest

from actors.rollout import Rollout
from data.loaders import Prompt
from trainer import evaluate
from trainer.summary import hack_signals


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
