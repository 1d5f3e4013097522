"""Evaluation metrics on hand-computed cases (pycocotools underneath for OVD)."""
import random

import pytest

from samples import Prompt, Rollout
from trainer import evaluate


def _ovd_rec(gt, pred):
    return {"id": "x", "image": None, "question": "", "completion": "", "failure": None,
            "gt": [b for b, _ in gt], "gt_labels": [l for _, l in gt], "pred": [b for b, _ in pred], "pred_labels": [l for _, l in pred]}


def test_ovd_metrics_known_case():
    # two images, one "dog" each; the model finds the first exactly and misses the second.
    # precision 1.0 up to recall 0.5, nothing beyond: 51 of the 101 recall points -> AP = 51/101
    recs = [_ovd_rec([([0, 0, 10, 10], "dog")], [([0, 0, 10, 10], "dog")]),
            _ovd_rec([([5, 5, 20, 20], "dog")], [])]
    m = evaluate.ovd_metrics(recs)
    assert m["mAP"] == pytest.approx(51 / 101, abs=1e-6)
    assert m["AP50"] == pytest.approx(51 / 101, abs=1e-6) and m["AP75"] == pytest.approx(51 / 101, abs=1e-6)
    assert m["precision@0.5"] == 1.0 and m["recall@0.5"] == 0.5
    # a wrong label is a false positive for greedy precision, and is dropped (unknown) for COCO
    m = evaluate.ovd_metrics([_ovd_rec([([0, 0, 10, 10], "dog")], [([0, 0, 10, 10], "cat"), ([0, 0, 10, 10], "dog")])])
    assert m["precision@0.5"] == 0.5 and m["recall@0.5"] == 1.0 and m["mAP"] == pytest.approx(1.0, abs=1e-6)


def _rollout(text, solution, task="rec", size=(100, 200), input_size=(56, 112)):
    p = Prompt("p1", ("/nonexistent.png",), (size,), "find the red circle", solution, task)
    return Rollout(p, 0, [1], [2], text, "stop", [0.0], (input_size,))


def test_rec_accuracy_rescales_to_original_pixels():
    # the model saw 56x112; its box [14, 28, 28, 56] is [25, 50, 50, 100] in the 100x200 original
    hit = _rollout('<think>x</think><answer>{"bbox_2d": [14, 28, 28, 56]}</answer>', "[25, 50, 50, 100]")
    miss = _rollout('<think>x</think><answer>{"bbox_2d": [0, 0, 5, 5]}</answer>', "[25, 50, 50, 100]")
    junk = _rollout("no answer", "[25, 50, 50, 100]")
    m, records = evaluate.score_rollouts([hit, miss, junk], "rec")
    assert m["accuracy"] == pytest.approx(1 / 3) and m["mean_iou"] == pytest.approx(1 / 3)
    assert m["parse_failures"] == 1 and records[0]["pred"] == [[25.0, 50.0, 50.0, 100.0]]


def test_mixed_tasks_are_reported_per_task():
    ovd = _rollout("<think>x</think><answer>None</answer>", "None", task="ovd")
    rec = _rollout('<think>x</think><answer>{"bbox_2d": [14, 28, 28, 56]}</answer>', "[25, 50, 50, 100]")
    m, _ = evaluate.score_rollouts([rec, ovd])
    assert m["rec/accuracy"] == 1.0 and m["ovd/samples"] == 1


def test_subset_is_vlm_r1s_seeded_sample():
    rows = list(range(5000))
    assert evaluate.subset(rows, 2000, 42) == random.Random(42).sample(rows, 2000)
    assert evaluate.subset(rows, None) == rows and evaluate.subset(rows[:10], 2000) == rows[:10]


def test_qa_answers_are_scored_by_the_rows_own_method():
    from samples import Prompt, Rollout

    def qa(text, solution, method):
        p = Prompt("q", ("/nonexistent.png",), ((100, 100),), "how many?", solution, "qa", method)
        return Rollout(p, 0, [1], [2], text, "stop", [0.0], ((1000, 1000),))
    rollouts = [qa("<think>a</think><answer>3</answer>", "3", "numeric"),       # right
                qa("<think>a</think><answer>B.</answer>", "C", "mcq"),          # wrong letter
                qa("<think>a</think><answer>red circl</answer>", "red circle", "fuzzy"),  # partly right
                qa("<think>a</think><answer>0.5</answer>", "1/2", None)]        # no method: VLM-R1's default
    m, recs = evaluate.score_rollouts(rollouts)
    assert [r["reward"] for r in recs] == ["numeric", "mcq", "fuzzy", "answer"]
    assert [r["hit"] for r in recs] == [True, False, False, True]
    assert m["accuracy"] == 0.5 and m["samples"] == 4
    assert m["mean_score"] == pytest.approx((1 + 0 + 2 * 9 / 19 + 1) / 4)  # ratio("red circl", "red circle") = 18/19
    mixed, _ = evaluate.score_rollouts(rollouts + [_rollout('<answer>{"bbox_2d": [0, 0, 56, 112]}</answer>', "[0, 0, 100, 200]")])
    assert mixed["qa/accuracy"] == 0.5 and mixed["rec/accuracy"] == 1.0


def test_the_run_summary_compares_the_first_and_last_evaluation(tmp_path, capsys):
    from trainer.summary import eval_span, print_summary
    (tmp_path / "eval").mkdir()
    assert eval_span(tmp_path) is None  # nothing to compare yet
    for step, acc, iou in [(0, 0.187, 0.27), (100, 0.23, 0.35), (300, 0.267, 0.369)]:
        evaluate.save(tmp_path / "eval" / f"step_{step:06d}.json",
                      {"samples": 300, "accuracy": acc, "mean_iou": iou, "parse_failures": 0}, [])
    assert eval_span(tmp_path) == ("val (step 0 -> 300, 300 samples): accuracy 0.187 -> 0.267 (+0.080), "
                                   "mean_iou 0.270 -> 0.369 (+0.099)")
    s = {"steps": 3, "samples": 96, "reward_first": 1.0, "reward_last": 1.2, "chosen": {},
         "time_s": {k: 1.0 for k in ("rollout", "reward", "train", "sync", "eval_ckpt", "other", "total")}}
    print_summary(s, tmp_path)
    assert "accuracy 0.187 -> 0.267 (+0.080)" in capsys.readouterr().out
