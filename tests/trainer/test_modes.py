"""``mode=sft`` and ``mode=eval`` through the main command's entry point, run one after another in one
``trainer.session.Session`` as the learning benchmark runs its stages: the SFT policy is saved every
``trainer.save_steps`` and at the end, each save a Hugging Face model, every row says which prompts it
trained on; the engine process is kept from run to run and rebuilt for each run's model, answering
exactly as when it was started for that model."""
import json

import pytest

pytestmark = pytest.mark.e2e


def _eval(session, model: str, common: list, out) -> list[dict]:
    import orchestrator
    orchestrator.main(["mode=eval", *common, f"model.path={model}", "eval.max_samples=12",
                       f"trainer.output_dir={out}"], session=session)
    return json.loads((out / "eval_results.json").read_text())["records"]


def test_sft_then_evals_in_one_session(tiny_model, synthetic, tmp_path, shared_ray):
    import orchestrator
    session = shared_ray.session
    session.release()  # (this engine starts here: the first evaluation is a fresh engine's)
    common = ["conf=task/rec", f"data.synthetic.dir={synthetic}", "wandb.mode=disabled", "trainer.report=false",
              "cluster.include_dashboard=false"]
    base = _eval(session, tiny_model, common, tmp_path / "eval_base")
    engine = session.kept["rollout"][1]

    out = tmp_path / "sft"
    result = orchestrator.main([*common, "mode=sft", f"model.path={tiny_model}", "learner.lr=3e-3", "learner.beta=0",
                                "trainer.prompts_per_step=4", "learner.micro_batch_size=4", "trainer.max_steps=5",
                                "trainer.save_steps=2", "trainer.keep_checkpoints=5", f"trainer.output_dir={out}"],
                               session=session)
    assert session.kept["rollout"][1] is engine  # waiting for the next run that asks for it, untouched
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

    # the same engine process, rebuilt for the SFT policy, then for the base model again
    reused = session.reused
    tuned = _eval(session, result["model_path"], common, tmp_path / "eval_sft")
    again = _eval(session, tiny_model, common, tmp_path / "eval_base_again")
    assert session.kept["rollout"][1] is engine and session.reused == reused + 2
    assert [r["id"] for r in tuned] == [r["id"] for r in base] and len(base) == 12
    assert [r["completion"] for r in again] == [r["completion"] for r in base]  # the base model's answers, exactly
    assert [r["completion"] for r in tuned] != [r["completion"] for r in base]  # and the SFT policy's are its own
