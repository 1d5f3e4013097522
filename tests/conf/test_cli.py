"""The command line as a user meets it: --help without torch, the resolved config printed, and every
configuration or data mistake as one line with exit status 2."""
import pathlib
import subprocess
import sys

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
RUN = ("import runpy, sys; sys.argv = ['orchestrator.py', *sys.argv[1:]]\n"
       "try:\n    runpy.run_path('orchestrator.py', run_name='__main__')\n"
       "finally:\n    print('TORCH_LOADED' if 'torch' in sys.modules else 'TORCH_NOT_LOADED', file=sys.stderr)\n")


def run(*args: str, tmp_path: pathlib.Path | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path or REPO), "VLM_R1_RAY_CACHE": str((tmp_path or REPO) / "cache")}
    return subprocess.run([sys.executable, "-c", RUN, *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=env)


def test_help_lists_the_configs_and_the_syntax_without_importing_torch():
    p = run("--help")
    assert p.returncode == 0 and "TORCH_NOT_LOADED" in p.stderr
    assert p.stdout.startswith("usage: python orchestrator.py")
    for name in ("rec", "ovd", "vlm_r1_rec", "vlm_r1_ovd", "task/rec", "recipe/tiny", "recipe/vlm_r1_3b"):
        assert f"\n  {name} " in p.stdout, name
    assert "key=value" in p.stdout and "conf/base.yaml" in p.stdout and "defaults: [vlm_r1_rec]" in p.stdout


def test_print_config_prints_the_resolved_config_and_exits(tmp_path):
    p = run("conf=rec", "learner.lr=3e-5", "--print-config", tmp_path=tmp_path)
    assert p.returncode == 0 and "TORCH_NOT_LOADED" in p.stderr
    cfg = yaml.safe_load(p.stdout)
    assert cfg["learner"]["lr"] == 3e-5 and cfg["model"]["path"] == "builtin:tiny-qwen3-vl-one-shape"
    assert cfg["data"]["train_files"] == f"{tmp_path}/cache/synthetic-s0-one_shape/rec_train.jsonl"  # resolved


def test_config_mistakes_are_one_line_and_exit_2(tmp_path):
    for args, message in ((["learner.lrr=1e-6"], "config error: unknown config key 'learner.lrr' (from the command "
                                                   "line); did you mean 'learner.lr'?"),
                          (["conf=nothing"], "config error: no config 'nothing'"),
                          (["--lr", "1e-6"], "config error: '--lr' is not an override: write key=value"),
                          (["learner.world_size=3"], "config error: trainer.prompts_per_step x rollout.num_generations")):
        p = run(*args, tmp_path=tmp_path)
        lines = [ln for ln in p.stderr.splitlines() if ln != "TORCH_NOT_LOADED"]
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert len(lines) == 1 and lines[0].startswith(message), lines
        assert "TORCH_NOT_LOADED" in p.stderr


def test_a_missing_data_file_is_one_line_and_exit_2(tmp_path):
    p = run(f"data.train_files={tmp_path}/gone.jsonl", f"data.val_files={tmp_path}/gone_val.jsonl",
            f"data.image_folders={tmp_path}", f"trainer.output_dir={tmp_path}/out", tmp_path=tmp_path)  # not the
    # checkout's outputs/rec, which a user's own run may hold
    lines = [ln for ln in p.stderr.splitlines() if not ln.startswith("TORCH")]
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert lines[-1].startswith("data error:") and "gone.jsonl" in lines[-1]


def test_a_fresh_run_into_another_runs_directory_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.jsonl").write_text('{"step": 1}\n')
    p = run(f"trainer.output_dir={tmp_path / 'out'}", tmp_path=tmp_path)
    lines = [ln for ln in p.stderr.splitlines() if not ln.startswith("TORCH")]
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert lines[-1] == (f"config error: trainer.output_dir={tmp_path / 'out'} holds another run (metrics.jsonl): "
                         "continue it with trainer.resume=auto, or give this run a fresh trainer.output_dir")


@pytest.mark.e2e  # (a Ray starts meanwhile)
def test_rows_all_too_long_for_the_engines_are_one_line_and_exit_2(tmp_path):
    """Counted with the model's processor while Ray starts: every row too long is still one line, exit 2."""
    import json

    from PIL import Image
    Image.new("RGB", (64, 48), "white").save(tmp_path / "a.png")
    row = {"image": "a.png", "conversations": [{"from": "human", "value": "<image>the red square"},
                                               {"from": "gpt", "value": "[1, 2, 30, 40]"}]}
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n")
    p = run("conf=rec", f"data.train_files={tmp_path}/rows.jsonl", f"data.val_files={tmp_path}/rows.jsonl",
            f"data.image_folders={tmp_path}", "rollout.max_model_len=16", "cluster.include_dashboard=false",
            f"trainer.output_dir={tmp_path / 'out'}", tmp_path=tmp_path)
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith(("data error", "config error", "Traceback"))]
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert lines == [lines[-1]] and lines[-1].startswith("data error: no usable training rows"), lines
    assert "prompt longer than rollout.max_model_len" in lines[-1]
