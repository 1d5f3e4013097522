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


def _records(tmp_path):
    from PIL import Image
    Image.new("RGB", (84, 84), "white").save(tmp_path / "a.png")
    ovd = {"id": "o1", "image": str(tmp_path / "a.png"), "question": "find dogs and cats", "completion": "...",
           "gt": [[1, 2, 30, 40], [50, 50, 80, 80]], "gt_labels": ["dog", "cat"],
           "pred": [[2, 2, 31, 41], [float("nan"), 0, 5, 5]], "pred_labels": ["dog", "cat"]}
    rec = {"id": "r1", "image": str(tmp_path / "a.png"), "question": "the red one", "completion": "...",
           "gt": [[10, 10, 20, 20]], "gt_labels": [""], "pred": [], "pred_labels": [], "iou": 0.0}
    gone = {**rec, "id": "r2", "image": str(tmp_path / "missing.png")}
    return [ovd, rec, gone]


def test_eval_boxes_for_wandb_are_labelled_pixel_boxes(tmp_path):
    from trainer.monitor import box_data
    ovd, rec, _ = _records(tmp_path)
    boxes, classes = box_data(ovd)
    assert classes == {1: "dog", 2: "cat"}
    assert [(b["box_caption"], b["position"]["maxY"]) for b in boxes["ground_truth"]] == [("dog", 40.0), ("cat", 80.0)]
    assert [b["box_caption"] for b in boxes["predictions"]] == ["dog"]  # the NaN box is left out
    boxes, classes = box_data(rec)  # REC: no labels, so truth / answer
    assert classes == {1: "truth"} and boxes["predictions"] == []


def test_an_evaluation_sends_wandb_images_with_boxes_and_a_table_of_answers(tmp_path, monkeypatch):
    from omegaconf import OmegaConf
    monkeypatch.setenv("WANDB_SILENT", "true")
    m = Monitor(tmp_path, OmegaConf.create({"mode": "offline", "project": "t", "run_name": None}), use_ray=False)
    logged = m.log_samples(3, _records(tmp_path))
    m.close()
    assert len(logged["eval/samples"]) == 2  # the unreadable image is left out, the others kept
    assert logged["eval/answers"].get_column("id") == ["o1", "r1", "r2"]
    assert logged["eval/answers"].get_column("truth")[0] == "dog [1, 2, 30, 40]; cat [50, 50, 80, 80]"
    # written into the offline run: the image (both records show the same file: stored once) and the table
    assert list((tmp_path / "wandb").rglob("media/images/eval/samples_*.png"))
    table = next((tmp_path / "wandb").rglob("media/table/eval/answers_*.table.json"))
    assert [row[0] for row in json.loads(table.read_text())["data"]] == ["o1", "r1", "r2"]
    boxes = [json.loads(f.read_text()) for f in (tmp_path / "wandb").rglob("media/metadata/boxes2D/eval/*.json")]
    assert any(b.get("box_caption") == "dog" for d in boxes for b in d.get("box_data", []))  # labelled
    assert Monitor(tmp_path, None, use_ray=False).log_samples(1, _records(tmp_path)) is None  # wandb off
