"""Monitoring: JSONL rows, metric names, and the reward-hack watch."""
import json

import pytest

from trainer.monitor import HackWatch, Monitor, metric_name


def test_jsonl_rows_and_metric_names(tmp_path):
    m = Monitor(tmp_path, wandb_cfg=None, use_ray=False)
    m.log({"step": 1, "reward/mean": 0.5, "prompt_ids": ["a"]})
    m.log({"step": 2, "reward/mean": 0.7})
    m.close()
    rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    assert [r["reward/mean"] for r in rows] == [0.5, 0.7] and rows[0]["prompt_ids"] == ["a"]
    assert metric_name("reward/rec_iou") == "vlmr1_reward_rec_iou"
    assert metric_name("precision@0.5") == "vlmr1_precision_0_5"


def test_hack_watch_warns_on_box_padding_and_length_drift_only():
    w = HackWatch(window=3)
    with pytest.warns(UserWarning, match="box-padding"):
        out = [w.update({"step": s, "boxes/pred_per_answer": 4.0, "boxes/gt_per_answer": 1.5}) for s in range(4)]
    assert sum(len(o) for o in out) == 1  # warned once, not every step
    none = HackWatch(window=3)
    with pytest.warns(UserWarning, match="answers None to everything"):
        out = [none.update({"step": s, "boxes/pred_per_answer": 0.05, "boxes/gt_per_answer": 1.0}) for s in range(5)]
    assert sum(len(o) for o in out) == 1
    calm = HackWatch(window=3)
    assert all(not calm.update({"step": s, "boxes/pred_per_answer": 1.4, "boxes/gt_per_answer": 1.5,
                                "completion_len/mean": 40 + s}) for s in range(10))
    grow = HackWatch(window=3)
    with pytest.warns(UserWarning, match="completions average"):
        for s, n in enumerate([40, 60, 90, 120, 150]):
            grow.update({"step": s, "completion_len/mean": n})
