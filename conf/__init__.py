"""Configuration: ``base.yaml`` < ``conf/<name>.yaml`` < command line, validated before anything heavy.

    cfg = load(["conf=ovd", "learner.lr=1e-6"])

Unknown keys fail fast and name the closest valid key; values are checked against the type of
their default and against the allowed choices. ``reward.funcs`` is replaced, not merged, by a
task file (a task's reward set is a whole), while ``reward.funcs.NAME=w`` on the command line
adds or reweights one reward. Imports only OmegaConf, the rewards registry and the model-family names.
"""
from __future__ import annotations

import difflib
import pathlib
import warnings

from omegaconf import DictConfig, ListConfig, OmegaConf

from data.synthetic import SCENES, data_dir_name
from models import COORDS, FAMILIES

CONF_DIR = pathlib.Path(__file__).resolve().parent
FREE_KEYS = {"reward.funcs", "reward.params", "reward.schedules", "reward.triggers", "rollout.resources", "learner.resources", "reward.resources"}  # user-named keys
MIXED = {"trainer.max_staleness", "rollout.sync_pack_mb", "rollout.dynamic_sampling.oversample"}  # keys taking "auto" or a number
CHOICES = {
    "mode": ["train", "eval", "sft"],
    "model.family": ["auto", *FAMILIES],
    "model.coords": ["auto", *COORDS],
    "data.task": ["rec", "ovd", "qa"],
    "data.synthetic.scene": list(SCENES),
    "learner.zero_stage": [0, 1, 2, 3],
    "learner.dtype": ["auto", "fp32", "bf16"],
    "learner.off_policy": ["bypass", "decoupled", "none"],
    "learner.is_guard": ["truncate", "mask"],
    "learner.lora.sync": ["auto", "adapter", "merged"],
    "learner.lr_schedule": ["constant", "linear", "cosine"],
    "learner.loss_agg": ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"],
    "reward.box_convention": ["vlm_r1", "continuous"],
    "rollout.dtype": ["auto", "bfloat16", "float16", "float32"],
    "rollout.weight_transfer": ["vllm", "extension"],
    "wandb.mode": ["offline", "online", "disabled"],
}


class ConfigError(ValueError):
    """A configuration mistake, with what to do about it."""


def _flatten(node, prefix: str = "") -> dict[str, object]:
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    out = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, (dict, DictConfig)) and path not in FREE_KEYS:
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _check_keys(layer, known: dict[str, object], source: str) -> None:
    for key in _flatten(layer):
        if key in known or any(key.startswith(f + ".") for f in FREE_KEYS):
            continue
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else "; see conf/base.yaml for every key"
        raise ConfigError(f"unknown config key '{key}' (from {source}){hint}")


def _check_value(key: str, value, default) -> None:
    if key in MIXED:
        return  # auto or a number: checked by _validate_loop
    if key == "data.task" and isinstance(value, str) and all(t in CHOICES[key] for t in value.split(":")):
        return  # one task per data file
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{key}={value!r} is not one of {CHOICES[key]}")
    if default is None or value is None or isinstance(value, str) and "${" in value:
        return
    kind = type(default)
    ok = (isinstance(value, bool) if kind is bool else
          isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
          isinstance(value, int) and not isinstance(value, bool) if kind is int else
          isinstance(value, (list, tuple, ListConfig)) if kind in (list, ListConfig) else
          isinstance(value, (dict, DictConfig)) if kind in (dict, DictConfig) else
          isinstance(value, str))
    if not ok:
        raise ConfigError(f"{key}={value!r} should be a {kind.__name__} like its default {default!r}")


def _task_layer(name: str):
    path = pathlib.Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = CONF_DIR / f"{name}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in CONF_DIR.glob("*.yaml") if p.stem != "base")
        raise ConfigError(f"no config '{name}': use conf=<one of {names}> or conf=path/to/file.yaml")
    return OmegaConf.load(path), str(path)


def load(argv: list[str] | None = None) -> DictConfig:
    """Merge base < conf=<name> < dotlist overrides, validate, and resolve interpolations."""
    cli = OmegaConf.from_dotlist(list(argv or []))
    base = OmegaConf.load(CONF_DIR / "base.yaml")
    known = _flatten(base)
    layers = []
    task = None
    if "conf" in cli:
        task = _task_layer(str(cli.pop("conf")))
        layers.append(task)
    layers.append((cli, "the command line"))
    funcs = base.reward.funcs
    for layer, source in layers:
        _check_keys(layer, known, source)
        for key, value in _flatten(layer).items():
            if key in known:
                _check_value(key, value, known[key])
        if OmegaConf.select(layer, "reward.funcs") is not None:
            # a task file states its whole reward set; the command line adjusts single weights
            funcs = layer.reward.funcs if layer is not cli else OmegaConf.merge(funcs, layer.reward.funcs)
    cfg = OmegaConf.merge(base, *[layer for layer, _ in layers])
    cfg.reward.funcs = funcs
    _validate_funcs(cfg)
    _validate_loop(cfg)
    if task is not None:
        _warn_embedded_recipe(cfg, pathlib.Path(task[1]), cli)
    OmegaConf.set_struct(cfg, True)
    return cfg


# task files whose learning rate and KL are the embedded tiny model's -> VLM-R1's recipe for real models
EMBEDDED_RECIPES = {"rec": "vlm_r1_rec", "ovd": "vlm_r1_ovd"}


