"""Runs on real Ray + vLLM + DeepSpeed: exact resume, checkpoints that load, eval, live metrics."""
import json
import pathlib
import shutil
import threading
import time
import urllib.request

import pytest


pytestmark = pytest.mark.e2e
REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def warm_model():
    """base.yaml's default model, builtin:tiny: the tiny Qwen2.5-VL warm-started for 400 steps,
    shipped (data/embedded/), so that the runs start from a policy whose rewards vary."""
    from data.tiny_model import SHIPPED_DIR, resolve_model_path
    path = resolve_model_path("builtin:tiny")
    assert pathlib.Path(path).parent == SHIPPED_DIR  # (no warm start in the suite)
    return path


COMMON = ["conf=task/rec", "trainer.prompts_per_step=2", "rollout.num_generations=4", "rollout.max_new_tokens=40",
          "learner.lr=2e-4", "trainer.eval_steps=0", "trainer.report=false", "wandb.mode=disabled",
          "cluster.include_dashboard=false",
          # fp32 engines: a run whose engine was replaced is compared with one whose engine was not, and the
          # loss (off_policy=bypass) is anchored on the engine's log-probs; in bf16 a fresh engine gave the
          # same tokens with log-probs off by ~1e-4 in 1 of ~10 CI runs (one rounding flip, amplified by
          # bf16), moving a near-zero loss by 10%; in fp32 such a flip stays far inside the tolerance below
          "rollout.dtype=float32",
          # and an fp32 learner: each run starts by syncing the learner's start state to the engine, while an
          # engine replaced before the first update loads the model from disk itself (as every engine of a
          # fresh run does); a bf16 learner (auto, on a CPU with avx512_bf16) syncs those weights rounded to
          # bf16, so the replacement sampled other tokens than the engine it replaced (step 2's reward/mean
          # 1.031 against 1.037 in the dead-engine-mid-refill run on such a CPU)
          "learner.dtype=fp32",
          # a reward rule that moves mid-run on a logged metric (here the step, so that it moves for sure):
          # rec_iou counts double once a row with step > 1.5 is logged; resumed runs must replay it
          "reward.schedules.rec_iou.weight={kind: on_metric, metric: step, above: 1.5, patience: 1, values: [1.0, 2.0]}"]


