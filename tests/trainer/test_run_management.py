"""Runs on real Ray + vLLM + DeepSpeed: exact resume, checkpoints that load, eval, live metrics."""
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

pytestmark = pytest.mark.e2e
REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def warm_model(tiny_model, tmp_path_factory):
    """A short warm start of the random tiny model (the default builtin:tiny does 400 steps)."""
    from data.tiny_model import warm_start
    cache = tmp_path_factory.mktemp("warmcache")
    old = os.environ.get("VLM_R1_RAY_CACHE")
    os.environ["VLM_R1_RAY_CACHE"] = str(cache)
    try:
        return str(warm_start(pathlib.Path(tiny_model), cache / "warm", steps=120))
    finally:
        if old is None:
            os.environ.pop("VLM_R1_RAY_CACHE")
        else:
            os.environ["VLM_R1_RAY_CACHE"] = old


COMMON = ["conf=rec", "trainer.prompts_per_step=2", "rollout.num_generations=4", "rollout.max_new_tokens=40",
          "learner.lr=2e-4", "trainer.eval_steps=0", "trainer.report=false", "wandb.mode=disabled",
          "cluster.include_dashboard=false"]


def _run(out, model, synthetic, *overrides, env=None, timeout=900, faults=False, code=0):
    """One orchestrator run in a subprocess (``faults``: through tests/faults.py, whose engines and
    learners die or hang as ``env`` says); its metric rows and its output."""
    entry = ["-m", "tests.faults"] if faults else [str(REPO / "orchestrator.py")]
    cmd = [sys.executable, *entry, f"model.path={model}", f"data.synthetic.dir={synthetic}",
           f"trainer.output_dir={out}", *COMMON, *overrides]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert proc.returncode == code, proc.stdout[-3000:] + proc.stderr[-5000:]
    return [json.loads(l) for l in open(out / "metrics.jsonl") if "reward/mean" in l], proc.stdout + proc.stderr


KEYS = ["reward/mean", "reward/rec_format", "reward/rec_iou", "loss", "pg_loss", "kl", "entropy", "completion_len/mean",
        "grad_norm"]


@pytest.fixture(scope="module")
def full(tmp_path_factory, warm_model, synthetic):
    """The uninterrupted 4-step run every interrupted one must reproduce."""
    rows, _ = _run(tmp_path_factory.mktemp("full"), warm_model, synthetic, "trainer.max_steps=4", "trainer.save_steps=2")
    return rows


def _same_run(full, other):
    assert [r["step"] for r in other] == [1, 2, 3, 4]
    for a, b in zip(full, other):
        assert a["prompt_ids"] == b["prompt_ids"]  # same data, in the same order
        for k in KEYS:  # stated tolerance: 1e-4 relative (CPU float reductions), else 1e-6 absolute
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (a["step"], k, a[k], b[k])


def test_stopped_and_resumed_run_reproduces_the_uninterrupted_one(tmp_path, warm_model, synthetic, full):
    part, out = _run(tmp_path / "split", warm_model, synthetic, "trainer.max_steps=4", "trainer.save_steps=2",
                     "trainer.stop_after_steps=2")
    assert len(part) == 2 and "stopped after step 2" in out
    resumed, out = _run(tmp_path / "split", warm_model, synthetic, "trainer.max_steps=4", "trainer.save_steps=2",
                        "trainer.resume=auto")
    assert "resumed from" in out
    assert any(r["reward/std"] > 0 for r in full) and any(r["grad_norm"] > 0 for r in full)  # it really learned
    _same_run(full, resumed)
    ids = [pid for r in resumed for pid in r["prompt_ids"]]
    assert len(ids) == len(set(ids)) == 8  # no prompt repeated or skipped within the epoch
    ckpts = sorted(p.name for p in (tmp_path / "split" / "checkpoints").iterdir())
    assert ckpts == ["step_000002", "step_000004"]


