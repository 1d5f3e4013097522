"""Rules that change during a run: schedules for reward weights and reward parameters.

The reward of a completion at step t is ``sum_k w_k(t) * R_k(completion, solution; theta_k(t))``.
Each weight ``w_k`` (``reward.funcs``) and each numeric parameter ``theta_k`` (``reward.params``)
may follow a schedule under ``reward.schedules.<reward>.<weight | parameter>``:

    reward:
      schedules:
        rec_iou_thresh:                        # V-Triune: 0.85 for 10% of training, 0.95 to 25%, then 0.99
          iou_threshold: {kind: piecewise, by: progress, points: [[0, 0.85], [0.1, 0.95], [0.25, 0.99]]}
        format:
          weight: {kind: linear, by: step, start: 0, end: 200, from: 1.0, to: 0.2}
        ovd_count:
          weight: {kind: warmup, at: 50, value: 0.5}        # off (0) before step 50, then 0.5

Kinds (``by``: ``step``, 0-based, the default; or ``progress`` = step / total steps, in [0, 1]):

``constant``   ``value``
``piecewise``  ``points: [[at, value], ...]``: the value of the last point at or before now
``linear``     ``start, end, from, to``: ``from`` until ``start``, ``to`` after ``end``, linear between
``cosine``     the same ends, half a cosine between (flat at both ends)
``warmup``     ``at, value`` (and ``before``, default 0): ``before`` until ``at``, ``value`` from it
``on_metric``  ``metric, values: [v0, v1, ...], above | below: bar, patience: N``: starts at v0 and
               advances one value each time the logged ``metric`` (a ``metrics.jsonl`` key such as
               ``reward/rec_iou``) has been past the bar for N steps in a row (the count restarts
               after each advance). This is the one kind with state; it is saved in checkpoints.

Pure functions of (step, progress) except ``on_metric``, whose state is a function of the logged
rows, which every checkpoint holds; so a resumed run (``replay`` of the saved rows) computes
what the uninterrupted run did. The values reach the reward workers with every chunk they score
(``Rules``); reward functions stay pure and see only their parameters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

KINDS = ("constant", "piecewise", "linear", "cosine", "warmup", "on_metric")
_REQUIRED = {"constant": ("value",), "piecewise": ("points",), "linear": ("start", "end", "from", "to"),
             "cosine": ("start", "end", "from", "to"), "warmup": ("at", "value"),
             "on_metric": ("metric", "values", "patience")}
_OPTIONAL = {"kind", "by", "before", "above", "below"}


def _number(where: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: must be a finite number, got {value!r}")
    return float(value)


class Schedule:
    """One scheduled value. ``value(step, progress)``; ``observe(row)`` for ``on_metric``.

    >>> s = Schedule("x", {"kind": "piecewise", "by": "progress", "points": [[0, 0.85], [0.1, 0.95], [0.25, 0.99]]})
    >>> [s.value(0, p) for p in (0.0, 0.099, 0.1, 0.5)]
    [0.85, 0.85, 0.95, 0.99]
    >>> Schedule("w", {"kind": "linear", "start": 10, "end": 20, "from": 1.0, "to": 0.0}).value(15, 0.0)
    0.5
    """

    def __init__(self, name: str, spec: dict):
        self.name = name
        spec = dict(spec)
        kind = spec.get("kind")
        if kind not in KINDS:
            raise ValueError(f"{name}.kind={kind!r}: use one of {list(KINDS)}")
        missing = [k for k in _REQUIRED[kind] if k not in spec]
        unknown = [k for k in spec if k not in _OPTIONAL and k not in _REQUIRED[kind]]
        if any(isinstance(k, bool) for k in unknown):  # YAML 1.1 reads the keys off/on/yes/no as booleans
            unknown = [f"{k} (YAML reads off/on/yes/no keys as booleans)" if isinstance(k, bool) else k for k in unknown]
        if missing or unknown:
            raise ValueError(f"{name}: a {kind} schedule takes {list(_REQUIRED[kind])}"
                             f"{' (missing ' + ', '.join(missing) + ')' if missing else ''}"
                             f"{' (unknown ' + ', '.join(map(str, unknown)) + ')' if unknown else ''}")
        self.kind, self.by = kind, spec.get("by", "step")
        if self.by not in ("step", "progress"):
            raise ValueError(f"{name}.by={self.by!r}: use step or progress")
        self.spec = spec
        if kind == "piecewise":
            pts = spec["points"]
            if not isinstance(pts, (list, tuple)) or not pts or any(not isinstance(p, (list, tuple)) or len(p) != 2
                                                                    for p in pts):
                raise ValueError(f"{name}.points: a non-empty list of [at, value] pairs, got {pts!r}")
            self.points = [(_number(f"{name}.points", a), _number(f"{name}.points", v)) for a, v in pts]
            if [a for a, _ in self.points] != sorted(a for a, _ in self.points):
                raise ValueError(f"{name}.points: the 'at' values must increase, got {pts!r}")
        elif kind in ("linear", "cosine"):
            self.start, self.end = _number(f"{name}.start", spec["start"]), _number(f"{name}.end", spec["end"])
            self.v0, self.v1 = _number(f"{name}.from", spec["from"]), _number(f"{name}.to", spec["to"])
            if not self.end > self.start:
                raise ValueError(f"{name}: end ({self.end}) must be after start ({self.start})")
        elif kind == "warmup":
            self.at, self.on = _number(f"{name}.at", spec["at"]), _number(f"{name}.value", spec["value"])
            self.off = _number(f"{name}.before", spec.get("before", 0.0))
        elif kind == "constant":
            self.const = _number(f"{name}.value", spec["value"])
        else:  # on_metric
            values = spec["values"]
            if not isinstance(values, (list, tuple)) or not values:
                raise ValueError(f"{name}.values: a non-empty list of the values to step through, got {values!r}")
            self.values = [_number(f"{name}.values", v) for v in values]
            if ("above" in spec) == ("below" in spec):
                raise ValueError(f"{name}: an on_metric schedule takes exactly one of above / below")
            self.metric = str(spec["metric"])
            self.bar = _number(f"{name}.bar", spec.get("above", spec.get("below")))
            self.sign = 1.0 if "above" in spec else -1.0
            self.patience = int(_number(f"{name}.patience", spec["patience"]))
            if self.patience < 1:
                raise ValueError(f"{name}.patience must be at least 1")
        self.stage, self.streak = 0, 0  # on_metric state

    def value(self, step: int, progress: float) -> float:
        t = float(step if self.by == "step" else progress)
        if self.kind == "constant":
            return self.const
        if self.kind == "piecewise":
            current = self.points[0][1]
            for at, v in self.points:
                if t >= at:
                    current = v
            return current
        if self.kind == "warmup":
            return self.on if t >= self.at else self.off
        if self.kind in ("linear", "cosine"):
            x = min(1.0, max(0.0, (t - self.start) / (self.end - self.start)))
            if self.kind == "cosine":
                x = (1.0 - math.cos(math.pi * x)) / 2.0
            return self.v0 + (self.v1 - self.v0) * x
        return self.values[self.stage]

    def observe(self, row: dict) -> str | None:
        """Advance an ``on_metric`` schedule on one logged row; a description when it moved."""
        if self.kind != "on_metric" or self.stage + 1 >= len(self.values):
            return None
        v = row.get(self.metric)
        past = isinstance(v, (int, float)) and math.isfinite(v) and self.sign * (v - self.bar) > 0
        self.streak = self.streak + 1 if past else 0
        if self.streak < self.patience:
            return None
        self.stage, self.streak = self.stage + 1, 0
        op = ">" if self.sign > 0 else "<"
        return (f"{self.name}: {self.values[self.stage - 1]:g} -> {self.values[self.stage]:g} "
                f"({self.metric} {op} {self.bar:g} for {self.patience} steps)")


class Trigger:
    """A detected hack switches its counter-rule on: ``monitor`` (a logged metric, e.g. the
    ``hack/...`` signals of every step) past ``above`` (or ``below``) for ``patience`` steps in a
    row turns the trigger on, and its ``set`` (``{"<reward>.weight" | "<reward>.<parameter>": value}``)
    overrides the scheduled values from then on, and its ``screen`` (flags of ``SCREEN_FLAGS``)
    keeps the completions showing any of them out of the policy gradient (advantage 0) while it is
    on. It stays on, unless ``release`` is given: then the
    monitor back past ``release`` (on the other side of the bar: hysteresis, so it does not flap)
    for ``patience`` steps turns it off again.

    >>> t = Trigger("t", {"monitor": "hack/boxes_over_gt", "above": 1.5, "patience": 2, "release": 1.1,
    ...                   "set": {"ovd_count.weight": 0.5}})
    >>> [bool(t.observe({"hack/boxes_over_gt": v})) for v in (1.6, 1.3, 1.6, 1.7, 1.3, 1.0, 1.0)], t.on
    ([False, False, False, True, False, False, True], False)
    """

    KEYS = {"name", "monitor", "above", "below", "patience", "release", "set", "screen"}

    def __init__(self, where: str, spec: dict):
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: expected a mapping {{monitor, above | below, patience, set}}, got {spec!r}")
        unknown = [str(k) for k in spec if k not in self.KEYS]
        missing = [k for k in ("monitor", "patience") if k not in spec] + ([] if "set" in spec or "screen" in spec
                                                                          else ["set or screen"])
        if unknown or missing or ("above" in spec) == ("below" in spec):
            raise ValueError(f"{where}: a trigger takes monitor, one of above / below, patience, set and/or "
                             f"screen (and name, release){'; unknown: ' + ', '.join(unknown) if unknown else ''}"
                             f"{'; missing: ' + ', '.join(missing) if missing else ''}")
        self.name = str(spec.get("name", where))
        self.monitor = str(spec["monitor"])
        self.sign = 1.0 if "above" in spec else -1.0
        self.bar = _number(f"{where}.above/below", spec.get("above", spec.get("below")))
        self.release = None if spec.get("release") is None else _number(f"{where}.release", spec["release"])
        if self.release is not None and self.sign * (self.release - self.bar) > 0:
            raise ValueError(f"{where}.release={self.release:g} must be on the other side of the bar {self.bar:g} "
                             "(or equal to it)")
        self.patience = int(_number(f"{where}.patience", spec["patience"]))
        if self.patience < 1:
            raise ValueError(f"{where}.patience must be at least 1")
        if "set" in spec and (not isinstance(spec["set"], dict) or not spec["set"]):
            raise ValueError(f"{where}.set: a mapping such as {{ovd_count.weight: 0.5}}")
        screen = spec.get("screen", [])
        if not isinstance(screen, list) or any(f not in SCREEN_FLAGS for f in screen) or ("screen" in spec and not screen):
            raise ValueError(f"{where}.screen: a list of flags among {', '.join(SCREEN_FLAGS)}, got {screen!r}")
        self.screen = frozenset(screen)
        self.set = {}
        for key, value in spec.get("set", {}).items():
            reward, _, what = str(key).partition(".")
            if not what:
                raise ValueError(f"{where}.set.{key}: name <reward>.weight or <reward>.<parameter>")
            self.set[(reward, what)] = _number(f"{where}.set.{key}", value)
        self.on, self.streak = False, 0

    def observe(self, row: dict) -> str | None:
        """Update on one logged row; a description when the trigger turned on or off."""
        v = row.get(self.monitor)
        if not (isinstance(v, (int, float)) and math.isfinite(v)):
            self.streak = 0
            return None
        if not self.on:
            past = self.sign * (v - self.bar) > 0
        else:
            past = self.release is not None and self.sign * (v - self.release) < 0
        self.streak = self.streak + 1 if past else 0
        if self.streak < self.patience:
            return None
        self.on, self.streak = not self.on, 0
        what = ", ".join([f"{r}.{w}={x:g}" for (r, w), x in self.set.items()]
                         + ([f"screen {'+'.join(sorted(self.screen))}"] if self.screen else []))
        if self.on:
            op = ">" if self.sign > 0 else "<"
            return f"trigger {self.name} on: {self.monitor} {op} {self.bar:g} for {self.patience} steps -> {what}"
        op = "<" if self.sign > 0 else ">"
        return f"trigger {self.name} off: {self.monitor} {op} {self.release:g} for {self.patience} steps"


def _param_default(reward: str, param: str) -> float:
    """A reward parameter's default, for values only a trigger sets."""
    from . import REGISTRY
    return float(REGISTRY[reward].params[param])