class Runs:
    """The module's runs, of both loops, in this process, on one set of roles: Ray, the engine, the
    learner rank and the reward worker start once instead of once per run (a launch costs about 45
    CPU-seconds before its first step on 2 cores; ``orchestrator.grpo`` takes built roles). The roles
    are tests/faults.py's classes, which die or hang only as the run at hand's plan says. Before each
    run the learner loads the state it started with (saved before the first run: weights, optimizer,
    RNG) and syncs it to the engine, so each run starts where a fresh launch would; what a run of
    its own would show only in its process (the roles starting, Ray's flags) is tested by the main
    commands' runs (tests/actors/test_runtime.py, tests/trainer/test_cluster_joined.py). The roles are
    built as the asynchronous loop builds them (a thread each on 2 cores, where the synchronous loop's
    roles take two, as they take turns): the threads are speed, not results, and the runs compared
    are always of one loop; what the loop itself sets on its roles (the engine pool's keeping of the
    last sync for a replaced engine) is set for each run (``reset``)."""

    def __init__(self, model, root: pathlib.Path):
        import conf
        from trainer import cluster
        from trainer.roles import create_roles
        self.model, self.loop = model, "trainer.max_staleness=1"
        self.faults = root / "faults"
        self.faults.mkdir()
        cfg = self.config(root / "start", root / "no-data", [])
        self.env = {**cluster.actor_env(cfg), "FAULT_DIR": str(self.faults)}
        self.roles = create_roles(conf.resolve_auto(cfg, False)[0], model, self.env)
        self.start = root / "start" / "state"
        learners = self.roles[1]
        learners.get(learners.call("save_checkpoint", str(self.start)), "saving the start state", startup=True)

    def config(self, out, data, overrides):
        import conf
        from data.tiny_model import cache_root
        return conf.resolve(conf.load([f"model.path={self.model}", f"data.synthetic.dir={data}",
                                       f"trainer.output_dir={out}", *COMMON, *overrides, self.loop]), cache_root())

    def __call__(self, out, data, *overrides, plan=None, stops=False):
        """One run of ``orchestrator.grpo`` (``plan``: its faults, tests/faults.py); its metric rows,
        its output (printed on a failure) and the faults that fired. ``stops``: the run must end
        with a ``SystemExit`` (a learner rank died and no restart was left), as the driver would."""
        import contextlib
        import io

        import conf
        import orchestrator
        from actors.group import shutdown_groups
        from data.prepare import fit_to_engines, load_splits
        from trainer import checkpoint, cluster
        from trainer.roles import create_roles
        cfg = self.config(out, data, overrides)
        out = pathlib.Path(out).resolve()
        checkpoint.claim(out, cfg.trainer.resume)
        train, val, report = load_splits(cfg.data)
        train, val = fit_to_engines(train, val, self.model, cfg.model, cfg.rollout.max_model_len, report)
        cfg, why = conf.resolve_auto(cfg, False)
        self.reset(cfg, plan or {})
        text, stopped = io.StringIO(), None
        try:
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                cluster.save_config(cfg, out)
                try:
                    self.roles = orchestrator.grpo(cfg, why, self.model, self.env, train, val, out, self.roles)[1]
                except SystemExit as e:
                    stopped = str(e)
                    # the learner ranks are gone: started afresh for the next run, as a restart would
                    shutdown_groups(keep=[self.roles[0].engines, self.roles[2]])
                    self.roles = create_roles(cfg, self.model, self.env, survivors=self.roles)
        except BaseException:
            print(text.getvalue()[-8000:])  # (pytest shows it with the failure)
            raise
        text = text.getvalue() + (stopped or "")
        assert (stopped is not None) == stops, text[-8000:]
        fired = sorted(p.name for p in self.faults.glob("*.fired"))
        return [json.loads(l) for l in open(out / "metrics.jsonl") if "reward/mean" in l], text, fired

    def reset(self, cfg, plan: dict) -> None:
        """The start state on every role, this run's timeouts, this run's fault plan."""
        pool, learners, _ = self.roles
        learners.get(learners.call("load_checkpoint", str(self.start)), "loading the start state", startup=True)
        pool.asynchronous = cfg.trainer.max_staleness > 0  # (as create_roles sets it for the run's loop)
        pool.sync(version=0)
        pool.engines.replacements = 0  # (rollout/engine_restarts counts a run's)
        pool.timeout_s = pool.engines.call_timeout_s = cfg.rollout.timeout_s
        learners.call_timeout_s = cfg.learner.timeout_s
        for p in self.faults.iterdir():
            p.unlink()
        (self.faults / "plan.json").write_text(json.dumps(plan))


@pytest.fixture(scope="module")
def ray_up(tmp_path_factory):
    """One private Ray for the module (its metrics port scraped while the first run goes on)."""
    import ray

    import conf
    from data.tiny_model import cache_root
    from trainer import cluster
    scraper = Scraper()
    if ray.is_initialized():  # (another module's, which would carry no metrics port)
        ray.shutdown()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_metrics_report_interval_ms", "500")
        cluster.start(conf.resolve(conf.load(["cluster.include_dashboard=false", f"cluster.metrics_port={scraper.port}"]),
                                   cache_root()), tmp_path_factory.mktemp("ray"))
    yield scraper
    scraper.stop()
    ray.shutdown()


@pytest.fixture(scope="module")
def roles_up(ray_up, warm_model, tmp_path_factory):
    """The roles of the module's runs (tests/faults.py's classes), built once for both loops."""
    from actors.group import shutdown_groups
    from tests import faults
    from trainer import roles
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(roles, "RolloutEngine", faults.FaultyEngine)
        patch.setattr(roles, "Learner", faults.FaultyLearner)
        patch.setattr(roles, "RewardWorker", faults.FaultyRewardWorker)
        made = Runs(warm_model, tmp_path_factory.mktemp("runs"))
        yield made
        shutdown_groups()  # (the roles, and any a failed run left)