def test_dead_and_hung_rollout_engine_is_replaced_resynced_and_its_prompts_regenerated(tmp_path, warm_model,
                                                                                      synthetic, full):
    # the engine dies at step 2's generate and hangs at step 3's (calls 2 and 4: call 3 regenerates step 2)
    rows, out = _run(tmp_path / "run", warm_model, synthetic, "trainer.max_steps=4", "trainer.save_steps=2",
                     "rollout.timeout_s=20", faults=True,
                     env={"FAULT_DIR": str(tmp_path), "FAULT_ENGINE": "exit@2,hang@4"})
    assert (tmp_path / "engine.exit@2.fired").exists() and (tmp_path / "engine.hang@4.fired").exists()
    assert out.count("rollout engine 0 died or hung mid-generation: replacing it") == 2
    assert "gave nothing for 20s" in out
    assert [r["rollout/engine_restarts"] for r in rows] == [0, 1, 2, 2]  # cumulative, logged every step
    # the replacement got the learner's current weights before regenerating: the same samples,
    # the same rewards and the same updates as the uninterrupted run
    _same_run(full, rows)


def test_dead_learner_stops_clearly_or_restarts_from_the_last_checkpoint(tmp_path, warm_model, synthetic, full):
    env = {"FAULT_DIR": str(tmp_path), "FAULT_LEARNER": "exit@3"}  # rank 0 dies in step 3's update
    _, out = _run(tmp_path / "stop", warm_model, synthetic, "trainer.max_steps=4", "trainer.save_steps=2",
                  faults=True, env=env, code=1)
    assert "a learner rank died" in out and "step_000002" in out and "trainer.resume=auto" in out
    (tmp_path / "learner.calls").unlink()
    (tmp_path / "learner.exit@3.fired").unlink()
    rows, out = _run(tmp_path / "auto", warm_model, synthetic, "trainer.max_steps=4", "trainer.save_steps=2",
                     "trainer.max_restarts=1", faults=True, env=env)
    assert (tmp_path / "learner.exit@3.fired").exists()
    assert "restart 1 of trainer.max_restarts=1" in out and "resumed from" in out
    _same_run(full, rows)


def test_checkpoint_loads_in_transformers_and_evaluates_with_vllm(tmp_path, warm_model, synthetic):
    from transformers import AutoModelForImageTextToText, AutoProcessor
    _run(tmp_path / "run", warm_model, synthetic, "trainer.max_steps=1", "trainer.keep_checkpoints=1")
    hf = tmp_path / "run" / "checkpoints" / "step_000001" / "hf"
    model = AutoModelForImageTextToText.from_pretrained(hf)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    AutoProcessor.from_pretrained(hf)
    cmd = [sys.executable, str(REPO / "orchestrator.py"), "conf=rec", "mode=eval", f"model.path={hf}",
           f"data.synthetic.dir={synthetic}", "eval.max_samples=12", f"trainer.output_dir={tmp_path / 'eval'}",
           "cluster.include_dashboard=false"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert res["metrics"]["samples"] == 12 and len(res["records"]) == 12
    assert 0 <= res["metrics"]["accuracy"] <= 1 and "| accuracy |" in proc.stdout
    assert res["metrics"]["parse_failures"] < 12  # the warm-started format survives the save/load round trip


def test_metrics_reach_the_prometheus_endpoint_during_a_run(tmp_path, warm_model, synthetic):
    from learner.weight_sync import free_port
    port = free_port()
    seen: dict = {}

    def scrape():
        deadline = time.time() + 600
        while time.time() < deadline and "done" not in seen:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                if "ray_vlmr1_reward_mean" in text:
                    seen["text"] = text
                    return
            except OSError:
                pass
            time.sleep(0.5)

    t = threading.Thread(target=scrape, daemon=True)
    t.start()
    _run(tmp_path / "run", warm_model, synthetic, "trainer.max_steps=8", f"cluster.metrics_port={port}",
         "trainer.save_steps=0", env={"RAY_metrics_report_interval_ms": "500"})
    seen["done"] = True
    t.join(5)
    text = seen.get("text", "")
    for name in ("ray_vlmr1_reward_mean", "ray_vlmr1_kl", "ray_vlmr1_completion_len_mean", "ray_vlmr1_time_step_s"):
        assert name in text, name
