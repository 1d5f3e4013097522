"""Configuration: ``base.yaml`` < a named config and what it builds on < command line, validated
before anything heavy.

    cfg = load(["conf=ovd", "learner.lr=1e-6"])        # validated; interpolations still open
    cfg = resolve(cfg, cache_root)                       # run-time paths filled, interpolations resolved
    cfg, why = resolve_auto(cfg, gpu=False, joined=False)  # every cluster-level ``auto`` as a value

A config file may name what it builds on in a ``defaults:`` list (Hydra's shape): shipped configs
pair a task file (``conf/task/``: data, prompts, rewards) with a recipe file (``conf/recipe/``:
model, sizes, learning rate, devices), and a user's file can extend a shipped one and change two
keys. Unknown keys fail fast and name the closest valid key; values are checked against the type
of their default and the allowed choices. ``reward.funcs`` is replaced, not merged, by each file
that states it (a task's reward set is a whole), while ``reward.funcs.NAME=w`` on the command line
adds or reweights one reward. Imports OmegaConf and the name registries below it (rewards, model
families, synthetic scenes), nothing heavy.
"""
from __future__ import annotations

import difflib
import functools
import pathlib
import warnings

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from conf import ranges
from conf.hardware import resolve_lora_sync, resolve_pack_mb, resolve_staleness
from conf.ranges import ConfigError
from data.scenes import SCENES, data_dir_name
from models import COORDS, FAMILIES
from rewards import resolve as resolve_reward
from rewards import validate_funcs, validate_params
from rewards.schedule import RuleSchedule

CONF_DIR = pathlib.Path(__file__).resolve().parent
FREE_KEYS = {"reward.funcs", "reward.params", "reward.schedules", "reward.triggers", "rollout.resources", "learner.resources", "reward.resources"}  # user-named keys
MIXED = {"trainer.max_staleness", "rollout.sync_pack_mb", "rollout.dynamic_sampling.oversample",
         "rollout.enforce_eager", "rollout.block_size"}  # keys taking "auto" or a number (or a bool)
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
    "learner.adam_impl": ["fused", "foreach"],
    "learner.cpu_linear": ["auto", "torch", "onednn"],
    "learner.loss_agg": ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"],
    "reward.box_convention": ["vlm_r1", "continuous"],
    "rollout.dtype": ["auto", "bfloat16", "float16", "float32"],
    "rollout.weight_transfer": ["vllm", "extension"],
    "wandb.mode": ["offline", "online", "disabled"],
}


def flatten(node, prefix: str = "") -> dict[str, object]:
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    out = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, (dict, DictConfig)) and path not in FREE_KEYS:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _check_keys(layer, known: dict[str, object], source: str) -> None:
    for key in flatten(layer):
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


@functools.lru_cache(maxsize=1)
def _base_text() -> str:
    return (CONF_DIR / "base.yaml").read_text()


def defaults() -> DictConfig:
    """A fresh copy of ``conf/base.yaml``. Its text is read once and kept: a Ray Jobs driver loses
    its working directory's files at ray.init, and the run prints its differences from the defaults
    after that."""
    return OmegaConf.create(_base_text())


def shipped() -> dict[str, str]:
    """The configs a user runs by name (``conf=<name>``, and the task and recipe parts they are made
    of), each with the first line of its opening comment."""
    out = {}
    for path in sorted(CONF_DIR.rglob("*.yaml"), key=lambda p: (p.parent != CONF_DIR, str(p))):  # named ones first
        name = path.relative_to(CONF_DIR).with_suffix("").as_posix()
        if name != "base":
            first = next((ln.lstrip("# ").rstrip() for ln in path.read_text().splitlines() if ln.startswith("#")), "")
            out[name] = first
    return out


def _find(name: str, near: pathlib.Path | None) -> pathlib.Path:
    """A config by name (``rec``, ``task/ovd``: beside the file naming it, else in ``conf/``) or by
    path (``my.yaml``: relative to that file, or to the working directory on the command line)."""
    if name.endswith((".yaml", ".yml")):
        path = pathlib.Path(name)
        candidates = [path if path.is_absolute() or near is None else near / path]
    else:
        candidates = ([near / f"{name}.yaml"] if near is not None else []) + [CONF_DIR / f"{name}.yaml"]
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise ConfigError(f"no config '{name}': use conf=<one of {', '.join(shipped())}> or conf=path/to/file.yaml "
                      "(python orchestrator.py --help lists them)")