@pytest.fixture(scope="module")
def runs(roles_up, loop):
    """The runs of ``loop``, on the module's roles."""
    roles_up.loop = loop
    return roles_up


KEYS = ["reward/mean", "reward/rec_format", "reward/rec_iou", "rule/rec_iou/weight", "loss", "pg_loss", "kl", "entropy", "completion_len/mean",
        "grad_norm"]


@pytest.fixture(scope="module", params=[0, 1], ids=["sync", "async"])
def loop(request):
    """Every run-management test runs with the synchronous loop and the asynchronous one (K = 1)."""
    return f"trainer.max_staleness={request.param}"


class Scraper:
    """Reads the Ray metrics port while a run goes on, until the project's gauges appear."""

    def __init__(self):
        from weights.net import free_port
        self.port, self.text, self.done = free_port(), "", False
        self.thread = threading.Thread(target=self.scrape, daemon=True)
        self.thread.start()

    def scrape(self):
        deadline = time.time() + 900
        while time.time() < deadline and not self.done:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2).read().decode()
                if "ray_vlmr1_reward_mean" in text:
                    self.text = text
                    return
            except OSError:
                pass
            time.sleep(0.5)

    def stop(self) -> str:
        self.done = True
        self.thread.join(5)
        return self.text


@pytest.fixture(scope="module")
def full(tmp_path_factory, runs, synthetic, loop):
    """The uninterrupted 4-step run every interrupted one must reproduce (its checkpoints evaluated
    below): rows, output dir."""
    out = tmp_path_factory.mktemp("full")
    rows, _, _ = runs(out, synthetic, "trainer.max_steps=4", "trainer.save_steps=2")
    k = int(loop.split("=")[1])
    assert [r["staleness/max"] for r in rows] == [0] + [k] * 3  # the first batch is generated by the initial weights
    # the rule moved after step 2's row; a batch generated before that (step 3's, asynchronous) keeps weight 1
    assert [r["rule/rec_iou/weight"] for r in rows] == ([1.0, 1.0, 2.0, 2.0] if k == 0 else [1.0, 1.0, 1.0, 2.0])
    assert [bool(r.get("rule_events")) for r in rows] == [False, True, False, False]
    return rows, out


def _same_run(full, other):
    assert [r["step"] for r in other] == [r["step"] for r in full]
    for a, b in zip(full, other):
        assert a["prompt_ids"] == b["prompt_ids"]  # same data, in the same order
        for k in KEYS:  # stated tolerance: 1e-4 relative (CPU float reductions), else 1e-6 absolute
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (a["step"], k, a[k], b[k])


