"""Accuracy rewards for answers that are not boxes (VLM-R1's default, mcq, yes_no, math, numeric,
all_match; fuzzy): hand-worked values of VLM-R1's rules, and the fuzzy ratio against Levenshtein."""
import time

import pytest
from hypothesis import given, settings, strategies as st

from rewards import REGISTRY, resolve, score
from rewards.answers import MAX_CHARS, extract_choice, math_equal, ratio
from tests.budget import cases


def _c(answer: str) -> str:
    return f"<think>looking</think><answer>{answer}</answer>"


@settings(max_examples=cases(400), deadline=None)
@given(st.text(alphabet="abcde xyz", max_size=60), st.text(alphabet="abcde xyz", max_size=60))
def test_ratio_equals_levenshtein(a, b):
    import Levenshtein
    assert ratio(a, b) == pytest.approx(Levenshtein.ratio(a, b), abs=1e-12)


def test_ratio_is_fast_on_long_texts():
    a, b = "the red circle " * 5000, "a blue square " * 5000
    t0 = time.perf_counter()
    v = ratio(a, b)
    assert 0 < v < 1 and time.perf_counter() - t0 < 5  # cut at MAX_CHARS; bit-parallel (generous bound)
    assert ratio(a + "x" * MAX_CHARS, a) == ratio(a[:MAX_CHARS], a[:MAX_CHARS])


@pytest.mark.parametrize("text,choice", [
    ("B", "B"), ("B.", "B"), ("(C)", None),        # a letter followed by ")" is not a choice in VLM-R1's rule
    ("The answer is D.", "D"), ("A, but I think the correct answer is C.", "C"),  # keyword + end of text win
    ("ABC.", None),                                  # letters after a capital are not choices
    ("yes", None), ("", None)])
def test_extract_choice_follows_vlm_r1s_rule(text, choice):
    assert extract_choice(text) == choice


@pytest.mark.parametrize("name,answer,solution,value", [
    ("mcq", "B", "B", 1.0), ("mcq", "I choose C.", "B", 0.0), ("mcq", "b", "B", 0.0),   # lower case is no choice
    ("mcq", "The answer is B.", "<answer>B</answer>", 1.0),
    ("yes_no", "Yes, there is one.", "yes", 1.0), ("yes_no", "No.", "yes", 0.0),
    ("yes_no", "maybe", "perhaps", 1.0),              # VLM-R1: neither says yes or no -> equal
    ("numeric", "3", "3.0", 1.0), ("numeric", "3 shapes", "3", 0.0), ("numeric", " 1e3 ", "1000", 1.0),
    ("math", "\\boxed{\\frac{3}{4}}", "0.75", 1.0), ("math", "x = 12", "12", 1.0), ("math", "25%", "1/4", 1.0),
    ("math", "1,250", "1250", 1.0), ("math", "0.76", "3/4", 0.0), ("math", "\\sqrt{8}", "2\\sqrt{2}", 0.0),
    ("all_match", "The Red Circle.", "the red circle", 1.0), ("all_match", "red circle", "the red circle", 0.0),
    ("fuzzy", "red circle", "red circle", 1.0),
])
def test_hand_worked_values(name, answer, solution, value):
    assert REGISTRY[name](_c(answer), solution) == pytest.approx(value)


def test_default_dispatches_like_vlm_r1():
    f = REGISTRY["answer"]
    assert f(_c("\\frac{1}{2}"), "0.5") == 1.0                 # math-equal first
    assert f(_c("4"), "5") == 0.0                              # digits in the truth, both numbers: exact
    assert f(_c("four"), "4 shapes") == pytest.approx(ratio("four", "4 shapes"))  # not numbers: fuzzy
    assert f(_c("I think C."), "C.") == 1.0 and f(_c("A."), "C.") == 0.0  # an option letter: mcq
    assert f(_c("the red circle"), "the red circles") == pytest.approx(ratio("the red circle", "the red circles"))
    # no <answer>: the whole text is the answer (not a number here, so fuzzy)
    assert f("7", "7") == 1.0 and f("no tags at all: 7", "7") == pytest.approx(ratio("no tags at all: 7", "7"))
    assert resolve("default") == "answer"  # VLM-R1's name for it


def test_a_row_method_replaces_the_accuracy_reward_for_every_new_method():
    for method in ("default", "mcq", "yes_no", "math", "numeric", "all_match", "fuzzy"):
        s = score(_c("B"), "B", {"format": 1.0, "rec_iou": 2.0}, accu_method=method)
        assert set(s.values) == {"format", resolve(method)} and s.total == pytest.approx(1.0 + 2.0 * s.values[resolve(method)])


def test_math_equal_is_symmetric_on_numbers():
    for a, b in [("0.5", "1/2"), ("50\\%", "0.5"), ("$3$", "3"), ("1e-3", "0.001")]:
        assert math_equal(a, b) and math_equal(b, a)
    assert not math_equal("", "")  # an empty answer never matches
    assert math_equal("1/0", "1/0") and not math_equal("1/0", "2/0")  # no value (division by zero): text compare
