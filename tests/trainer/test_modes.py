"""``mode=sft`` on real Ray + DeepSpeed (the learning benchmark's SFT arm): the policy is saved every ``trainer.save_steps`` and at the end, each save loads as a Hugging Face
model, and every row says which prompts it trained on and how long it took."""
import json

import pytest

import conf

pytestmark = pytest.mark.e2e


def test_sft_saves_every_save_steps_and_at_the_end(tiny_model, synthetic, tmp_path, shared_ray):
    from actors.group import shutdown_groups
    from data.prepare import load_splits
    from trainer import cluster
    from trainer.modes import sft_loop
    out = tmp_path / "sft"
    cfg = conf.resolve(conf.load([
        "conf=task/rec", "mode=sft", f"model.path={tiny_model}", f"data.synthetic.dir={synthetic}", "learner.lr=3e-3",
        "learner.beta=0", "trainer.prompts_per_step=4", "learner.micro_batch_size=4", "trainer.max_steps=5",
        "trainer.save_steps=2", "trainer.keep_checkpoints=5", "wandb.mode=disabled", f"trainer.output_dir={out}"]),
        tmp_path / "cache")
    train, _, _ = load_splits(cfg.data)
    out.mkdir()  # (the driver's checkpoint.claim makes it)
    shared_ray.release()  # (the CPUs of a previous module's kept roles, for this run's learner)
    try:
        result = sft_loop(cfg, tiny_model, train, out, cluster.actor_env(cfg))
    finally:
        shutdown_groups()
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert saved == ["step_000002", "step_000004", "step_000005"]  # every 2 steps, and the last
    assert result["model_path"] == str(out / "checkpoints" / "step_000005" / "hf")
    for name in saved:
        hf = out / "checkpoints" / name / "hf"
        assert json.loads((hf / "config.json").read_text())["model_type"] == "qwen2_5_vl"
        assert any(hf.glob("*.safetensors"))
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(len(r["prompt_ids"]) == 4 and r["time/step_s"] > 0 for r in rows)
    assert all(0 < r["sft_loss"] < 20 and 0 <= r["token_acc"] <= 1 for r in rows)  # (falling on a fixed batch:
    # tests/learner/test_learner.py; here each step has new prompts)
    ids = [i for r in rows for i in r["prompt_ids"]]
    assert len(set(ids)) == len(ids) == 20  # the data order, no prompt twice within the epoch
