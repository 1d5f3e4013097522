"""The peers' grounding rewards: values by hand and the properties that stop the known hacks
(padding, duplicates, whole-image boxes, order games, None answers)."""
import json
import random

import pytest

import conf
from actors.reward_worker import RewardWorker, ScoreTask
from rewards import REGISTRY, score, validate_params
from rewards.grounding import giou


def rec(box):
    return f'<think>x</think><answer>{{"bbox_2d": {box}}}</answer>'


def ovd(items):
    return "<think>x</think><answer>```json\n" + json.dumps(items) + "\n```</answer>"


def sol(items):
    return "```json\n" + json.dumps(items) + "\n```"


CAT, DOG = (lambda b: {"bbox_2d": b, "label": "cat"}), (lambda b: {"bbox_2d": b, "label": "dog"})


def test_giou_by_hand_and_range():
    assert giou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)  # hull = union: GIoU = IoU
    assert giou([0, 0, 10, 10], [20, 0, 30, 10]) == pytest.approx(-1 / 3)
    assert giou([0, 0, 10, 10], [90, 0, 100, 10]) == pytest.approx(0 - 800 / 1000)  # farther: lower
    rng = random.Random(0)
    for _ in range(500):
        a = sorted(rng.uniform(0, 100) for _ in range(2)) + sorted(rng.uniform(0, 100) for _ in range(2))
        b = sorted(rng.uniform(0, 100) for _ in range(2)) + sorted(rng.uniform(0, 100) for _ in range(2))
        a, b = [a[0], a[2], a[1], a[3]], [b[0], b[2], b[1], b[3]]
        assert -1.0 <= giou(a, b) <= 1.0 and giou(a, b) == pytest.approx(giou(b, a))


def test_rec_giou_ranks_misses_by_distance_and_never_rewards_no_answer():
    gt = "[0, 0, 10, 10]"
    exact, touching, near, far = (REGISTRY["rec_giou"](rec(b), gt) for b in
                                  ([0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10], [90, 0, 100, 10]))
    assert exact == 1.0 and touching == pytest.approx(0.5)
    assert touching > near > far > 0.0
    assert REGISTRY["rec_iou"](rec([20, 0, 30, 10]), gt) == REGISTRY["rec_iou"](rec([90, 0, 100, 10]), gt) == 0.0
    assert REGISTRY["rec_giou"]("<answer>no box</answer>", gt) == 0.0 < far


def test_rec_iou_thresh_cuts_below_the_threshold_and_takes_it_from_params():
    gt, c = "[10, 10, 50, 60]", rec([10, 10, 50, 50])  # IoU 0.8
    assert REGISTRY["rec_iou_thresh"](c, gt) == pytest.approx(0.8)
    assert REGISTRY["rec_iou_thresh"](c, gt, iou_threshold=0.8) == pytest.approx(0.8)  # >= counts
    assert REGISTRY["rec_iou_thresh"](c, gt, iou_threshold=0.85) == 0.0
    tight = score(c, gt, {"rec_iou_thresh": 1.0}, params={"rec_iou_thresh": {"iou_threshold": 0.85}})
    assert tight.total == 0.0 and score(c, gt, {"rec_iou_thresh": 1.0}).total == pytest.approx(0.8)


def test_ovd_precision_recall_f1_by_hand():
    gt = sol([CAT([0, 0, 10, 10]), CAT([20, 20, 30, 30]), DOG([50, 50, 60, 60])])
    c = ovd([CAT([0, 0, 10, 10]), DOG([20, 20, 30, 30]), DOG([50, 50, 60, 61]), CAT([80, 80, 90, 90])])
    # matched: cat 1 (exact), dog (IoU 100/110); wrong label at cat 2; a false alarm
    assert REGISTRY["ovd_precision"](c, gt) == pytest.approx(2 / 4)
    assert REGISTRY["ovd_recall"](c, gt) == pytest.approx(2 / 3)
    assert REGISTRY["ovd_f1"](c, gt) == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert REGISTRY["ovd_recall"](c, gt, iou_threshold=0.95) == pytest.approx(1 / 3)  # 100/110 < 0.95


