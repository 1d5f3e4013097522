"""Config: merge order, unknown keys, types, choices, and every shipped YAML validates."""
import pathlib

import pytest

import conf
from conf import ConfigError


def test_merge_order_base_then_task_then_command_line():
    c = conf.load([])
    assert c.data.task == "rec" and c.rollout.max_new_tokens == 128  # base
    c = conf.load(["conf=ovd"])
    assert c.data.task == "ovd" and c.rollout.max_new_tokens == 160  # task file over base
    c = conf.load(["conf=ovd", "rollout.max_new_tokens=64", "learner.lr=3e-6"])
    assert c.rollout.max_new_tokens == 64 and c.learner.lr == 3e-6  # command line last


def test_reward_funcs_replaced_by_task_file_adjusted_by_command_line():
    # conf=ovd ships its counter-rules at weight 0: the default triggers switch them on
    assert dict(conf.load(["conf=ovd"]).reward.funcs) == {"format": 1.0, "ovd_odlength": 1.0, "ovd_count": 0.0,
                                                          "repetition": 0.0}
    c = conf.load(["conf=rec", "reward.funcs.rec_iou=2.0", "reward.funcs.repetition=0.5"])
    assert dict(c.reward.funcs) == {"rec_format": 1.0, "rec_iou": 2.0, "repetition": 0.5}


@pytest.mark.parametrize("args,message", [
    (["learner.lrr=1e-6"], "did you mean 'learner.lr'"),
    (["rollout.num_generation=4"], "did you mean 'rollout.num_generations'"),
    (["trainer.max_step=3"], "did you mean 'trainer.max_steps'"),
    (["conf=detection"], "no config 'detection'"),
    (["learner.lr=fast"], "should be a float"),
    (["trainer.max_steps=2.5"], "should be a int"),
    (["learner.zero_stage=4"], "not one of [0, 1, 2, 3]"),
    (["reward.funcs.rec_iuo=1"], "unknown reward 'rec_iuo'"),
    (["reward.funcs.rec_iou=heavy"], "weight must be a finite number"),
    (["data.synthetic.scene=crowded"], "not one of ['default', 'one_shape']"),
])
def test_bad_configs_fail_fast_with_a_hint(args, message):
    with pytest.raises(ConfigError) as e:
        conf.load(args)
    assert message in str(e.value)


def test_required_keys_exist_with_their_names():
    c = conf.load([])
    for key in ["model.path", "data.train_files", "data.val_files", "data.image_folders", "rollout.num_generations",
                "rollout.temperature", "rollout.max_new_tokens", "learner.lr", "learner.beta", "trainer.max_steps",
                "trainer.output_dir"]:
        node = c
        for part in key.split("."):
            assert part in node, key
            node = node[part]


@pytest.mark.parametrize("name", [n for n in conf.shipped() if not n.startswith("recipe/")])
def test_every_shipped_yaml_validates_and_resolves(name, tmp_path):
    c = conf.resolve(conf.load([f"conf={name}"]), tmp_path)
    assert str(tmp_path) in c.data.train_files
    task = name.split("/")[-1].removeprefix("vlm_r1_")
    assert c.data.task == (task if task in ("rec", "ovd") else "qa")
    from data.synthetic import TASKS
    for f in (c.data.train_files + ":" + c.data.val_files).split(":"):  # each names a file the generator writes
        assert any(f.endswith(f"/{t}_train.jsonl") or f.endswith(f"/{t}_val.jsonl") for t in TASKS), f


def test_every_base_key_is_documented():
    for line in (conf.CONF_DIR / "base.yaml").read_text().splitlines():
        if ":" in line and not line.strip().startswith("#") and not line.rstrip().endswith(":"):
            assert "#" in line, f"undocumented key: {line.strip()}"


def test_config_values_are_never_executed(tmp_path):
    c = conf.resolve(conf.load(["trainer.output_dir=__import__('os').system('touch pwned')"]), tmp_path)
    assert c.trainer.output_dir == "__import__('os').system('touch pwned')"
    assert not pathlib.Path("pwned").exists()


