"""Scaling out on a real multi-node Ray cluster (two raylets on this machine) and Ray Jobs."""
import json
import os
import pathlib
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from weights.net import free_port

pytestmark = pytest.mark.e2e
REPO = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node declaring {learner_node} and a second node declaring {rollout_node}."""
    port, dash = free_port(), free_port()
    temp = f"/tmp/vr1c-{uuid.uuid4().hex[:6]}"  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1"}
    ray = str(BIN / "ray")
    # the head holds two learner ranks (a CPU each) and a reward worker: 3 logical CPUs
    subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=3", '--resources={"learner_node": 4}',
                    f"--temp-dir={temp}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dash}", "--disable-usage-stats"], env=env, check=True, capture_output=True)
    try:
        subprocess.run([ray, "start", f"--address=127.0.0.1:{port}", "--num-cpus=2", '--resources={"rollout_node": 4}',
                        "--disable-usage-stats"], env=env, check=True, capture_output=True)
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}", "env": env}
    finally:  # stop this cluster only (`ray stop` would stop every Ray on the machine): its processes
        # carry the temp dir on their command line; their agents (renamed ray::...) are their children
        pids = subprocess.run(["pgrep", "-f", temp], capture_output=True, text=True).stdout.split()
        for pid in pids:
            subprocess.run(["pkill", "-9", "-P", pid], capture_output=True)
        subprocess.run(["pkill", "-9", "-f", temp], capture_output=True)


def _placement(address: str) -> dict[str, set]:
    """Class name -> names of the custom resources of the nodes its actors ran on (state API)."""
    code = f"""
import json, ray
from ray.util.state import list_actors, list_nodes
ray.init(address="{address}", logging_level="ERROR")
nodes = {{n.node_id: n.resources_total for n in list_nodes(detail=True)}}
out = {{}}
for a in list_actors(detail=True, limit=1000):
    res = nodes.get(a.node_id, {{}})
    out.setdefault(a.class_name, set()).update(k for k in res if k.endswith("_node"))
