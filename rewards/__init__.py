"""Rule rewards of VLM-R1, exact, total and fast. Reward workers call exactly this.

``REGISTRY`` maps a name to ``fn(completion: str, solution: str, **info) -> float``. ``info``
may carry ``image_size=(w, h)`` (original image) and ``input_size=(w, h)`` (the frame the model
writes boxes in: the resized input for Qwen2/2.5-VL, 1000 x 1000 for a 0-1000 family such as
Qwen3-VL, see ``models.answer_frame``; with both, predicted boxes are rescaled to original pixels
first, as VLM-R1 does) and
``box_convention`` (``"vlm_r1"`` default or ``"continuous"``, see ``rewards.boxes``). Unknown
keyword arguments are ignored. Every function returns a finite float in its range for any
string, never raises, and never evaluates model text.

=====================  =========  ==========================================================
name                   range      meaning
=====================  =========  ==========================================================
format                 {0, 1}     ``<think>...</think>`` then ``<answer>...</answer>``, whole text
rec_format             {0, 1}     think, then an answer holding a JSON object with a 4-int box
rec_iou                [0, 1]     IoU of the first answer box with the ground-truth box
rec_acc                {0, 1}     ``rec_iou > 0.5`` (the evaluation criterion)
ovd_map                [0, 1]     COCO mAP@[.5:.95] of the predicted list for this image
ovd_map50              [0, 1]     COCO AP50 of the predicted list for this image
ovd_odlength           [0, 1]     ``ovd_map * min(1, n_gt / n_pred)``
ovd_weighted_sum       [0, 1]     0.7 * matched IoU + 0.3 * (1 - (miss + false-alarm) / 2)
repetition             [-1, 0]    ``-(1 - unique / total)`` over (box, label) items
rec_giou               [0, 1]     ``(1 + GIoU) / 2`` of the first answer box (ranks misses too)
rec_iou_thresh         [0, 1]     ``rec_iou`` where it reaches ``iou_threshold`` (0.5), else 0
ovd_precision          [0, 1]     matched / predicted boxes, one-to-one at ``iou_threshold``
ovd_recall             [0, 1]     matched / ground-truth boxes, one-to-one at ``iou_threshold``
ovd_f1                 [0, 1]     harmonic mean of ``ovd_precision`` and ``ovd_recall``
ovd_count              (0, 1]     ``base ** |n_pred - n_gt|`` (V-Triune's size penalty, base 0.6)
ovd_iou                [0, 1]     summed IoU of same-label boxes matched one-to-one / max(n_pred, n_gt)
ovd_giou               [0, 1]     as ``ovd_iou`` with ``(1 + GIoU) / 2`` per pair (ranks misses too)
answer                 [0, 1]     VLM-R1's ``default``: math-equal, else number / letter / fuzzy
mcq                    {0, 1}     the answer's option letter is the solution's
yes_no                 {0, 1}     the first yes/no of the answer is the solution's
numeric                {0, 1}     the same number (``float``, exact)
math                   {0, 1}     equal as numbers, fractions, percentages, or normalised text
math_verify            {0, 1}     equal as sympy expressions (``math-verify``, VLM-R1's symbolic check)
all_match              {0, 1}     cleaned answer == cleaned solution (VLM-R1's GUI task)
fuzzy                  [0, 1]     indel similarity of the cleaned texts (``Levenshtein.ratio``)
=====================  =========  ==========================================================

The eight from ``rec_giou`` are in ``rewards.grounding``, the last eight (answers that are not
boxes, with their deliberate differences from VLM-R1) in ``rewards.answers``; their parameters (``iou_threshold``, ``base``) are
set per reward with ``reward.params`` (``RewardFn.params`` lists each one's defaults).

Worked example (a REC completion scored by the config ``{rec_format: 1.0, rec_iou: 1.0}``):

>>> c = '<think>blue, left</think><answer>{"bbox_2d": [10, 10, 50, 50]}</answer>'
>>> REGISTRY["rec_iou"](c, "[10, 10, 50, 60]")      # 40*40 / (40*40 + 40*50 - 40*40)
0.8
>>> score(c, "[10, 10, 50, 60]", {"rec_format": 1.0, "rec_iou": 1.0}).total
1.8
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from typing import Callable

from . import answers, grounding, mathcheck, ovd, rec


class RewardFn:
    """A named reward: calling it gives the value; ``detail`` gives ``(value, failure)``.

    A class rather than a closure so that rewards pickle by reference (Ray ships them)."""

    def __init__(self, name: str, detail: Callable, low: float, high: float, accuracy: bool,
                 params: dict | None = None, needs: tuple[str, str] | None = None):
        self.name, self.detail, self.low, self.high, self.accuracy = name, detail, low, high, accuracy
        self.params = dict(params or {})  # numeric parameters it accepts, with their defaults
        # (pip package, module) it calls, when that is not a dependency of rewards/ itself
        self.needs = needs
        self.__doc__ = detail.__doc__

    def __call__(self, completion: str, solution: str, **info) -> float:
        return self.evaluate(completion, solution, **info)[0]

    def evaluate(self, completion, solution, **info) -> tuple[float, str | None]:
        """``(value, failure)`` with the value clipped to the range and non-strings refused."""
        if not isinstance(completion, str) or not isinstance(solution, str):
            return self.low if self.low >= 0 else 0.0, "not_text"
        value, failure = self.detail(completion, solution, **info)
        if not math.isfinite(value):
            return (self.low if self.low >= 0 else 0.0), "non_finite"
        return min(self.high, max(self.low, float(value))), failure

    def __reduce__(self):
        return (_lookup, (self.name,))

    def __repr__(self) -> str:
        return f"<reward {self.name} [{self.low}, {self.high}]>"


def _lookup(name: str) -> RewardFn:
    return REGISTRY[name]


REGISTRY: dict[str, RewardFn] = {
    r.name: r for r in [
        RewardFn("format", rec.format_detail, 0.0, 1.0, accuracy=False),
        RewardFn("rec_format", rec.rec_format_detail, 0.0, 1.0, accuracy=False),
        RewardFn("rec_iou", rec.rec_iou_detail, 0.0, 1.0, accuracy=True),
        RewardFn("rec_acc", rec.rec_acc_detail, 0.0, 1.0, accuracy=True),
        RewardFn("ovd_map", ovd.ovd_map_detail, 0.0, 1.0, accuracy=True),
        RewardFn("ovd_map50", ovd.ovd_map50_detail, 0.0, 1.0, accuracy=True),
        RewardFn("ovd_odlength", ovd.ovd_odlength_detail, 0.0, 1.0, accuracy=True),
        RewardFn("ovd_weighted_sum", ovd.ovd_weighted_sum_detail, 0.0, 1.0, accuracy=True),
        RewardFn("repetition", ovd.repetition_detail, -1.0, 0.0, accuracy=False),
        RewardFn("rec_giou", grounding.rec_giou_detail, 0.0, 1.0, accuracy=True),
        RewardFn("rec_iou_thresh", grounding.rec_iou_thresh_detail, 0.0, 1.0, accuracy=True,
                 params={"iou_threshold": 0.5}),
        RewardFn("ovd_precision", grounding.ovd_precision_detail, 0.0, 1.0, accuracy=True,
                 params={"iou_threshold": 0.5}),
        RewardFn("ovd_recall", grounding.ovd_recall_detail, 0.0, 1.0, accuracy=True,
                 params={"iou_threshold": 0.5}),
        RewardFn("ovd_f1", grounding.ovd_f1_detail, 0.0, 1.0, accuracy=True, params={"iou_threshold": 0.5}),
        RewardFn("ovd_count", grounding.ovd_count_detail, 0.0, 1.0, accuracy=False, params={"base": 0.6}),
        RewardFn("ovd_iou", grounding.ovd_iou_detail, 0.0, 1.0, accuracy=True),
        RewardFn("ovd_giou", grounding.ovd_giou_detail, 0.0, 1.0, accuracy=True),
        RewardFn("answer", answers.default_detail, 0.0, 1.0, accuracy=True),
        RewardFn("mcq", answers.mcq_detail, 0.0, 1.0, accuracy=True),
        RewardFn("yes_no", answers.yes_no_detail, 0.0, 1.0, accuracy=True),
        RewardFn("numeric", answers.numeric_detail, 0.0, 1.0, accuracy=True),
        RewardFn("math", answers.math_detail, 0.0, 1.0, accuracy=True),
        RewardFn("math_verify", answers.math_verify_detail, 0.0, 1.0, accuracy=True, params={"timeout_s": 5.0},
                 needs=("math-verify", "math_verify")),
        RewardFn("all_match", answers.all_match_detail, 0.0, 1.0, accuracy=True),
        RewardFn("fuzzy", answers.fuzzy_detail, 0.0, 1.0, accuracy=True),
    ]
}

# Names VLM-R1 data files use in "accu_reward_method", mapped to ours.
ALIASES = {"iou": "rec_iou", "map": "ovd_map", "map50": "ovd_map50", "odLength": "ovd_odlength",
           "od": "ovd_map", "weighted_sum": "ovd_weighted_sum", "default": "answer"}


def resolve(name: str) -> str:
    """A registry name from a name or VLM-R1 alias; a clear error for anything else, and for a
    reward whose package is not installed."""
    name = ALIASES.get(name, name)
    if name not in REGISTRY:
        raise KeyError(f"unknown reward {name!r}; known: {sorted(REGISTRY)} "
                       f"(VLM-R1 aliases: {sorted(ALIASES)})")
    why = unavailable(name)
    if why:
        raise KeyError(why)
    return name


def unavailable(name: str) -> str | None:
    """Why a known reward cannot run here (its package is missing), else None."""
    fn = REGISTRY[ALIASES.get(name, name)]
    if fn.needs is None or importlib.util.find_spec(fn.needs[1]) is not None:
        return None
    return f"reward {fn.name!r} needs the {fn.needs[0]} package: pip install {fn.needs[0]}"


def validate_funcs(funcs: dict[str, float]) -> dict[str, float]:
    """Check a ``reward.funcs`` mapping (name -> weight); returns it with names resolved."""
    if not funcs:
        raise ValueError("reward.funcs is empty: name at least one reward, e.g. {rec_iou: 1.0}")
    out = {}
    for name, weight in funcs.items():
        if not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"reward.funcs.{name}: weight must be a finite number, got {weight!r}")
        out[resolve(name)] = float(weight)
    return out


def validate_params(params: dict) -> dict[str, dict[str, float]]:
    """Check a ``reward.params`` mapping (reward name -> {parameter: value}); returns it with names
    resolved and values as floats. Only parameters a reward declares are accepted."""
    out = {}
    for name, values in (params or {}).items():
        fn = REGISTRY[resolve(name)]
        if not isinstance(values, dict):
            raise ValueError(f"reward.params.{name}: expected a mapping of parameter -> number, got {values!r}")
        for key, value in values.items():
            if key not in fn.params:
                known = ", ".join(fn.params) or "none"
                raise ValueError(f"reward.params.{name}.{key}: {fn.name} has no parameter {key!r} (it takes: {known})")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"reward.params.{name}.{key}: must be a finite number, got {value!r}")
        out[fn.name] = {k: float(v) for k, v in values.items()}
    return out


@dataclass
class Scored:
    """One completion's rewards: weighted ``total``, each reward's value, and parse failures."""
    total: float
    values: dict[str, float]
    failures: dict[str, str] = field(default_factory=dict)


def score(completion: str, solution: str, funcs: dict[str, float],
          accu_method: str | None = None, params: dict | None = None, **info) -> Scored:
    """Weighted sum of the configured rewards. A row's ``accu_method`` (its
    ``accu_reward_method``) replaces the configured accuracy reward(s), keeping their weight.
    ``params`` (reward name -> {parameter: value}, see ``validate_params``) reach their reward only."""
    plan = dict(funcs)
    if accu_method:
        override = resolve(accu_method)
        acc = [n for n in plan if REGISTRY[n].accuracy]
        weight = sum(plan.pop(n) for n in acc) if acc else 1.0
        plan[override] = plan.get(override, 0.0) + weight
    values, failures, total = {}, {}, 0.0
    for name, weight in plan.items():
        value, failure = REGISTRY[name].evaluate(completion, solution, **info, **(params or {}).get(name, {}))
        values[name] = value
        total += weight * value
        if failure is not None:
            failures[name] = failure
    return Scored(total=total, values=values, failures=failures)


__all__ = ["REGISTRY", "ALIASES", "RewardFn", "Scored", "score", "resolve", "unavailable", "validate_funcs",
           "validate_params"]