def test_asynchronous_settings_are_checked_before_anything_starts():
    c = conf.load([])
    assert c.trainer.max_staleness == "auto" and c.learner.off_policy == "bypass"
    assert c.rollout.dtype == "auto" and c.learner.dtype == "auto"
    assert conf.load(["trainer.max_staleness=2"]).trainer.max_staleness == 2
    with pytest.raises(conf.ConfigError, match="off_policy=none treats samples as on-policy"):
        conf.load(["learner.off_policy=none", "trainer.max_staleness=1"])
    assert conf.load(["learner.off_policy=none"]).learner.off_policy == "none"  # auto: synchronous with none
    assert conf.load(["learner.off_policy=none", "trainer.max_staleness=0"]).learner.off_policy == "none"
    for bad in ("-1", "fast", "true", "1.5"):
        with pytest.raises(conf.ConfigError, match="must be auto or a whole number"):
            conf.load([f"trainer.max_staleness={bad}"])
    assert conf.load([]).rollout.sync_pack_mb == "auto" and conf.load(["rollout.sync_pack_mb=16"]).rollout.sync_pack_mb == 16
    for bad in ("-1", "big", "true"):
        with pytest.raises(conf.ConfigError, match="sync_pack_mb=.* must be auto or a number of MB"):
            conf.load([f"rollout.sync_pack_mb={bad}"])
    with pytest.raises(conf.ConfigError, match=r"learner.is_cap=0.5 is out of range: it must be > 1"):
        conf.load(["learner.is_cap=0.5"])
    with pytest.raises(conf.ConfigError, match="learner.off_policy='ppo' is not one of"):
        conf.load(["learner.off_policy=ppo"])
    assert conf.load([]).rollout.dynamic_sampling.oversample == 1.0
    assert conf.load(["rollout.dynamic_sampling.oversample=auto"]).rollout.dynamic_sampling.oversample == "auto"
    for bad in ("0.5", "more", "true"):
        with pytest.raises(conf.ConfigError, match="oversample=.* must be auto or a number >= 1"):
            conf.load([f"rollout.dynamic_sampling.oversample={bad}"])


def test_auto_dtype_follows_the_cpu_flags():
    from conf.hardware import cpu_flags, native_bf16, resolve_dtype
    assert resolve_dtype("auto", "rollout", {"avx2", "fma"}, gpu=False)[0] == "float32"
    assert resolve_dtype("auto", "rollout", {"avx512f", "avx512_bf16"}, gpu=False)[0] == "bfloat16"
    assert resolve_dtype("auto", "learner", {"amx_bf16"}, gpu=False) == ("bf16", "auto: CPU with amx_bf16: native bf16")
    assert resolve_dtype("float32", "rollout", {"amx_bf16"}, gpu=False) == ("float32", "configured")
    # this machine: the answer agrees with its own /proc/cpuinfo
    flags = cpu_flags()
    assert native_bf16(flags, gpu=False)[0] == bool({"avx512_bf16", "amx_bf16"} & flags)