def base_recipe() -> list[str]:
    """Command-line overrides that put base.yaml's recipe (VLM-R1's lr 1e-6 and beta 0.04, 20 steps
    x 4 prompts, the default scene, evaluations of 64 images) back over the embedded one of
    conf=rec and conf=ovd (the tiny Qwen3-VL's lr 1e-4, beta 0, 300 steps x 8 prompts): for runs of
    those tasks on another model that keep base.yaml's recipe (the tests, the infrastructure
    benchmarks). The tasks themselves (model, data, rewards, triggers) stay as the files ship them."""
    base = _flatten(OmegaConf.load(CONF_DIR / "base.yaml"))
    keys = set()
    for task in EMBEDDED_RECIPES:
        keys |= {k for k in _flatten(OmegaConf.load(CONF_DIR / f"{task}.yaml"))
                 if k.split(".")[0] in ("learner", "trainer", "eval") or k in ("rollout.num_generations", "data.synthetic.scene")}
    return [f"{k}={base[k]}" for k in sorted(keys)]


def _warn_embedded_recipe(cfg: DictConfig, path: pathlib.Path, cli: DictConfig) -> None:
    """conf=rec / conf=ovd with a real checkpoint and the tiny model's lr: almost surely a mistake."""
    if (path.parent != CONF_DIR or path.stem not in EMBEDDED_RECIPES or str(cfg.model.path).startswith("builtin:")
            or cfg.mode == "eval"):  # evaluation takes no learning rate
        return
    if OmegaConf.select(cli, "learner.lr") is None:
        warnings.warn(f"conf={path.stem} carries the embedded tiny model's recipe (learner.lr={cfg.learner.lr:g}, "
                      f"learner.beta={cfg.learner.beta:g}), far too hot for model.path={cfg.model.path}: use "
                      f"conf={EMBEDDED_RECIPES[path.stem]} (VLM-R1's recipe: lr 1e-6, beta 0.04), or set learner.lr "
                      "and learner.beta yourself", UserWarning, stacklevel=2)


def _validate_loop(cfg: DictConfig) -> None:
    k = cfg.trainer.max_staleness
    if k == "auto":
        k = 0  # resolved when the cluster is known (conf.hardware.resolve_staleness); never above 0 with none
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(f"trainer.max_staleness={k!r} must be auto or a whole number >= 0 (0: synchronous)")
    if k > 0 and cfg.learner.off_policy == "none":
        raise ConfigError(f"learner.off_policy=none treats samples as on-policy, but trainer.max_staleness={k} trains "
                          "on samples up to that many updates old: use learner.off_policy=bypass or decoupled, "
                          "or trainer.max_staleness=0")
    pack = cfg.rollout.sync_pack_mb
    if pack != "auto" and (isinstance(pack, bool) or not isinstance(pack, (int, float)) or pack < 0):
        raise ConfigError(f"rollout.sync_pack_mb={pack!r} must be auto or a number of MB >= 0 (0: one broadcast per tensor)")
    ds = cfg.rollout.dynamic_sampling
    if not (isinstance(ds.max_rounds, int) and ds.max_rounds >= 0) or not ds.min_std >= 0:
        raise ConfigError(f"rollout.dynamic_sampling: max_rounds ({ds.max_rounds!r}) must be a whole number >= 0 and "
                          f"min_std ({ds.min_std!r}) >= 0")
    over = ds.oversample
    if over != "auto" and (isinstance(over, bool) or not isinstance(over, (int, float)) or over < 1):
        raise ConfigError(f"rollout.dynamic_sampling.oversample={over!r} must be auto or a number >= 1 (prompts "
                          "generated per missing group)")
    if ds.metric is not None:
        from rewards import resolve, validate_funcs
        try:
            name = resolve(ds.metric)
        except KeyError as e:
            raise ConfigError(f"rollout.dynamic_sampling.metric: {e.args[0]}") from None
        if name not in validate_funcs(dict(cfg.reward.funcs)):
            raise ConfigError(f"rollout.dynamic_sampling.metric={ds.metric!r} is not scored in this run: add it to "
                              f"reward.funcs (weight 0.0 scores it without paying it) or set metric to null")
    if cfg.learner.is_cap <= 1.0:
        raise ConfigError(f"learner.is_cap={cfg.learner.is_cap} must be above 1 (it caps importance weights)")


def _validate_funcs(cfg: DictConfig) -> None:
    from rewards import validate_funcs, validate_params
    try:
        validate_funcs(dict(cfg.reward.funcs))
    except (KeyError, ValueError) as e:
        raise ConfigError(f"reward.funcs: {e.args[0]}") from None
    try:
        params = validate_params(OmegaConf.to_container(cfg.reward.params, resolve=True))
    except (KeyError, ValueError) as e:
        raise ConfigError(f"reward.params: {e.args[0]}") from None
    from rewards.schedule import RuleSchedule
    try:
        RuleSchedule(validate_funcs(dict(cfg.reward.funcs)), params,
                     OmegaConf.to_container(cfg.reward.schedules, resolve=True), total_steps=1,
                     triggers=OmegaConf.to_container(cfg.reward.triggers, resolve=True))
    except (KeyError, ValueError) as e:
        raise ConfigError(e.args[0] if str(e.args[0]).startswith("reward.") else f"reward.schedules: {e.args[0]}") from None


def resolve(cfg: DictConfig, cache_root: pathlib.Path) -> DictConfig:
    """Fill the run-time defaults (synthetic data dir) and resolve every interpolation."""
    if cfg.data.synthetic.dir is None:
        cfg.data.synthetic.dir = str(cache_root / data_dir_name(cfg.data.synthetic.seed, cfg.data.synthetic.scene))
    OmegaConf.resolve(cfg)
    return cfg
