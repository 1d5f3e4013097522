"""Reward schedules: values at their boundaries, direction, metric-driven stages, resume, validation."""
import math

import pytest

import conf
from rewards.schedule import RuleSchedule, Schedule


def test_piecewise_by_progress_switches_exactly_at_its_points():
    s = Schedule("t", {"kind": "piecewise", "by": "progress", "points": [[0, 0.85], [0.1, 0.95], [0.25, 0.99]]})
    rs = RuleSchedule({"rec_iou_thresh": 1.0}, {}, {"rec_iou_thresh": {"iou_threshold": s.spec}}, total_steps=100)
    got = [rs.rules(t).params["rec_iou_thresh"]["iou_threshold"] for t in (0, 9, 10, 24, 25, 99, 100)]
    assert got == [0.85, 0.85, 0.95, 0.95, 0.99, 0.99, 0.99]  # V-Triune's schedule at 10% and 25%
    by_step = Schedule("t", {"kind": "piecewise", "points": [[5, 1.0], [10, 2.0]]})
    assert [by_step.value(t, 0.0) for t in (0, 4, 5, 9, 10)] == [1.0, 1.0, 1.0, 1.0, 2.0]  # first value before


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ramps_hold_their_ends_and_move_monotonically(kind):
    s = Schedule("w", {"kind": kind, "start": 10, "end": 20, "from": 1.0, "to": 0.2})
    vals = [s.value(t, 0.0) for t in range(0, 31)]
    assert vals[0] == vals[10] == 1.0 and vals[20] == vals[30] == pytest.approx(0.2)
    assert all(a >= b for a, b in zip(vals, vals[1:]))  # decreasing from 1.0 to 0.2, never back
    assert vals[15] == pytest.approx(0.6)  # midpoint of both: linear by definition, cosine by symmetry
    if kind == "cosine":  # flat at both ends, steepest in the middle
        assert 1.0 - vals[11] < vals[15] - vals[16]


def test_warmup_and_constant():
    s = Schedule("w", {"kind": "warmup", "at": 3, "value": 0.5})
    assert [s.value(t, 0.0) for t in range(5)] == [0.0, 0.0, 0.0, 0.5, 0.5]
    s = Schedule("w", {"kind": "warmup", "at": 0.5, "by": "progress", "value": 0.0, "before": 1.0})
    assert (s.value(0, 0.49), s.value(0, 0.5)) == (1.0, 0.0)
    assert Schedule("c", {"kind": "constant", "value": 2}).value(10**6, 1.0) == 2.0


def test_on_metric_advances_after_patience_and_restarts_its_count():
    s = Schedule("thr", {"kind": "on_metric", "metric": "reward/rec_iou", "above": 0.5, "patience": 3,
                         "values": [0.5, 0.75, 0.9]})
    stream = [0.6, 0.7, 0.4, 0.6, 0.6, 0.6, 0.9, 0.9, float("nan"), 0.9, 0.9, 0.9, 0.9, 0.9]
    stages, events = [], []
    for v in stream:
        events.append(s.observe({"reward/rec_iou": v}))
        stages.append(s.value(0, 0.0))
    # a dip (0.4) and a NaN break the run; each advance needs 3 fresh steps past the bar; the last value stays
    assert stages == [0.5, 0.5, 0.5, 0.5, 0.5, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 0.9, 0.9, 0.9]
    assert [i for i, e in enumerate(events) if e] == [5, 11]
    assert "0.5 -> 0.75 (reward/rec_iou > 0.5 for 3 steps)" in events[5]
    below = Schedule("x", {"kind": "on_metric", "metric": "kl", "below": 0.1, "patience": 1, "values": [1, 2]})
    assert below.observe({"kl": 0.2}) is None and below.observe({}) is None and below.observe({"kl": 0.05})


def test_events_are_logged_once_per_change_and_scalars_every_step():
    rs = RuleSchedule({"rec_iou": 1.0, "format": 1.0}, {},
                      {"format": {"weight": {"kind": "warmup", "at": 2, "value": 0.0, "before": 1.0}},
                       "rec_iou": {"weight": {"kind": "linear", "start": 0, "end": 4, "from": 1.0, "to": 2.0}}},
                      total_steps=10)
    events = [rs.observe(t, {}) for t in range(5)]
    assert [bool(e) for e in events] == [False, True, False, False, False]  # ramps are scalars, not events
    assert events[1] == ["reward.schedules.format.weight: 1 -> 0 from step 3 (step schedule)"]
    assert rs.scalars(rs.rules(1)) == {"rule/format/weight": 1.0, "rule/rec_iou/weight": 1.25}
    assert rs.rules(2).funcs == {"rec_iou": 1.5, "format": 0.0}


