"""Every numeric key of conf/base.yaml has a range, and a value outside it is refused at load with
one line naming the key, the value and the range."""
import math

import pytest
from omegaconf import OmegaConf

import conf
from conf.ranges import RANGES, bounds

BASE = conf.flatten(OmegaConf.load(conf.CONF_DIR / "base.yaml"))
NUMERIC = sorted(k for k, v in BASE.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                 and k not in conf.MIXED and k not in conf.CHOICES)


def test_every_numeric_key_has_a_range_and_every_range_a_key():
    assert set(NUMERIC) - set(RANGES) == set()
    assert set(RANGES) - set(BASE) == set()  # no range for a key that does not exist
    for key, value in BASE.items():  # the defaults themselves are in range
        if key in RANGES and value is not None:
            conf.ranges.check(key, value)


def _outside(spec: str) -> list:
    lo, lo_in, hi, hi_in = bounds(spec)
    out = [lo - 1 if lo_in else lo] if lo > -math.inf else []
    if hi < math.inf:
        out.append(hi + 1 if hi_in else hi)
    return out


@pytest.mark.parametrize("key", sorted(RANGES))
def test_a_value_out_of_range_is_refused_naming_key_value_and_range(key):
    spec = RANGES[key]
    for bad in _outside(spec):
        bad = int(bad) if isinstance(BASE[key], int) and float(bad).is_integer() else bad
        with pytest.raises(conf.ConfigError, match=rf"^{key.replace('.', '[.]')}={bad!r} is out of range: it must be "):
            conf.load([f"{key}={bad}"])


def test_the_issues_examples_and_null_defaults():
    for arg, message in (("learner.world_size=0", "learner.world_size=0 is out of range: it must be >= 1"),
                         ("trainer.max_restarts=-1", "trainer.max_restarts=-1 is out of range: it must be >= 0"),
                         ("trainer.max_bad_steps=0", "trainer.max_bad_steps=0 is out of range: it must be >= 1"),
                         ("rollout.temperature=0", "rollout.temperature=0 is out of range: it must be > 0"),
                         ("learner.lr=-1", "learner.lr=-1 is out of range: it must be > 0"),
                         ("rollout.top_p=1.5", "rollout.top_p=1.5 is out of range: it must be > 0 and <= 1"),
                         ("eval.max_samples=lots", "eval.max_samples='lots' should be a number >= 1"),
                         ("cluster.metrics_port=70000", "cluster.metrics_port=70000 is out of range")):
        with pytest.raises(conf.ConfigError) as e:
            conf.load([arg])
        assert str(e.value).startswith(message), str(e.value)
    c = conf.load(["eval.max_samples=2000", "model.max_pixels=12845056", "eval.max_samples=null"])
    assert c.eval.max_samples is None and c.model.max_pixels == 12845056