def test_ovd_none_is_scored_explicitly():
    cat = sol([CAT([0, 0, 10, 10])])
    said_none = "<think>x</think><answer>None</answer>"
    for name in ("ovd_precision", "ovd_recall", "ovd_f1", "ovd_count", "ovd_iou", "ovd_giou"):
        assert REGISTRY[name](said_none, "None") == 1.0, name  # absent and said so
        assert REGISTRY[name](ovd([]), "None") == 1.0, name
    for name in ("ovd_precision", "ovd_recall", "ovd_f1", "ovd_iou", "ovd_giou"):
        assert REGISTRY[name](ovd([CAT([0, 0, 10, 10])]), "None") == 0.0, name  # a box where nothing is
        assert REGISTRY[name](said_none, cat) == 0.0, name  # None where something is
        assert REGISTRY[name]("<answer>I see a cat</answer>", "None") == 0.0, name  # no list is not None
    assert REGISTRY["ovd_count"](said_none, cat) == pytest.approx(0.6)


def test_duplicates_and_padding_never_pay():
    gts = [CAT([0, 0, 10, 10]), CAT([30, 30, 40, 40]), DOG([60, 0, 70, 10])]
    gt = sol(gts)
    base = [CAT([0, 0, 10, 10]), DOG([60, 0, 70, 11])]
    for name in ("ovd_f1", "ovd_precision", "ovd_odlength"):
        before = REGISTRY[name](ovd(base), gt)
        assert before > 0
        assert REGISTRY[name](ovd(base + [base[0]]), gt) <= before, name  # a duplicate of a matched box
        assert REGISTRY[name](ovd(base + [CAT([0, 0, 100, 100])]), gt) <= before, name  # a whole-image box
    assert REGISTRY["ovd_recall"](ovd(base + [base[0]]), gt) == REGISTRY["ovd_recall"](ovd(base), gt)
    # the size penalty: 0.6 per box too many or too few
    assert REGISTRY["ovd_count"](ovd(base), gt) == pytest.approx(0.6)
    assert REGISTRY["ovd_count"](ovd(gts), gt) == 1.0
    assert REGISTRY["ovd_count"](ovd(gts + gts), gt) == pytest.approx(0.6 ** 3)
    assert REGISTRY["ovd_count"](ovd(gts + gts), gt, base=0.5) == pytest.approx(0.5 ** 3)


def test_whole_image_box_scores_below_a_tight_box():
    assert REGISTRY["rec_giou"](rec([0, 0, 640, 480]), "[100, 100, 150, 150]") < \
        REGISTRY["rec_giou"](rec([98, 100, 150, 152]), "[100, 100, 150, 150]")
    gt = sol([CAT([100, 100, 150, 150])])
    for name in ("ovd_f1", "ovd_precision", "ovd_recall", "ovd_iou", "ovd_giou"):
        assert REGISTRY[name](ovd([CAT([0, 0, 640, 480])]), gt) < REGISTRY[name](ovd([CAT([98, 100, 150, 152])]), gt)


def test_ovd_iou_and_giou_by_hand_and_dense_below_the_map_threshold():
    gt = sol([CAT([0, 0, 10, 10]), DOG([50, 50, 60, 60])])
    # cat: IoU 0.5 (the pair to keep), a worse cat box left over; the dog missed; a stray bird
    c = ovd([CAT([0, 0, 10, 20]), CAT([0, 0, 10, 40]), {"bbox_2d": [50, 50, 60, 60], "label": "bird"}])
    assert REGISTRY["ovd_iou"](c, gt) == pytest.approx(0.5 / 3)  # max(3 claims, 2 targets)
    assert REGISTRY["ovd_giou"](c, gt) == pytest.approx((1 + 0.5) / 2 / 3)  # hull = union: GIoU = IoU
    # one target, boxes sliding away: mAP-based rewards are 0 below IoU 0.5, these still rank them
    one = sol([CAT([0, 0, 10, 10])])
    slid = [ovd([CAT([dx, 0, dx + 10, 10])]) for dx in (4, 6, 8, 12, 20)]  # IoU 0.43, 0.25, 0.11, 0, 0
    assert [REGISTRY["ovd_odlength"](x, one) for x in slid] == [0.0] * 5
    ious = [REGISTRY["ovd_iou"](x, one) for x in slid]
    assert ious[0] == pytest.approx(6 / 14) and ious[0] > ious[1] > ious[2] > ious[3] == ious[4] == 0.0
    gious = [REGISTRY["ovd_giou"](x, one) for x in slid]
    assert all(a > b for a, b in zip(gious, gious[1:])) and gious[-1] > 0.0
    # padding: past one box per target every extra box dilutes (a claim for a missed target is not
    # padding: it scores its IoU, and under GIoU something however far off)
    gts = [CAT([0, 0, 10, 10]), CAT([30, 30, 40, 40]), DOG([60, 0, 70, 10])]
    full = [CAT([0, 0, 10, 10]), CAT([30, 30, 40, 41]), DOG([60, 0, 70, 11])]
    for name in ("ovd_iou", "ovd_giou"):
        before = REGISTRY[name](ovd(full), sol(gts))
        for extra in (full[0], CAT([0, 0, 100, 100]), DOG([60, 0, 70, 10])):
            assert REGISTRY[name](ovd(full + [extra]), sol(gts)) < before, (name, extra)
        missed = REGISTRY[name](ovd(full[:2]), sol(gts))
        assert (REGISTRY[name](ovd(full[:2] + [DOG([0, 20, 10, 30])]), sol(gts)) > missed) == (name == "ovd_giou")
    # the label must be the target's; boxes are rescaled from the model's frame like the other rewards
    assert REGISTRY["ovd_iou"](ovd([DOG([0, 0, 10, 10])]), one) == 0.0
    assert REGISTRY["ovd_iou"](ovd([CAT([0, 0, 100, 100])]), one, input_size=(1000, 1000),
                               image_size=(100, 100)) == pytest.approx(1.0)