def test_resume_replays_the_saved_rows_into_the_same_state():
    spec = {"rec_iou_thresh": {"iou_threshold": {"kind": "on_metric", "metric": "m", "above": 0.5, "patience": 2,
                                                 "values": [0.5, 0.7, 0.9]}}}
    rows = [{"step": t + 1, "m": v} for t, v in enumerate([0.6, 0.6, 0.1, 0.6, 0.7, 0.8, 0.9, 0.1])]
    full = RuleSchedule({"rec_iou_thresh": 1.0}, {}, spec, 8)
    seen = []
    for t, r in enumerate(rows):
        seen.append(full.rules(t).params["rec_iou_thresh"]["iou_threshold"])
        full.observe(t, r)
    for cut in range(len(rows)):  # a checkpoint after `cut` steps, then the rest
        resumed = RuleSchedule({"rec_iou_thresh": 1.0}, {}, spec, 8)
        resumed.replay(rows[:cut])
        tail = []
        for t in range(cut, len(rows)):
            tail.append(resumed.rules(t).params["rec_iou_thresh"]["iou_threshold"])
            resumed.observe(t, rows[t])
        assert tail == seen[cut:], cut
    assert seen == [0.5, 0.5, 0.7, 0.7, 0.7, 0.9, 0.9, 0.9]  # advances after rows 2 and 5


def test_unscheduled_values_pass_through_and_nothing_is_shared():
    rs = RuleSchedule({"rec_iou_thresh": 1.0}, {"rec_iou_thresh": {"iou_threshold": 0.7}}, {}, 10)
    assert not rs and rs.scalars(rs.rules(3)) == {} and rs.observe(3, {}) == []
    r = rs.rules(0)
    r.params["rec_iou_thresh"]["iou_threshold"] = 0.1
    assert rs.rules(1).params == {"rec_iou_thresh": {"iou_threshold": 0.7}}


@pytest.mark.parametrize("spec, match", [
    ({"kind": "step"}, "kind='step': use one of"),
    ({"kind": "linear", "start": 0}, r"missing end, from, to"),
    ({"kind": "constant", "value": 1, "vaule": 2}, "unknown vaule"),
    ({"kind": "piecewise", "points": [[5, 1], [2, 0]]}, "must increase"),
    ({"kind": "piecewise", "points": [1, 2]}, "list of \\[at, value\\] pairs"),
    ({"kind": "linear", "start": 5, "end": 5, "from": 1, "to": 0}, "end .* must be after start"),
    ({"kind": "constant", "value": math.inf}, "finite number"),
    ({"kind": "on_metric", "metric": "m", "values": [1, 2], "patience": 2}, "exactly one of above / below"),
    ({"kind": "warmup", "at": 1, "value": 1, "by": "epoch"}, "use step or progress"),
])
def test_bad_schedules_say_what_is_wrong(spec, match):
    with pytest.raises(ValueError, match=match):
        Schedule("s", spec)


def test_config_validates_schedules_at_load():
    c = conf.load(["conf=ovd", "reward.funcs.ovd_count=0.0",
                   "reward.schedules.ovd_count.weight={kind: warmup, at: 0.5, by: progress, value: 0.5}"])
    assert c.reward.schedules.ovd_count.weight.value == 0.5
    for override, match in [
        ("reward.schedules.rec_iou.iou_threshold={kind: constant, value: 1}", "rec_iou has no parameter 'iou_threshold'"),
        ("reward.schedules.ovd_count.weight={kind: constant, value: 1}", "not in reward.funcs; add it there"),
        ("reward.schedules.rec_iou.weight={kind: linear, start: 0, end: 1, from: 1, to: 0, off: 1}", "booleans"),
        ("reward.schedules.rec_iou.weight=3", "expected a schedule mapping"),
        ("reward.schedules.nope.weight={kind: constant, value: 1}", "unknown reward 'nope'"),
    ]:
        with pytest.raises(conf.ConfigError, match=match):
            conf.load([override])


def _trigger(**over):
    spec = {"name": "pad", "monitor": "hack/boxes_over_gt", "above": 1.5, "patience": 3, "set": {"ovd_count.weight": 0.5}}
    return RuleSchedule({"ovd_odlength": 1.0, "ovd_count": 0.0}, {}, {}, 100, triggers=[{**spec, **over}])


def test_trigger_fires_after_patience_and_latches_without_release():
    rs = _trigger()
    stream = [1.6, 1.7, 1.2, 1.6, 1.6, 1.6, 1.0, 1.0, 1.0, 1.0]  # a dip at step 3 restarts the count
    weights, events = [], []
    for t, v in enumerate(stream):
        weights.append(rs.rules(t).funcs["ovd_count"])
        events.append(rs.observe(t, {"hack/boxes_over_gt": v}))
    assert weights == [0.0] * 6 + [0.5] * 4  # on from the step after the 3rd consecutive bad one; stays on
    assert [i for i, e in enumerate(events) if e] == [5]
    assert events[5] == ["trigger pad on: hack/boxes_over_gt > 1.5 for 3 steps -> ovd_count.weight=0.5"]
    assert rs.scalars(rs.rules(9)) == {"rule/ovd_count/weight": 0.5}


