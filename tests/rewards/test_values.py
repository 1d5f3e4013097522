"""Rewards on hand-computed values: IoU conventions, rescaling, formats, OVD scores."""
import pickle

import pytest

from rewards import REGISTRY, score, validate_funcs
from rewards.boxes import iou

T = "<think>it is the left one</think>"


def rec(box: str) -> str:
    return f'{T}<answer>{{"bbox_2d": {box}, "label": "shape"}}</answer>'


@pytest.mark.parametrize("a,b,vlm,cont", [
    ([10, 10, 50, 50], [10, 10, 50, 50], 1.0, 1.0),            # identical
    ([0, 0, 10, 10], [10, 0, 20, 10], 0.0, 0.0),               # touching edges: no overlap
    ([0, 0, 100, 100], [25, 25, 75, 75], 0.25, 0.25),          # nested: 50*50 / 100*100
    ([10, 10, 10, 50], [0, 0, 100, 100], 0.0, 0.0),            # zero area
    ([50, 50, 10, 10], [10, 10, 50, 50], 0.0, 0.0),            # inverted
    ([0, 0, 10, 10], [9, 0, 20, 10], 0.0, 10 / 200),           # 1 px overlap: VLM-R1 drops it
    ([0, 0, 10, 10], [8, 0, 20, 10], 20 / 200, 20 / 200),      # 2 px: (9-8+1)*(9-0+1) = 20, union 100+120-20
    ([0, 0, 1, 1], [0, 0, 1, 1], 0.0, 1.0),                    # identical 1 px boxes
])
def test_iou_conventions_by_hand(a, b, vlm, cont):
    assert iou(a, b) == pytest.approx(vlm)
    assert iou(a, b, "continuous") == pytest.approx(cont)
    assert iou(b, a) == pytest.approx(vlm)


def test_rec_iou_acc_and_rescaling():
    # IoU of [10,10,50,50] with [10,10,50,60]: 1600 / (1600 + 2000 - 1600) = 0.8
    assert REGISTRY["rec_iou"](rec("[10, 10, 50, 50]"), "[10, 10, 50, 60]") == pytest.approx(0.8)
    assert REGISTRY["rec_acc"](rec("[10, 10, 50, 50]"), "[10, 10, 50, 60]") == 1.0
    # model saw 28x56, original is 100x200: [7, 14, 14, 28] -> [25, 50, 50, 100] exactly the GT
    info = {"input_size": (28, 56), "image_size": (100, 200)}
    assert REGISTRY["rec_iou"](rec("[7, 14, 14, 28]"), "[25, 50, 50, 100]", **info) == pytest.approx(1.0)
    assert REGISTRY["rec_iou"](rec("[7, 14, 14, 28]"), "[25, 50, 50, 100]") == 0.0  # without rescaling
    # the FIRST answer and the FIRST box in it count; floats and negatives are not VLM-R1 boxes
    two = f"{T}<answer>[10, 10, 50, 60] [0, 0, 1, 1]</answer><answer>[0, 0, 5, 5]</answer>"
    assert REGISTRY["rec_iou"](two, "[10, 10, 50, 60]") == 1.0
    assert REGISTRY["rec_iou"](f"{T}<answer>[10.5, 10, 50, 60]</answer>", "[10, 10, 50, 60]") == 0.0
    # [10,10,50,110] vs [10,10,50,60]: 2000 / 4000 = 0.5 exactly, and 0.5 is not > 0.5
    assert REGISTRY["rec_iou"](rec("[10, 10, 50, 110]"), "[10, 10, 50, 60]") == 0.5
    assert REGISTRY["rec_acc"](rec("[10, 10, 50, 110]"), "[10, 10, 50, 60]") == 0.0


def test_rec_and_generic_format():
    assert REGISTRY["rec_format"](rec("[1, 2, 3, 4]"), "") == 1.0
    assert REGISTRY["rec_format"](f"{T}<answer>[1, 2, 3, 4]</answer>", "") == 0.0  # no JSON object
    assert REGISTRY["rec_format"]('<answer>{"b": [1, 2, 3, 4]}</answer>', "") == 0.0  # no think
    assert REGISTRY["format"](f"{T}\n<answer>x</answer>", "") == 1.0
    assert REGISTRY["format"](f"{T}<answer>x</answer>\n", "") == 0.0  # must end with the tag
    assert REGISTRY["format"]("<think>a</think> b <answer>x</answer>", "") == 0.0


def ovd(items: str) -> str:
    return f"{T}<answer>```json\n{items}\n```</answer>"


GT2 = '```json\n[{"bbox_2d": [0, 0, 100, 100], "label": "dog"}, {"bbox_2d": [200, 200, 300, 300], "label": "cat"}]\n```'


def test_ovd_none_and_empty_rules():
    assert REGISTRY["ovd_map"](f"{T}<answer>None</answer>", "None") == 1.0       # both None
    assert REGISTRY["ovd_map"](ovd("[]"), "None") == 1.0                           # both empty
    assert REGISTRY["ovd_map"](ovd('[{"bbox_2d": [0,0,9,9], "label": "dog"}]'), "None") == 0.0
    assert REGISTRY["ovd_map"](f"{T}<answer>None</answer>", GT2) == 0.0           # one empty
    assert REGISTRY["ovd_map"]("no answer tags at all", "None") == 0.0              # no answer: 0