def test_matching_is_one_to_one_maximal_and_independent_of_prediction_order():
    # pred A overlaps both ground truths, pred B only the first: greedy A->gt0 would leave B unmatched
    gt = sol([CAT([0, 0, 10, 10]), CAT([4, 0, 14, 10])])
    a, b = CAT([2, 0, 12, 10]), CAT([0, 0, 10, 10])
    assert REGISTRY["ovd_recall"](ovd([a, b]), gt) == 1.0 == REGISTRY["ovd_recall"](ovd([b, a]), gt)
    rng = random.Random(1)
    for _ in range(50):
        gts = [rng.choice([CAT, DOG])([x, y, x + rng.randint(5, 30), y + rng.randint(5, 30)])
               for x, y in ((rng.randint(0, 60), rng.randint(0, 60)) for _ in range(rng.randint(1, 5)))]
        preds = [rng.choice([CAT, DOG])([x, y, x + rng.randint(5, 30), y + rng.randint(5, 30)])
                 for x, y in ((rng.randint(0, 60), rng.randint(0, 60)) for _ in range(rng.randint(1, 7)))]
        shuffled = preds[:]
        rng.shuffle(shuffled)
        for name in ("ovd_f1", "ovd_precision", "ovd_recall"):
            assert REGISTRY[name](ovd(preds), sol(gts)) == REGISTRY[name](ovd(shuffled), sol(gts)), name


def test_thousands_of_boxes_score_quickly_and_in_range():
    gt = sol([CAT([i * 10, 0, i * 10 + 8, 8]) for i in range(50)])
    flood = ovd([CAT([i % 500, 0, i % 500 + 8, 8]) for i in range(5000)])
    for name in ("ovd_f1", "ovd_precision", "ovd_count", "ovd_iou", "ovd_giou"):
        assert 0.0 <= REGISTRY[name](flood, gt) < 0.05, name  # 5000 claims against 50 targets
    # recall alone rewards a flood (why it is offered beside precision and F1); only the first
    # MAX_MATCHED_PREDICTIONS = 200 claims are matched, covering the first 21 targets
    assert REGISTRY["ovd_recall"](flood, gt) == pytest.approx(21 / 50)


def test_params_are_validated_in_code_and_config():
    assert validate_params({"rec_iou_thresh": {"iou_threshold": 1}}) == {"rec_iou_thresh": {"iou_threshold": 1.0}}
    with pytest.raises(ValueError, match="has no parameter 'threshold'.*iou_threshold"):
        validate_params({"rec_iou_thresh": {"threshold": 0.7}})
    with pytest.raises(ValueError, match="finite number"):
        validate_params({"ovd_count": {"base": "x"}})
    with pytest.raises(KeyError, match="unknown reward"):
        validate_params({"no_such": {"a": 1}})
    cfg = conf.load(["reward.params.rec_iou_thresh.iou_threshold=0.75"])
    assert cfg.reward.params.rec_iou_thresh.iou_threshold == 0.75
    with pytest.raises(conf.ConfigError, match="reward.params.rec_iou.iou_threshold: rec_iou has no parameter"):
        conf.load(["reward.params.rec_iou.iou_threshold=0.75"])


def test_reward_worker_applies_params():
    t = ScoreTask(("p", 0), rec([10, 10, 50, 50]), "[10, 10, 50, 60]", None, None, None)
    loose = RewardWorker({"rec_iou_thresh": 1.0}).score([t])
    tight = RewardWorker({"rec_iou_thresh": 1.0}, "vlm_r1", {"rec_iou_thresh": {"iou_threshold": 0.9}}).score([t])
    assert loose["totals"] == [pytest.approx(0.8)] and tight["totals"] == [0.0]
