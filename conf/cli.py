"""The command line of ``orchestrator.py``: usage, the resolved configuration, one-line errors.

    python orchestrator.py --help                               # usage and the shipped configs
    python orchestrator.py conf=ovd learner.lr=1e-6 --print-config   # the resolved config, then exit

A configuration or data mistake is one line on stderr naming the key or file, and exit status 2;
nothing here imports torch, so both answer in about a second.
"""
from __future__ import annotations

import contextlib
import pathlib
import sys
import warnings

from omegaconf import DictConfig, OmegaConf

import conf
from data.loaders import DataError

USAGE = """usage: python orchestrator.py [conf=NAME | conf=path/to/file.yaml] [key=value ...] [--print-config]

GRPO with rule-based rewards for vision-language models on Ray + vLLM + DeepSpeed.

  conf=NAME         a shipped config (below) or your own YAML file; a file can build on others
                    with a defaults list, e.g.  defaults: [vlm_r1_rec]  then the keys it changes
  key=value         override any key, last wins: learner.lr=1e-6 trainer.max_steps=50
                    reward.funcs.NAME=W adds or reweights one reward
  --print-config    print the resolved configuration and exit
  -h, --help        this text

Every key, its default and its range: conf/base.yaml (and docs/configuration.md).
Shipped configs (conf/; task/ and recipe/ are the parts the named ones are made of):
"""


def usage() -> str:
    names = conf.shipped()
    width = max(map(len, names))
    return USAGE + "\n".join(f"  {n:<{width}}  {line}" for n, line in names.items()) + "\n"


@contextlib.contextmanager
def user_errors():
    """A configuration or data mistake ends the program as one line and exit status 2."""
    try:
        yield
    except (conf.ConfigError, DataError) as e:
        kind = "config" if isinstance(e, conf.ConfigError) else "data"
        print(f"{kind} error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def parse(argv: list[str], cache_root: pathlib.Path) -> DictConfig:
    """The validated, resolved configuration of a command line; ``--help`` and ``--print-config``
    print and exit here."""
    if "-h" in argv or "--help" in argv:
        print(usage(), end="")
        raise SystemExit(0)
    show = "--print-config" in argv
    argv = [a for a in argv if a != "--print-config"]
    warnings.showwarning = _show_warning  # a config warning is one line too
    with user_errors():
        cfg = conf.resolve(conf.load(argv), cache_root)
    if show:
        print(OmegaConf.to_yaml(cfg), end="")
        raise SystemExit(0)
    return cfg


def changed(cfg: DictConfig) -> str:
    """The keys of a resolved ``cfg`` whose value differs from ``conf/base.yaml``'s, one a line."""
    defaults = conf.flatten(conf.defaults())
    return "\n".join(f"  {k}: {v}" for k, v in conf.flatten(cfg).items() if defaults.get(k, object()) != v)
