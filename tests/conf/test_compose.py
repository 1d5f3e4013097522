"""Composed configs: every shipped name resolves to the values it had before task and recipe were
split (``resolved_configs.json``, written from the single-file configs), user files extend shipped
ones, and bad composition is a one-line error."""
import copy
import json
import pathlib
import warnings

import pytest
from omegaconf import OmegaConf

import conf

BEFORE = json.loads((pathlib.Path(__file__).parent / "resolved_configs.json").read_text())
# values changed on purpose since the split, by key: (the configs it applies to, the new value)
CHANGED = {("rollout", "enforce_eager"): ({"rec", "ovd"}, "auto"),  # the tiny recipe compiles where it can (2026-12-04)
           ("trainer", "max_steps"): ({"rec", "ovd"}, 200),  # the quickstart in minutes on an AVX2 CPU (2026-12-05)
           ("learner", "adam_impl"): (set(BEFORE), "fused"),  # a new key everywhere: torch's fused AdamW (2026-12-05)
           ("rollout", "block_size"): (set(BEFORE), "auto"),  # (2026-12-06)
           ("learner", "cpu_linear"): (set(BEFORE), "auto")}  # oneDNN fp32 linear where faster (2026-12-06)  # a new key everywhere: 32-token KV blocks on CPU (2026-12-06)


def resolved(args: list[str]) -> dict:
    return OmegaConf.to_container(conf.resolve(conf.load(args), pathlib.Path("/CACHE")), resolve=True)


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_every_name_resolves_to_the_values_it_had(name):
    # "(none)": no conf=; task/rec and task/ovd: what the tests and infrastructure benchmarks ran as
    # conf=rec / conf=ovd with base.yaml's recipe put back (model.path aside, which they always set)
    args = [] if name == "(none)" else [f"conf={name}"]
    if name.startswith("task/"):
        args.append(f"model.path={BEFORE[name]['model']['path']}")
    want = copy.deepcopy(BEFORE[name])
    for (section, key), (names, value) in CHANGED.items():
        if name in names:
            want[section][key] = value
    assert resolved(args) == want


def test_vlm_r1_configs_share_one_recipe_and_differ_only_by_task():
    rec, ovd = resolved(["conf=vlm_r1_rec"]), resolved(["conf=vlm_r1_ovd"])
    recipe = OmegaConf.to_container(OmegaConf.load(conf.CONF_DIR / "recipe" / "vlm_r1_3b.yaml"))
    for section, keys in recipe.items():
        for key, value in keys.items():
            assert rec[section][key] == ovd[section][key] == value, (section, key)
    assert (rec["data"]["task"], ovd["data"]["task"]) == ("rec", "ovd")