# per-completion flags a trigger can screen out of the gradient (trainer.summary.sample_flags)
SCREEN_FLAGS = ("duplicate_boxes", "whole_image", "extra_boxes", "no_box", "truncated")


@dataclass
class Rules:
    """What the reward workers score with: weights per reward and parameters per reward."""
    funcs: dict[str, float]
    params: dict[str, dict[str, float]] = field(default_factory=dict)


class RuleSchedule:
    """Every schedule of a run, over the configured weights and parameters.

    >>> rs = RuleSchedule({"rec_iou": 1.0, "ovd_count": 0.0}, {},
    ...                   {"ovd_count": {"weight": {"kind": "warmup", "at": 2, "value": 0.5}}}, total_steps=10)
    >>> [rs.rules(s).funcs["ovd_count"] for s in range(4)]
    [0.0, 0.0, 0.5, 0.5]
    >>> rs.scalars(rs.rules(2))
    {'rule/ovd_count/weight': 0.5}
    """

    def __init__(self, funcs: dict, params: dict, schedules: dict, total_steps: int, triggers: list | None = None):
        from . import REGISTRY, resolve
        self.funcs, self.params, self.total = dict(funcs), {k: dict(v) for k, v in params.items()}, max(1, total_steps)
        self.schedules: dict[tuple[str, str], Schedule] = {}
        for reward, per in (schedules or {}).items():
            name = resolve(reward)
            if not isinstance(per, dict):
                raise ValueError(f"reward.schedules.{reward}: expected {{weight | parameter: schedule}}, got {per!r}")
            for what, spec in per.items():
                where = f"reward.schedules.{reward}.{what}"
                if what != "weight" and what not in REGISTRY[name].params:
                    known = ", ".join(["weight", *REGISTRY[name].params])
                    raise ValueError(f"{where}: {name} has no parameter {what!r} (schedulable: {known})")
                if what == "weight" and name not in self.funcs:
                    raise ValueError(f"{where}: {name} is not in reward.funcs; add it there (weight 0.0 to start off)")
                if not isinstance(spec, dict):
                    raise ValueError(f"{where}: expected a schedule mapping such as {{kind: constant, value: 1}}")
                self.schedules[(name, what)] = Schedule(where, spec)
        if not isinstance(triggers or [], list):
            raise ValueError(f"reward.triggers: a list of triggers, got {triggers!r}")
        self.triggers = [Trigger(f"reward.triggers[{i}]", spec) for i, spec in enumerate(triggers or [])]
        for i, t in enumerate(self.triggers):
            t.set = {(resolve(r), w): v for (r, w), v in t.set.items()}
            for (r, w) in t.set:
                if w == "weight" and r not in self.funcs:
                    raise ValueError(f"reward.triggers[{i}].set: {r} is not in reward.funcs; add it there "
                                     "(weight 0.0 to start off)")
                if w != "weight" and w not in REGISTRY[r].params:
                    raise ValueError(f"reward.triggers[{i}].set: {r} has no parameter {w!r} "
                                     f"(settable: {', '.join(['weight', *REGISTRY[r].params])})")
        self.moving = list(self.schedules) + [k for t in self.triggers for k in t.set if k not in self.schedules]

    def __bool__(self) -> bool:
        return bool(self.schedules or self.triggers)

    def rules(self, step: int) -> Rules:
        """The weights and parameters for the batch that trains at ``step`` (0-based)."""
        funcs, params = dict(self.funcs), {k: dict(v) for k, v in self.params.items()}
        progress = min(1.0, step / self.total)
        values = {key: s.value(step, progress) for key, s in self.schedules.items()}
        for t in self.triggers:  # a trigger that is on overrides the schedules
            if t.on:
                values.update(t.set)
        for (name, what), v in values.items():
            if what == "weight":
                funcs[name] = v
            else:
                params.setdefault(name, {})[what] = v
        return Rules(funcs, params)

    def screening(self) -> frozenset:
        """Flags whose completions stay out of the gradient now (triggers that are on)."""
        return frozenset().union(*(t.screen for t in self.triggers if t.on))

    def scalars(self, rules: Rules) -> dict[str, float]:
        """``rule/<reward>/<weight | parameter>`` of every scheduled value, as ``rules`` has them."""
        return {f"rule/{n}/{w}": (rules.funcs[n] if w == "weight" else rules.params.get(n, {}).get(w, _param_default(n, w)))
                for n, w in self.moving}

    def observe(self, step: int, row: dict) -> list[str]:
        """Feed the row logged for ``step`` (``on_metric`` schedules advance on it); returns the
        events, in words: every stepwise value (piecewise, warmup, on_metric) that changes for the
        next step. Linear and cosine ramps change every step and are logged as scalars only."""
        events = []
        progress = lambda t: min(1.0, t / self.total)  # noqa: E731
        for s in self.schedules.values():
            if s.kind == "on_metric":
                if (moved := s.observe(row)):
                    events.append(moved)
            elif s.kind in ("piecewise", "warmup"):
                a, b = s.value(step, progress(step)), s.value(step + 1, progress(step + 1))
                if a != b:
                    events.append(f"{s.name}: {a:g} -> {b:g} from step {step + 2} ({s.by} schedule)")
        events += [e for t in self.triggers if (e := t.observe(row))]
        return events

    def replay(self, history: list[dict]) -> None:
        """Rebuild the state of ``on_metric`` schedules from the rows a checkpoint holds: their state
        is a function of the logged rows, so a resumed run continues exactly where it stopped."""
        for row in history:
            self.observe(int(row["step"]) - 1, row)