def test_trigger_hysteresis_turns_off_only_past_the_release_bar():
    rs = _trigger(patience=2, release=1.1)
    stream = [2.0, 2.0, 1.3, 1.3, 1.3, 1.0, 1.4, 1.0, 1.0, 1.6]  # between release and bar: stays on
    on = []
    for t, v in enumerate(stream):
        rs.observe(t, {"hack/boxes_over_gt": v})
        on.append(rs.rules(t + 1).funcs["ovd_count"] == 0.5)
    assert on == [False, True, True, True, True, True, True, True, False, False]
    with pytest.raises(ValueError, match="release=1.6 must be on the other side"):
        _trigger(release=1.6)


def test_trigger_overrides_a_schedule_and_resume_replays_it():
    spec = {"ovd_count": {"weight": {"kind": "linear", "start": 0, "end": 10, "from": 0.0, "to": 0.2}}}
    trig = [{"monitor": "m", "below": 0.1, "patience": 1, "set": {"ovd_count.weight": 1.0}}]
    rows = [{"step": t + 1, "m": v} for t, v in enumerate([0.5, 0.05, 0.5, 0.5])]
    full = RuleSchedule({"ovd_count": 0.0}, {}, spec, 10, triggers=trig)
    seen = []
    for t, r in enumerate(rows):
        seen.append(full.rules(t).funcs["ovd_count"])
        full.observe(t, r)
    assert seen == pytest.approx([0.0, 0.02, 1.0, 1.0])  # the schedule until the trigger, then the trigger
    resumed = RuleSchedule({"ovd_count": 0.0}, {}, spec, 10, triggers=trig)
    resumed.replay(rows[:2])
    assert [resumed.rules(t).funcs["ovd_count"] for t in (2, 3)] == [1.0, 1.0]


@pytest.mark.parametrize("trig, match", [
    ({"monitor": "m", "patience": 1, "set": {"ovd_count.weight": 1}}, "one of above / below"),
    ({"monitor": "m", "above": 1, "patience": 1, "set": {"ovd_count": 1}}, "name <reward>.weight"),
    ({"monitor": "m", "above": 1, "patience": 0, "set": {"ovd_count.weight": 1}}, "at least 1"),
    ({"monitor": "m", "above": 1, "patience": 1, "set": {"rec_iou.weight": 1}}, "rec_iou is not in reward.funcs"),
    ({"monitor": "m", "above": 1, "patience": 1, "set": {"ovd_count.base": "x"}}, "finite number"),
    ({"monitor": "m", "above": 1, "patience": 1, "set": {"ovd_count.weight": 1}, "act": 2}, "unknown: act"),
    ({"monitor": "m", "above": 1, "patience": 1}, "missing: set or screen"),
    ({"monitor": "m", "above": 1, "patience": 1, "screen": ["long"]}, "screen: a list of flags among"),
    ({"monitor": "m", "above": 1, "patience": 1, "screen": []}, "screen: a list of flags among"),
])
def test_bad_triggers_say_what_is_wrong(trig, match):
    with pytest.raises(ValueError, match=match):
        RuleSchedule({"ovd_count": 0.0}, {}, {}, 10, triggers=[trig])


def test_default_ovd_config_ships_the_padding_and_duplicate_triggers():
    c = conf.load(["conf=ovd"])
    rs = RuleSchedule(dict(c.reward.funcs), {}, {}, 100, triggers=conf.OmegaConf.to_container(c.reward.triggers))
    assert rs.rules(0).funcs["ovd_count"] == 0.0 and rs.rules(0).funcs["repetition"] == 0.0
    for t in range(5):  # five padded steps
        rs.observe(t, {"hack/boxes_over_gt": 2.0, "hack/duplicate_box_frac": 0.0})
    assert rs.rules(5).funcs["ovd_count"] == 0.5 and rs.rules(5).funcs["repetition"] == 0.0


def test_a_screening_trigger_keeps_flagged_completions_out_while_it_is_on():
    rs = RuleSchedule({"ovd_odlength": 1.0}, {}, {}, 100, triggers=[
        {"name": "dup", "monitor": "hack/duplicate_box_frac", "above": 0.2, "patience": 2, "release": 0.05,
         "screen": ["duplicate_boxes", "whole_image"]}])
    screening, events = [], []
    for t, v in enumerate([0.3, 0.3, 0.1, 0.01, 0.01]):
        events += rs.observe(t, {"hack/duplicate_box_frac": v})
        screening.append(rs.screening())
    on = frozenset({"duplicate_boxes", "whole_image"})
    assert screening == [frozenset(), on, on, on, frozenset()]
    assert events == ["trigger dup on: hack/duplicate_box_frac > 0.2 for 2 steps -> screen duplicate_boxes+whole_image",
                      "trigger dup off: hack/duplicate_box_frac < 0.05 for 2 steps"]
    assert rs.rules(3).funcs == {"ovd_odlength": 1.0}  # screening changes no weight