def test_an_isa_cap_makes_auto_decide_as_on_a_cpu_without_the_capped_flags(monkeypatch, tmp_path):
    from conf.hardware import cpu_flags, describe_cpu, native_bf16
    from learner.linear import choose
    info = tmp_path / "cpuinfo"
    info.write_text("vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
                    "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n\nmodel name\t: the second core\n")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS", raising=False)
    assert describe_cpu(str(info)).startswith("AMD EPYC (family 25, model 17), ")  # the first core's block
    assert describe_cpu(str(info)).endswith("flags: avx2 avx512f avx512_bf16 amx_bf16")
    assert cpu_flags(str(info)) == {"fpu", "avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    assert cpu_flags(str(info), {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert cpu_flags(str(info), {"ATEN_CPU_CAPABILITY": "default"}) == {"fpu"}
    assert cpu_flags(str(info), {"ATEN_CPU_CAPABILITY": "bogus"}) == cpu_flags(str(info))  # torch ignores it too
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    capped = cpu_flags(str(info))
    assert capped == {"fpu", "avx2"}
    ok, why = native_bf16(gpu=False)  # this machine's flags, under the cap
    had = {"avx512_bf16", "amx_bf16"} & cpu_flags(env={})
    assert not ok and (" capped by ATEN_CPU_CAPABILITY=avx2: " in why if had else why.startswith("CPU without"))
    assert choose("auto", vendor="AuthenticAMD", flags=capped)[0] == "torch"
    assert "(capped by ATEN_CPU_CAPABILITY=avx2)" in describe_cpu() and "avx512" not in describe_cpu()


def test_auto_compiles_the_engine_where_a_compiler_can_build_it(monkeypatch):
    from conf.hardware import resolve_eager
    assert resolve_eager("auto", gpu=False, compiler="/usr/bin/g++") == (False, "auto: g++ found for torch.compile's CPU kernels")
    eager, why = resolve_eager("auto", gpu=False, compiler="")
    assert eager and "install g++" in why
    assert resolve_eager("auto", gpu=True)[0] is False and resolve_eager(False, gpu=False) == (False, "configured")
    monkeypatch.setenv("PATH", "/nonexistent")  # nothing on PATH: eager
    monkeypatch.delenv("CXX", raising=False)
    assert resolve_eager("auto", gpu=False)[0] is True
    # the shipped CPU quickstart asks for auto; base.yaml stays eager (short runs, the tests)
    assert conf.load(["conf=ovd"]).rollout.enforce_eager == "auto" and conf.load([]).rollout.enforce_eager is True
    for bad in ("maybe", 1, "true"):
        with pytest.raises(conf.ConfigError, match="rollout.enforce_eager=.* must be true, false or auto"):
            conf.load([f"rollout.enforce_eager={bad!r}" if isinstance(bad, str) else f"rollout.enforce_eager={bad}"])


def test_the_kv_block_is_32_tokens_on_cpu_and_vllms_own_on_gpus():
    from conf.hardware import resolve_block_size
    assert resolve_block_size("auto", gpu=False)[0] == 32 and resolve_block_size("auto", gpu=True) == (
        None, "auto: vLLM's default on GPUs")
    assert resolve_block_size(64, gpu=False) == (64, "configured") and resolve_block_size(16, gpu=True)[0] == 16
    with pytest.raises(ValueError, match="block_size=48: vLLM's CPU attention takes multiples of 32"):
        resolve_block_size(48, gpu=False)
    assert conf.load([]).rollout.block_size == "auto" and conf.load(["rollout.block_size=64"]).rollout.block_size == 64
    for bad in ("big", 0, True, 1.5):
        with pytest.raises(conf.ConfigError, match="rollout.block_size=.* must be auto or a whole number of tokens"):
            conf.load([f"rollout.block_size={bad}"])


def test_a_named_scene_gets_a_data_dir_of_its_own(tmp_path):
    """conf=rec's one-shape scene never mixes with the default scene's cached files, and the
    generator draws it: 84 px images, shapes of side 24-48."""
    import json

    from data.prepare import ensure_synthetic
    c = conf.resolve(conf.load(["conf=rec", "data.synthetic.n_train=6", "data.synthetic.n_val=4",
                                "data.synthetic.n_ood=4"]), tmp_path)
    assert c.data.synthetic.dir == str(tmp_path / "synthetic-s0-one_shape") and c.model.path.endswith("-one-shape")
    assert conf.resolve(conf.load([]), tmp_path).data.synthetic.dir == str(tmp_path / "synthetic-s0")
    assert ensure_synthetic(c.data)
    from PIL import Image
    root = pathlib.Path(c.data.synthetic.dir)
    rows = [json.loads(x) for x in (root / "rec_train.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(Image.open(root / r["image"]).size == (84, 84) for r in rows)
    boxes = [json.loads(r["conversations"][1]["value"]) for r in rows]
    assert all(24 <= b[2] - b[0] <= 48 and b[2] - b[0] == b[3] - b[1] and 0 <= b[0] and b[2] < 84 for b in boxes)


def test_the_embedded_recipes_and_vlm_r1s_own():
    """conf=rec / conf=ovd: the tiny Qwen3-VL warm-started on one-shape scenes, with its own lr and
    no KL; conf=vlm_r1_rec / _ovd: VLM-R1's recipe for Qwen2.5-VL-3B, numbers as in its paper."""
    for task, suffix in (("rec", "-one-shape"), ("ovd", "-one-shape-ovd")):
        c = conf.load([f"conf={task}"])
        assert c.model.path == f"builtin:tiny-qwen3-vl{suffix}" and c.data.synthetic.scene == "one_shape"
        assert (c.learner.lr, c.learner.beta, c.trainer.max_steps, c.trainer.prompts_per_step) == (1e-4, 0.0, 200, 8)
        v = conf.load([f"conf=vlm_r1_{task}"])
        assert v.model.path == "Qwen/Qwen2.5-VL-3B-Instruct" and v.data.task == task
        assert (v.learner.lr, v.learner.beta, v.rollout.temperature, v.learner.zero_stage) == (1e-6, 0.04, 1.0, 3)
        assert (v.trainer.prompts_per_step, v.rollout.num_generations, v.rollout.max_new_tokens) == (16, 8, 2048)
        assert v.learner.gradient_checkpointing and v.learner.dtype == "bf16" and v.trainer.epochs == 2
        # 8 GPUs: engines + learner ranks, and the 128 completions of a step split evenly over the ranks
        assert v.rollout.num_engines * v.rollout.devices_per_engine + v.learner.world_size * v.learner.gpus_per_rank == 8
        assert 16 * 8 % v.learner.world_size == 0
        assert dict(v.reward.funcs) == ({"rec_format": 1.0, "rec_iou": 1.0} if task == "rec" else
                                        {"format": 1.0, "ovd_odlength": 1.0})
