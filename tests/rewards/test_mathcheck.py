"""``math_verify``: VLM-R1's symbolic check (the math-verify library) in a child process with a hard
time limit per answer: VLM-R1's scores on a table, hostile answers cut off and counted, any thread."""
import json
import os
import threading
import time

import pytest

import rewards
from rewards import REGISTRY, mathcheck, score, validate_funcs

math_verify = pytest.importorskip("math_verify")


def _c(answer: str) -> str:
    return f"<think>working</think><answer>{answer}</answer>"


# (answer, solution, score): forms VLM-R1's ``verify(parse(solution), parse(answer))`` reads
TABLE = [
    (r"$2\sqrt{2}$", r"$\sqrt{8}$", 1.0),            # equal only algebraically: ``math`` scores this 0
    (r"\boxed{\frac{1}{2}}", "$0.5$", 1.0),
    ("$50\\%$", "$0.5$", 1.0),
    (r"$x = 7$", "$7$", 1.0),
    (r"$\{1, 2\}$", r"$\{2, 1\}$", 1.0),             # sets, in any order
    (r"$(1, 2)$", r"$(2, 1)$", 0.0),                  # tuples are ordered
    (r"$\frac{3}{4}$", "$0.75$", 1.0),
    (r"$\pi$", "$3.14$", 0.0),
    ("$3$", "$4$", 0.0),
    (r"\boxed{x^2 + 2x + 1}", r"$(x+1)^2$", 1.0),
    (r"$\sqrt{2}/2$", r"$\frac{1}{\sqrt{2}}$", 1.0),
]


@pytest.mark.parametrize("answer,solution,expected", TABLE)
def test_scores_equal_vlm_r1s_math_verify_on_a_table(answer, solution, expected):
    reference = float(math_verify.verify(math_verify.parse(solution), math_verify.parse(answer)))  # VLM-R1's call
    assert reference == expected
    assert REGISTRY["math_verify"](_c(answer), solution) == expected


def test_bare_latex_is_read_as_latex_and_failures_are_named():
    f = REGISTRY["math_verify"]
    assert f.evaluate(_c(r"2\sqrt{2}"), r"\sqrt{8}") == (1.0, None)  # without $: parse alone reads "2"
    assert f.evaluate(_c("the cat"), "$3$") == (0.0, "unparsable")
    assert f.evaluate(_c("3"), "the cat") == (0.0, "unparsable_solution")
    assert f.evaluate(_c("no tags, last answer wins: 3"), "3") == (1.0, None)


# Each would keep sympy busy for minutes to forever (a huge power tower, factorial, exponent, nesting)
HOSTILE = ["$" + "2^{" * 6 + "99" + "}" * 6 + "$", r"$(10^{10^{10}})!$", r"$99999999999^{99999999999}$",
           "$" + "(" * 3000 + "1" + ")" * 3000 + "$"]


@pytest.mark.timeout(120)
def test_an_answer_that_would_hang_scores_zero_at_its_time_limit_and_the_next_is_scored():
    before = mathcheck.CHECKER.timeouts
    for bomb in HOSTILE:
        t0 = time.monotonic()
        s = score(_c(bomb), "$5$", {"math_verify": 1.0}, params={"math_verify": {"timeout_s": 1.0}})
        took = time.monotonic() - t0
        assert (s.total, s.failures) == (0.0, {"math_verify": "timeout"})
        assert took < 1.0 + 30  # the limit, plus starting a fresh child on a loaded machine
        assert REGISTRY["math_verify"](_c(r"$\sqrt{8}$"), r"$2\sqrt{2}$") == 1.0  # a fresh child answers
    assert mathcheck.CHECKER.timeouts - before == len(HOSTILE)


def test_a_killed_child_is_gone_and_the_checker_runs_from_any_thread():
    results = []

    def work():  # the library's own time limit (signal.alarm) raises outside the main thread
        results.append(REGISTRY["math_verify"](_c(r"$\frac{6}{8}$"), "$0.75$"))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [1.0] * 4
    pid = mathcheck.CHECKER._proc.pid
    assert REGISTRY["math_verify"](_c(HOSTILE[0]), "$5$", timeout_s=0.5) == 0.0
    with pytest.raises(ProcessLookupError):  # reaped, not left computing
        os.kill(pid, 0)


def test_a_missing_package_is_a_clear_error_at_configuration(monkeypatch):
    monkeypatch.setattr(REGISTRY["math_verify"], "needs", ("math-verify", "math_verify_not_installed"))
    with pytest.raises(KeyError, match="pip install math-verify"):
        validate_funcs({"format": 1.0, "math_verify": 1.0})
    assert rewards.unavailable("format") is None


def test_a_row_naming_it_without_the_package_is_a_counted_skip(tmp_path, monkeypatch):
    from PIL import Image

    from data.loaders import load_prompts
    Image.new("RGB", (64, 48), "white").save(tmp_path / "a.png")
    row = {"image": "a.png", "conversations": [{"from": "human", "value": "<image>What is 6/8?"},
                                                {"from": "gpt", "value": "$0.75$"}]}
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([json.dumps({**row, "id": "plain"}),
                               json.dumps({**row, "id": "mv", "accu_reward_method": "math_verify"})]) + "\n")
    prompts, _ = load_prompts(str(path), str(tmp_path), "qa")
    assert [p.id for p in prompts] == ["plain", "mv"]
    monkeypatch.setattr(REGISTRY["math_verify"], "needs", ("math-verify", "math_verify_not_installed"))
    prompts, report = load_prompts(str(path), str(tmp_path), "qa")
    assert [p.id for p in prompts] == ["plain"] and dict(report.skipped) == {"unknown_reward": 1}
    assert "pip install math-verify" in report.summary()


@pytest.mark.timeout(120)
def test_a_chunk_of_hostile_answers_ends_within_its_budget_not_the_reward_timeout():
    """A reward worker scores a chunk within half of reward.timeout_s (``budget_s``): once the chunk's
    math_verify answers have spent it, the rest score 0 (timeout) without running, so the pool never
    takes a worker busy with hostile answers for a hung one."""
    from actors.reward_worker import RewardWorker, ScoreTask
    tasks = [ScoreTask(("p", i), _c(HOSTILE[i % len(HOSTILE)]), "$5$", None, None, None) for i in range(8)]
    tasks.append(ScoreTask(("p", 8), _c(r"$\sqrt{25}$"), "$5$", None, None, None))
    worker = RewardWorker({"format": 1.0, "math_verify": 1.0}, params={"math_verify": {"timeout_s": 1.0}},
                          budget_s=2.0)
    starts = mathcheck.CHECKER.starts
    out = worker.score(tasks)
    assert out["failures"] == {"math_verify/timeout": 9}  # the easy last one too: the budget was spent
    assert [v["math_verify"] for v in out["values"]] == [0.0] * 9
    assert mathcheck.CHECKER.starts - starts <= 3  # at most ~2 s of answers ran, not 8 x 1 s
    unbudgeted = RewardWorker({"format": 1.0, "math_verify": 1.0}).score(tasks[-1:])
    assert unbudgeted["values"][0]["math_verify"] == 1.0 and not unbudgeted["failures"]


def test_the_checker_pickles_as_the_processs_own():
    """Ray pickles by value a worker class it cannot import by name (tests/faults.py's subclasses):
    the checker inside must pickle as a reference, never its lock and child."""
    import pickle

    import cloudpickle
    assert pickle.loads(cloudpickle.dumps(mathcheck.CHECKER)) is mathcheck.CHECKER