def _compose(name: str, near: pathlib.Path | None = None, chain: tuple = ()) -> list[tuple[DictConfig, str]]:
    """The layers of a named config, in merge order: what its ``defaults:`` list names (each with
    its own defaults first), then the file itself."""
    path = _find(name, near)
    if path in chain:
        raise ConfigError(f"config {path} names itself through its defaults: {' -> '.join(map(str, chain + (path,)))}")
    try:
        layer = OmegaConf.load(path)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}"[:300]) from None
    if not isinstance(layer, DictConfig):
        raise ConfigError(f"{path}: a config file holds a mapping of keys, not {type(layer).__name__}")
    defaults = layer.pop("defaults", None) or []
    if not isinstance(defaults, (list, ListConfig)) or not all(isinstance(d, str) for d in defaults):
        raise ConfigError(f"{path}: defaults must be a list of config names, e.g. [task/rec, recipe/tiny]")
    layers = []
    for d in defaults:
        layers += _compose(d, path.parent, chain + (path,))
    return layers + [(layer, str(path))]


def load(argv: list[str] | None = None) -> DictConfig:
    """Merge base < conf=<name> (and what it builds on) < dotlist overrides, validate, and keep
    interpolations open (``resolve`` fills them)."""
    argv = list(argv or [])
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise ConfigError(f"'{bad[0]}' is not an override: write key=value (e.g. learner.lr=1e-6); "
                          "python orchestrator.py --help shows the syntax")
    try:
        cli = OmegaConf.from_dotlist(argv)
    except yaml.YAMLError as e:
        raise ConfigError(f"a command-line value is not valid YAML: {' '.join(str(e).split())}"[:300]) from None
    base = defaults()
    known = flatten(base)
    layers = _compose(str(cli.pop("conf"))) if "conf" in cli else []
    layers.append((cli, "the command line"))
    funcs = base.reward.funcs
    for layer, source in layers:
        _check_keys(layer, known, source)
        for key, value in flatten(layer).items():
            if key in known:
                _check_value(key, value, known[key])
                ranges.check(key, value)
        if OmegaConf.select(layer, "reward.funcs") is not None:
            # a file states its whole reward set; the command line adjusts single weights
            funcs = layer.reward.funcs if layer is not cli else OmegaConf.merge(funcs, layer.reward.funcs)
    cfg = OmegaConf.merge(base, *[layer for layer, _ in layers])
    cfg.reward.funcs = funcs
    _validate_funcs(cfg)
    _validate_loop(cfg)
    _validate_sizes(cfg)
    _warn_tiny_recipe(cfg, [source for _, source in layers], cli)
    OmegaConf.set_struct(cfg, True)
    return cfg


TINY_RECIPE = str((CONF_DIR / "recipe" / "tiny.yaml").resolve())


def _warn_tiny_recipe(cfg: DictConfig, sources: list[str], cli: DictConfig) -> None:
    """The embedded tiny model's recipe with a real checkpoint: almost surely a mistake."""
    if (TINY_RECIPE not in sources or str(cfg.model.path).startswith("builtin:") or cfg.mode == "eval"
            or OmegaConf.select(cli, "learner.lr") is not None):  # evaluation takes no lr; a chosen lr is a choice
        return
    tasks = [t for t in ("rec", "ovd") if t == cfg.data.task]
    instead = f"conf=vlm_r1_{tasks[0]}" if tasks else "recipe/vlm_r1_3b in your config's defaults"
    warnings.warn(f"the config carries the embedded tiny model's recipe (learner.lr={cfg.learner.lr:g}, "
                  f"learner.beta={cfg.learner.beta:g}), far too hot for model.path={cfg.model.path}: use {instead} "
                  "(VLM-R1's recipe: lr 1e-6, beta 0.04), or set learner.lr and learner.beta yourself",
                  UserWarning, stacklevel=3)