print(json.dumps({{k: sorted(v) for k, v in out.items()}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {k: set(v) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def test_a_missing_resource_is_refused_by_name(cluster, monkeypatch):
    """A role asking for a custom resource no node of the joined cluster declares is refused at once,
    by name (its actors would otherwise wait for ever), as the main command's roles are built."""
    import ray

    from actors.group import ActorGroup
    from actors.reward_worker import RewardWorker
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():  # (another module's private Ray)
        ray.shutdown()
    ray.init(address=cluster["address"], logging_level="ERROR")
    try:
        with pytest.raises(RuntimeError, match=r"'rollout' asks for \['gpu_node'\] but no node of the cluster declares it"
                                               r" \(cluster: \[.*'learner_node'.*'rollout_node'.*\]\)"):
            ActorGroup(RewardWorker, 1, {"CPU": 1, "gpu_node": 1}, "rollout", args=({"rec_format": 1.0},))
    finally:
        ray.shutdown()


def test_a_ray_job_runs_the_orchestrator_and_places_each_role_on_its_node(cluster, tiny_model, tmp_path):
    """``ray job submit`` of the main command to the joined cluster, with each role asking for the custom
    resource of its node: the engines run on the rollout node, the learner ranks and reward worker on the
    head. The job is ``conf=qa``: counting, yes/no, multiple choice, math and two-screen rows (2 images per
    prompt), generated on demand, each scored by its row's accu_reward_method in training and evaluation;
    on two learner ranks (ZeRO-3) that broadcast to two engines, with dynamic sampling streaming each
    engine's refills as soon as its own shard is scored, and an evaluation spread over both engines."""
    ray = str(BIN / "ray")
    out, syn = tmp_path / "job", tmp_path / "syn"
    runtime_env = {"excludes": [".venv", "outputs", ".git", ".hypothesis", ".pytest_cache", "bench/results"]}
    cmd = [ray, "job", "submit", "--address", cluster["dashboard"], "--working-dir", ".",
           "--runtime-env-json", json.dumps(runtime_env), "--submission-id", f"vr1-{uuid.uuid4().hex[:6]}", "--",
           "python", "orchestrator.py", "conf=qa", "cluster.address=auto", f"model.path={tiny_model}",
           f"data.synthetic.dir={syn}", "data.synthetic.n_train=8", "data.synthetic.n_val=4", "data.synthetic.n_ood=2",
           f"trainer.output_dir={out}", "rollout.resources.rollout_node=1", "learner.resources.learner_node=1",
           "reward.resources.learner_node=0.5", "reward.num_workers=1", "trainer.max_steps=2",
           "trainer.prompts_per_step=2", "rollout.num_generations=4", "rollout.max_new_tokens=16",
           "trainer.eval_steps=2", "eval.train_samples=20", "learner.world_size=2", "learner.zero_stage=3",
           "rollout.num_engines=2", "reward.funcs.repetition=1.0", "learner.lr=1e-2", "trainer.max_staleness=0",
           "rollout.dynamic_sampling.enabled=true", "rollout.dynamic_sampling.max_rounds=2", "wandb.mode=disabled",
           "trainer.report=false"]
    for _ in range(36):  # the head's job agent may still be starting on a loaded machine (for minutes): Ray
        # refuses the submission then ("No available agent to submit job, please try again later"), nothing was run
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=cluster["env"])
        if "No available agent to submit job" not in proc.stdout + proc.stderr:
            break
        time.sleep(5)
        cmd[cmd.index("--submission-id") + 1] = f"vr1-{uuid.uuid4().hex[:6]}"
    assert proc.returncode == 0 and "succeeded" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-3000:]
    job_id = cmd[cmd.index("--submission-id") + 1]
    logs = subprocess.run([ray, "job", "logs", "--address", cluster["dashboard"], job_id], capture_output=True,
                          text=True, timeout=120, env=cluster["env"]).stdout
    assert "done: 2 steps, 16 samples" in logs
    jobs = json.loads(urllib.request.urlopen(f"{cluster['dashboard']}/api/jobs/", timeout=10).read())
    mine = [j for j in jobs if j.get("submission_id") == job_id]
    assert mine and mine[0]["status"] == "SUCCEEDED" and "orchestrator.py conf=qa" in mine[0]["entrypoint"]
    where = _placement(cluster["address"])
    assert where["RolloutEngine"] == {"rollout_node"}
    assert where["Learner"] == {"learner_node"} and where["RewardWorker"] == {"learner_node"}
    # conf=qa's tasks, on two ranks and two engines
    assert "generating the synthetic shapes data (count, yes_no, mcq, math, gui)" in logs
    assert "starting the roles: 2 vLLM engine(s), 2 DeepSpeed learner rank(s) (ZeRO-3)" in logs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["samples"] == 16 and summary["distinct_prompts"] == 4
    rows = [r for r in map(json.loads, open(out / "metrics.jsonl")) if "reward/mean" in r]  # training steps
    assert all(r["items"] == 8 and "reward/format" in r for r in rows)
    assert rows[1]["engine_logp_abs_diff"] < 0.05  # step 2 sampled from engines synced by both ranks
    assert all(r["sampling/signal_frac"] in (0.0, 0.5, 1.0) for r in rows)  # share of the 2 groups with spread
    for r in rows:  # at most 2 refills per engine; a step short of groups with spread used one engine's all
        assert 0 <= r["sampling/rounds"] <= r["sampling/refills"] <= 2 * 2
        assert r["sampling/prompts_generated"] >= 2 and r["sampling/surplus"] >= 0
        assert r["sampling/filled"] == 0 or r["sampling/rounds"] == 2 or r["sampling/data_exhausted"]
        assert r["sampling/filled"] == 2 - round(r["sampling/signal_frac"] * 2)
    final = json.loads((out / "eval" / "step_000002.json").read_text())
    assert {r["reward"] for r in final["records"]} == {"numeric", "yes_no", "mcq", "math", "all_match"}
    assert final["metrics"]["samples"] == 20 and 0 <= final["metrics"]["mean_score"] <= 1
    assert sum(r["image"] is not None for r in final["records"]) == 20