def test_ovd_padding_hack_is_caught_by_odlength():
    perfect = '[{"bbox_2d": [0, 0, 100, 100], "label": "dog"}, {"bbox_2d": [200, 200, 300, 300], "label": "cat"}]'
    padded = perfect[:-1] + ', {"bbox_2d": [0, 0, 100, 100], "label": "dog"}, {"bbox_2d": [5, 5, 9, 9], "label": "cat"}]'
    # each category: the true box first (precision 1 at recall 1), then a false positive: AP = 1
    assert REGISTRY["ovd_map"](ovd(perfect), GT2) == pytest.approx(1.0)
    assert REGISTRY["ovd_map"](ovd(padded), GT2) == pytest.approx(1.0)
    # odLength: 1.0 * min(1, 2 gt / 4 predicted) = 0.5
    assert REGISTRY["ovd_odlength"](ovd(padded), GT2) == pytest.approx(0.5)
    # unknown labels are dropped before COCOeval but still count as predicted boxes for odLength
    unk = perfect[:-1] + ', {"bbox_2d": [0, 0, 100, 100], "label": "zebra"}]'
    assert REGISTRY["ovd_map"](ovd(unk), GT2) == pytest.approx(1.0)
    assert REGISTRY["ovd_odlength"](ovd(unk), GT2) == pytest.approx(2 / 3)


def test_weighted_sum_and_repetition_by_hand():
    # dog found exactly, cat missed, one false alarm:
    # position = IoU 1 / 2 gt = 0.5; completeness = 1 - (1/2 miss + 1/2 false alarm) / 2 = 0.5
    # score = 0.7 * 0.5 + 0.3 * 0.5 = 0.5
    pred = '[{"bbox_2d": [0, 0, 100, 100], "label": "Dog"}, {"bbox_2d": [900, 900, 950, 950], "label": "cat"}]'
    assert REGISTRY["ovd_weighted_sum"](ovd(pred), GT2) == pytest.approx(0.5)
    # right box, wrong label: matched with IoU 0 -> position 0, completeness 1 - (1/2 + 0) / 2 = 0.75
    wrong = '[{"bbox_2d": [0, 0, 100, 100], "label": "cat"}]'
    assert REGISTRY["ovd_weighted_sum"](ovd(wrong), GT2) == pytest.approx(0.3 * 0.75)
    # 4 items, 2 distinct (box, label) pairs: -(1 - 2/4) = -0.5
    rep = '[{"bbox_2d": [1,2,3,4], "label": "a"}, {"bbox_2d": [1,2,3,4], "label": "a"}, {"bbox_2d": [1,2,3,4], "label": "b"}, {"bbox_2d": [1,2,3,4], "label": "b"}]'
    assert REGISTRY["repetition"](ovd(rep), "") == pytest.approx(-0.5)
    # truncated list (cut by max_new_tokens): the complete leading items still count
    # rep[:-20] ends inside the 4th item: a, a, b remain -> -(1 - 2/3)
    assert REGISTRY["repetition"](ovd(rep[:-20]), "") == pytest.approx(-1 / 3)
    # no list: word 6-grams. 8 words give 3 grams; all distinct -> 0; "x" * 8 -> 1 distinct of 3
    assert REGISTRY["repetition"]("a b c d e f a b", "") == 0.0
    assert REGISTRY["repetition"]("x x x x x x x x", "") == pytest.approx(-(1 - 1 / 3))


def test_score_weights_override_and_failures():
    s = score(rec("[10, 10, 50, 50]"), "[10, 10, 50, 60]", {"rec_format": 1.0, "rec_iou": 2.0})
    assert s.total == pytest.approx(1.0 + 2 * 0.8) and s.failures == {}
    # a row's accu_reward_method replaces the accuracy reward and keeps its weight
    s = score(rec("[10, 10, 50, 50]"), "[10, 10, 50, 60]", {"rec_format": 1.0, "rec_iou": 2.0}, accu_method="rec_acc")
    assert set(s.values) == {"rec_format", "rec_acc"} and s.total == pytest.approx(3.0)
    s = score("garbage", "[1, 1, 9, 9]", {"rec_format": 1.0, "rec_iou": 1.0})
    assert s.total == 0.0 and s.failures == {"rec_format": "bad_format", "rec_iou": "no_answer"}
    assert validate_funcs({"odLength": 1}) == {"ovd_odlength": 1.0}
    with pytest.raises(KeyError, match="unknown reward 'rec_iuo'"):
        validate_funcs({"rec_iuo": 1.0})


def test_rewards_pickle_ignore_unknown_kwargs_and_document_themselves():
    for name, fn in REGISTRY.items():
        assert pickle.loads(pickle.dumps(fn)) is fn
        assert fn(rec("[1, 1, 5, 5]"), "[1, 1, 5, 5]", some_future_key=3, image_size=None) == fn(rec("[1, 1, 5, 5]"), "[1, 1, 5, 5]")
        assert fn.__doc__ and len(fn.__doc__) > 20, name