def _validate_sizes(cfg: DictConfig) -> None:
    """The batch must split as configured (checked before anything heavy starts)."""
    n = cfg.trainer.prompts_per_step * cfg.rollout.num_generations
    if n % cfg.learner.world_size:
        raise ConfigError(f"trainer.prompts_per_step x rollout.num_generations = {n} completions per step must "
                          f"divide evenly over learner.world_size={cfg.learner.world_size}")
    if cfg.trainer.prompts_per_step < cfg.rollout.num_engines:
        raise ConfigError(f"trainer.prompts_per_step={cfg.trainer.prompts_per_step} is fewer than "
                          f"rollout.num_engines={cfg.rollout.num_engines}: some engines would idle")


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
    eager = cfg.rollout.enforce_eager
    if not (isinstance(eager, bool) or eager == "auto"):
        raise ConfigError(f"rollout.enforce_eager={eager!r} must be true, false or auto")
    block = cfg.rollout.block_size
    if block != "auto" and (isinstance(block, bool) or not isinstance(block, int) or block < 1):
        raise ConfigError(f"rollout.block_size={block!r} must be auto or a whole number of tokens >= 1 "
                          "(a multiple of 32 on CPU)")
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
        try:
            name = resolve_reward(ds.metric)
        except KeyError as e:
            raise ConfigError(f"rollout.dynamic_sampling.metric: {e.args[0]}") from None
        if name not in validate_funcs(dict(cfg.reward.funcs)):
            raise ConfigError(f"rollout.dynamic_sampling.metric={ds.metric!r} is not scored in this run: add it to "
                              f"reward.funcs (weight 0.0 scores it without paying it) or set metric to null")


def _validate_funcs(cfg: DictConfig) -> None:
    try:
        validate_funcs(dict(cfg.reward.funcs))
    except (KeyError, ValueError) as e:
        raise ConfigError(f"reward.funcs: {e.args[0]}") from None
    try:
        params = validate_params(OmegaConf.to_container(cfg.reward.params, resolve=True))
    except (KeyError, ValueError) as e:
        raise ConfigError(f"reward.params: {e.args[0]}") from None
    try:
        RuleSchedule(validate_funcs(dict(cfg.reward.funcs)), params,
                     OmegaConf.to_container(cfg.reward.schedules, resolve=True), total_steps=1,
                     triggers=OmegaConf.to_container(cfg.reward.triggers, resolve=True))
    except (KeyError, ValueError) as e:
        raise ConfigError(e.args[0] if str(e.args[0]).startswith("reward.") else f"reward.schedules: {e.args[0]}") from None


def resolve(cfg: DictConfig, cache_root: pathlib.Path) -> DictConfig:
    """A copy of ``cfg`` with the run-time defaults filled (the synthetic data dir and the cache of
    images embedded in table data under ``cache_root``) and every interpolation resolved."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    if out.data.synthetic.dir is None:
        out.data.synthetic.dir = str(cache_root / data_dir_name(out.data.synthetic.seed, out.data.synthetic.scene))
    if out.data.image_cache is None:
        out.data.image_cache = str(cache_root / "images")
    OmegaConf.resolve(out)
    OmegaConf.set_struct(out, True)
    return out


def resolve_auto(cfg: DictConfig, gpu: bool) -> tuple[DictConfig, dict[str, str]]:
    """A copy of ``cfg`` with every cluster-level ``auto`` set to its value, and why each was chosen:
    ``trainer.max_staleness``, ``learner.lora.sync`` and ``rollout.sync_pack_mb`` depend on whether
    the roles have GPUs (``gpu``) and on whether a cluster was joined. The compute dtypes stay
    ``auto`` here: each role resolves its own on the machine it lands on and reports the choice."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    joined = bool(cfg.cluster.address)
    out.trainer.max_staleness, loop = resolve_staleness(cfg.trainer.max_staleness, gpu, joined, cfg.learner.off_policy)
    out.learner.lora.sync, lora = resolve_lora_sync(cfg.learner.lora.sync, gpu)
    out.rollout.sync_pack_mb = resolve_pack_mb(cfg.rollout.sync_pack_mb, gpu)
    OmegaConf.set_struct(out, True)
    return out, {"loop": loop, "lora": lora}


def plain(node):
    """An OmegaConf node as plain Python containers (what actors and JSON files receive)."""
    return OmegaConf.to_container(node, resolve=True)