def test_a_stopped_run_resumes_into_the_uninterrupted_one(tmp_path, runs, synthetic, full, loop):
    """Stopped after step 2 -- synchronous: learner rank 0 dies in step 3's update and, without
    trainer.max_restarts, the run stops naming its checkpoint; asynchronous: on cue
    (trainer.stop_after_steps) -- then resumed past a torn metrics line: the uninterrupted run."""
    full, _ = full
    common = ["trainer.max_steps=4", "trainer.save_steps=2"]
    if "=0" in loop:
        part, out, fired = runs(tmp_path / "split", synthetic, *common, plan={"LEARNER": "exit@3"}, stops=True)
        assert fired == ["learner.exit@3.fired"]
        assert "a learner rank died" in out and "step_000002" in out and "trainer.resume=auto" in out
    else:
        part, out, _ = runs(tmp_path / "split", synthetic, *common, "trainer.save_steps=0",
                            "trainer.stop_after_steps=2")  # saved on the stop, not by save_steps
        assert "stopped after step 2 (trainer.stop_after_steps); continue with trainer.resume=auto" in out
    assert len(part) == 2
    state = json.loads((tmp_path / "split" / "checkpoints" / "step_000002" / "state.json").read_text())
    # asynchronous: step 3's batch was generated (by the weights of step 1) before the stop; the
    # checkpoint keeps it whole, so the resumed run trains on exactly it instead of dropping it
    assert [(b["step"], b["version"], len(b["rollouts"])) for b in state["in_flight"]] == ([(2, 1, 8)] if "=1" in loop else [])
    with open(tmp_path / "split" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "reward/mean": 0.5, "lo')  # a torn last line, as a power cut leaves it
    resumed, out, _ = runs(tmp_path / "split", synthetic, *common, "trainer.resume=auto")
    assert "resumed from" in out
    assert any(r["reward/std"] > 0 for r in full) and any(r["grad_norm"] > 0 for r in full)  # it really learned
    _same_run(full, resumed)
    ids = [pid for r in resumed for pid in r["prompt_ids"]]
    assert len(ids) == len(set(ids)) == 8  # no prompt repeated or skipped within the epoch
    ckpts = sorted(p.name for p in (tmp_path / "split" / "checkpoints").iterdir())
    assert ckpts == ["step_000002", "step_000004"]


def test_chaos_every_fault_kind_in_one_run_trains_what_the_uninterrupted_run_trained(tmp_path, runs, synthetic,
                                                                                     full, loop):
    """One run meets every fault the project handles: asynchronous, the engine hangs at step 3's generate
    while the learner is mid-update, so its replacement gets the weights of the last sync, kept by
    learner rank 0 (the hang is found by the same timeout in either loop; an engine replaced in the
    synchronous loop, which then syncs it the learner's weights, is the dynamic-sampling test's, where the
    engine dies mid-generation in both loops: each replacement costs an engine's start-up, ~16 s here); a reward
    worker dies mid-chunk and a later one hangs; learner rank 0 dies in step 3's update (restart 1 from step 2) and then
    never answers the repeated one (past learner.timeout_s: restart 2 from step 2; the roles' start-up keeps
    its own bound, cluster.startup_timeout_s, so a slow start on a loaded machine is no hang); and one of step
    4's prompts has its image go bad after loading (a real unreadable file: the engine refuses that
    prompt, which is dropped and counted). Steps 1-3 are the uninterrupted run's, step 4 is its
    batch less the bad prompt: no sample lost, none twice."""
    full, _ = full
    data = tmp_path / "data"
    shutil.copytree(synthetic, data)  # (its image gets broken)
    bad = full[3]["prompt_ids"][0]
    # each hang is waited out to its timeout: bounds a few times what the test model's calls take (a
    # generate ~1 s a step, an update ~0.2 s, a chunk's scoring milliseconds), not more
    hang = "=1" in loop  # the engine hangs (asynchronous loop)
    plan = {"REWARD": "exit@3,hang@5", "LEARNER": "exit@3,hang@4", "BREAK_IMAGE": bad, **({"ENGINE": "hang@3"} if hang else {})}
    rows, out, fired = runs(tmp_path / "run", data, "trainer.max_steps=4", "trainer.save_steps=2",
                            "rollout.timeout_s=8", "learner.timeout_s=8", "reward.timeout_s=5", "trainer.max_restarts=2",
                            plan=plan)
    assert fired == ["engine.hang@3.fired"] * hang + ["learner.exit@3.fired", "learner.hang@4.fired",
                                                      "reward.exit@3.fired", "reward.hang@5.fired"]
    assert runs.faults.joinpath("image.broken").exists()
    # the engine: replaced once, before the first restart; the restarts start the learner ranks alone
    assert out.count("rollout engine 0 died or hung mid-generation: replacing it") == hang
    assert ("gave nothing for 8s" in out) == hang
    assert out.count("DeepSpeed learner rank(s) afresh; the engines and reward workers go on") == 2
    assert "starting the roles:" not in out  # (the run was given its roles; a restart builds the learners alone)
    assert out.count("replacing it and rescoring its chunks") == 2  # the reward worker that died, the one that hung
    assert "showed no progress for 5s (reward.timeout_s)" in out
    assert "a learner rank died" in out and "a learner rank died or hung (RoleHung)" in out
    assert "restart 1 of trainer.max_restarts=2" in out and "restart 2 of trainer.max_restarts=2" in out
    assert f"prompt {bad} skipped, refused by its engine: UnidentifiedImageError" in out
    assert "skipped: 1 prompts refused by the engines" in out
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    _same_run(full[:3], rows[:3])
    assert rows[3]["prompt_ids"] == full[3]["prompt_ids"][1:] and rows[3]["skipped/prompts"] == 1
    assert [r["skipped/prompts"] for r in rows[:3]] == [0, 0, 0]
    assert rows[3]["refused"][0][0] == bad
    ids = [pid for r in rows for pid in r["prompt_ids"]]
    assert len(ids) == len(set(ids)) == 7 and rows[3]["items"] == 4  # one group of G = 4 left in step 4
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["prompts"] == 7 and [s[0] for s in summary["skipped_prompts"]] == [bad]


def test_a_dead_engine_mid_refill_changes_nothing_dynamic_sampling_trains(tmp_path, runs, synthetic, loop):
    """Dynamic sampling streams refills; the engine dies in its 2nd generate call of the run (the first
    refill of step 1, or step 2's first shard): it is replaced and the call regenerated with the same
    seeds, so the run trains exactly what the run without the fault trained."""
    ds = ["trainer.max_steps=2", "trainer.epochs=8", "rollout.dynamic_sampling.enabled=true",
          "rollout.dynamic_sampling.max_rounds=2", "rollout.timeout_s=60"]
    clean, _, _ = runs(tmp_path / "clean", synthetic, *ds)
    rows, out, fired = runs(tmp_path / "run", synthetic, *ds, plan={"ENGINE": "exit@2"})
    assert fired == ["engine.exit@2.fired"]
    assert out.count("rollout engine 0 died or hung mid-generation: replacing it") == 1
    assert rows[-1]["rollout/engine_restarts"] == 1
    for a, b in zip(clean, rows):
        assert a["prompt_ids"] == b["prompt_ids"] and len(b["prompt_ids"]) == 2
        for k in ("sampling/prompts_generated", "sampling/refills", "sampling/groups_with_signal"):
            assert a[k] == b[k], (a["step"], k)
        for k in KEYS:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (a["step"], k, a[k], b[k])


def test_checkpoint_loads_in_transformers_and_answers_in_the_trained_format(synthetic, full):
    """The uninterrupted run's last checkpoint: a transformers model and processor whose greedy answers
    keep the warm-started format (the weights survived the save; a checkpoint evaluating with vLLM
    through ``mode=eval`` is tests/models/test_families_e2e.py's)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from data.loaders import load_prompts
    from data.prompts import prompt_inputs
    from rewards import REGISTRY
    _, out = full
    hf = out / "checkpoints" / "step_000004" / "hf"
    model = AutoModelForImageTextToText.from_pretrained(hf, torch_dtype=torch.float32)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    proc = AutoProcessor.from_pretrained(hf)
    formatted = 0
    for p in load_prompts(str(synthetic / "rec_val.jsonl"), str(synthetic), "rec")[0][:4]:
        inputs = prompt_inputs(proc, p.question, p.images, "rec")
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=40, do_sample=False)
        answer = proc.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        formatted += REGISTRY["rec_format"](answer, p.solution) == 1.0
    assert formatted >= 1, answer


def test_metrics_reach_the_prometheus_endpoint_during_a_run(full, ray_up):
    """Live metrics on the Ray metrics port (``cluster.metrics_port``), read while the first run went on."""
    ray_up.thread.join(60)  # (done once the project's gauges were read)
    text = ray_up.text
    for name in ("ray_vlmr1_reward_mean", "ray_vlmr1_kl", "ray_vlmr1_completion_len_mean", "ray_vlmr1_time_step_s"):
        assert name in text, name
