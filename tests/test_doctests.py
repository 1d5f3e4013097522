"""The worked examples in docstrings are part of the documentation: keep them true."""
import doctest
import importlib

import pytest

MODULES = ["conf.hardware", "bench.isa", "actors.rollout", "rewards", "rewards.boxes", "rewards.parse", "rewards.coco_ap", "rewards.grounding", "rewards.schedule", "learner.grpo", "learner.optim", "learner.linear", "trainer.roles",
           "data.prompts", "trainer.pipeline", "conf.ranges", "trainer.cluster"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