def test_a_users_file_extends_a_shipped_one(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("defaults: [vlm_r1_rec]\nlearner:\n  lr: 3.0e-6\ntrainer:\n  prompts_per_step: 8\n")
    got, base = resolved([f"conf={mine}"]), resolved(["conf=vlm_r1_rec"])
    assert (got["learner"]["lr"], got["trainer"]["prompts_per_step"]) == (3e-6, 8)
    got["learner"]["lr"], got["trainer"]["prompts_per_step"] = base["learner"]["lr"], base["trainer"]["prompts_per_step"]
    assert got == base  # nothing else moved
    # a file beside it is found before a shipped one of the same name; the command line still wins
    (tmp_path / "rec.yaml").write_text("trainer:\n  max_steps: 7\n")
    (tmp_path / "two.yaml").write_text("defaults: [rec, recipe/tiny]\n")
    c = conf.load([f"conf={tmp_path / 'two.yaml'}", "trainer.eval_steps=3"])
    assert (c.trainer.max_steps, c.learner.lr, c.trainer.eval_steps) == (200, 1e-4, 3)  # recipe/tiny after ./rec
    assert conf.load([f"conf={tmp_path / 'rec.yaml'}"]).trainer.max_steps == 7


@pytest.mark.parametrize("text,message", [
    ("defaults: [nothing_here]\n", "no config 'nothing_here'"),
    ("defaults: task/rec\n", "defaults must be a list of config names"),
    ("defaults: [loop.yaml]\n", "names itself through its defaults"),
    ("defaults: [rec]\nlearner:\n  lrr: 1\n", "unknown config key 'learner.lrr'"),
    ("- a\n- b\n", "holds a mapping of keys"),
    ("learner: [1,\n", "not valid YAML"),
])
def test_bad_composition_is_one_clear_error(tmp_path, text, message):
    (tmp_path / "loop.yaml").write_text(text)
    with pytest.raises(conf.ConfigError, match=message):
        conf.load([f"conf={tmp_path / 'loop.yaml'}"])


def test_reward_funcs_are_replaced_by_each_file_that_states_them():
    # task/ovd ships two counter-rules at weight 0; vlm_r1_ovd states VLM-R1's pair, which replaces them
    assert set(conf.load(["conf=ovd"]).reward.funcs) == {"format", "ovd_odlength", "ovd_count", "repetition"}
    assert set(conf.load(["conf=vlm_r1_ovd"]).reward.funcs) == {"format", "ovd_odlength"}
    assert len(conf.load(["conf=ovd"]).reward.triggers) == 3 and len(conf.load(["conf=vlm_r1_ovd"]).reward.triggers) == 0


def test_the_tiny_recipe_with_a_real_checkpoint_warns_and_names_vlm_r1s(tmp_path):
    with pytest.warns(UserWarning, match="use conf=vlm_r1_ovd"):
        conf.load(["conf=ovd", "model.path=/models/Qwen2.5-VL-3B-Instruct"])
    mine = tmp_path / "mine.yaml"
    mine.write_text("defaults: [rec]\n")
    with pytest.warns(UserWarning, match="use conf=vlm_r1_rec"):  # through a user's file too
        conf.load([f"conf={mine}", "model.path=/models/x"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        conf.load(["conf=ovd"])  # the embedded model it was made for
        conf.load(["conf=rec", "model.path=/models/x", "learner.lr=1e-6"])  # the user chose the lr
        conf.load(["conf=vlm_r1_rec", "model.path=/models/x"])
        conf.load(["conf=rec", "mode=eval", "model.path=/models/x"])  # no learning rate involved
        conf.load(["conf=task/rec", "model.path=/models/x"])  # base.yaml's recipe


def test_sizes_that_cannot_split_fail_at_load():
    with pytest.raises(conf.ConfigError, match="must divide evenly over learner.world_size=3"):
        conf.load(["trainer.prompts_per_step=4", "rollout.num_generations=4", "learner.world_size=3"])
    with pytest.raises(conf.ConfigError, match="some engines would idle"):
        conf.load(["trainer.prompts_per_step=1", "rollout.num_engines=2"])


def test_auto_is_resolved_into_a_copy_with_reasons():
    c = conf.load([])
    r, why = conf.resolve_auto(c, gpu=False)
    assert (r.trainer.max_staleness, r.learner.lora.sync, r.rollout.sync_pack_mb) == (0, "merged", 0.0)
    assert c.trainer.max_staleness == "auto" and c.learner.lora.sync == "auto"  # the input is left as it was
    assert "one CPU machine" in why["loop"] and "CPU engines" in why["lora"]
    g, _ = conf.resolve_auto(conf.load(["trainer.max_staleness=2"]), gpu=True)
    assert (g.trainer.max_staleness, g.learner.lora.sync, g.rollout.sync_pack_mb) == (2, "adapter", 64.0)


def test_a_command_line_value_that_is_not_yaml_is_one_clear_error():
    with pytest.raises(conf.ConfigError, match="a command-line value is not valid YAML"):
        conf.load(["reward.triggers=[{name: t,"])
