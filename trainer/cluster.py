"""Ray for a run: join ``cluster.address`` or start a private local cluster whose files stay in the
run directory, and the environment every actor gets.

    env = start(cfg, out_dir)       # ray.init done; env: the variables each actor group is given
    gpu = has_gpu()                 # decides the cluster-level ``auto`` settings (conf.resolve_auto)
    save_config(cfg, out_dir)       # the resolved configuration: printed once, kept as config.yaml
"""
from __future__ import annotations

import importlib
import ipaddress
import math
import os
import pathlib
import pkgutil
import socket
import sys
import zlib

import ray
from omegaconf import OmegaConf

from conf import cli
from data.tiny_model import cache_root
from weights.net import NODE_HOST_ENV, free_port

REPO = pathlib.Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("samples", "rewards", "models", "data", "conf", "weights", "learner", "actors", "trainer")


def actor_env(cfg) -> dict[str, str]:
    """The environment every actor gets: where the project and its caches are, vLLM's CPU settings,
    wandb's mode and, in a private local cluster, the address the project's sockets listen on."""
    in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ  # a Ray Job ships the code as its working_dir
    path = "" if in_job else os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {"PYTHONPATH": path, "TORCH_EXTENSIONS_DIR": str(cache_root() / "torch_extensions"),
           "VLLM_CACHE_ROOT": str(cache_root() / "vllm"), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0"),
           "TOKENIZERS_PARALLELISM": "false", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "VLLM_CPU_KVCACHE_SPACE": str(cfg.rollout.kv_cache_gb), "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "WANDB_MODE": cfg.wandb.mode, "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "ERROR"),
           NODE_HOST_ENV: "" if cfg.cluster.address else cfg.cluster.node_host}
    return {k: v for k, v in env.items() if v}


def start(cfg, out_dir: pathlib.Path) -> dict[str, str]:
    """Join ``cluster.address`` or start a private local Ray; returns the environment of every actor."""
    env, c = actor_env(cfg), cfg.cluster
    if c.address:
        import_project()  # the driver may be a Ray Job's: it needs every module before ray.init
        # no runtime_env here: inside a Ray Job it would replace the job's own (its working_dir);
        # the variables go to each actor group instead, which merges them with the job's
        ray.init(address=c.address, log_to_driver=True)
        if str(REPO) not in sys.path:  # a Ray Jobs driver loses the script's directory at ray.init
            sys.path.insert(0, str(REPO))
        return env
    # Token auth is off for the private cluster: its dashboard and the project's sockets listen on
    # loopback only (cluster.dashboard_host, cluster.node_host), and every process is this user's;
    # a cluster that is joined keeps whatever auth its owner set.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray would start one idle worker per CPU for this driver; every actor of the run carries a
    # runtime_env (its threads), which such a worker cannot take, so they would only cost start-up
    # CPU (13% of a start with three roles on 2 cores: python -m bench.ray_start)
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    if os.environ["RAY_AUTH_MODE"] == "disabled":
        print("Ray: a private cluster on this machine, token authentication off (a browser on its dashboard "
              "would need Ray's token; every port it and the project open listens on cluster.node_host / "
              "cluster.dashboard_host, 127.0.0.1 by default)", flush=True)
    for key, host in (("cluster.dashboard_host", c.dashboard_host if c.include_dashboard else "127.0.0.1"),
                      ("cluster.node_host", c.node_host)):
        if not is_loopback(host):
            print(f"WARNING: {key}={host} is not a loopback address and this private Ray runs without token "
                  "authentication: anyone who reaches it can submit code. Keep 127.0.0.1, or firewall the port.",
                  file=sys.stderr, flush=True)
    need = (cfg.rollout.num_engines * cfg.rollout.cpus_per_engine + cfg.learner.world_size * cfg.learner.cpus_per_rank
            + cfg.reward.num_workers * cfg.reward.cpus_per_worker)
    tmp = out_dir / "ray"
    if len(str(tmp)) > 40:  # Ray's unix sockets live ~64 chars below it; the limit is 107 bytes
        tmp = pathlib.Path("/tmp") / f"vr1-{zlib.crc32(str(out_dir).encode()):08x}"
    port = c.dashboard_port
    if c.include_dashboard and not port_free(c.dashboard_host, port):  # e.g. a second run on this machine
        port = free_port(c.dashboard_host)
        print(f"port {c.dashboard_port} is taken (another run?): this run's dashboard takes port {port}", flush=True)
    kw = dict(num_cpus=c.num_cpus or max(os.cpu_count() or 1, math.ceil(need)), include_dashboard=c.include_dashboard,
              dashboard_host=c.dashboard_host, dashboard_port=port, _temp_dir=str(tmp), runtime_env={"env_vars": env},
              _node_ip_address=c.node_host, log_to_driver=True, configure_logging=True, logging_level="WARNING")
    if c.metrics_port:
        kw["_metrics_export_port"] = c.metrics_port
    ray.init(**kw)
    if c.include_dashboard:
        print(f"Ray dashboard: http://{c.dashboard_host}:{port}", flush=True)
    return env


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0"), is_loopback("10.1.2.3")
    (True, True, False, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


def has_gpu() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


def machine_cores(cfg) -> float:
    """Cores the run's utilisation is measured against: this machine's for a private local
    cluster, the joined cluster's CPUs otherwise."""
    if cfg.cluster.address:
        return float(ray.cluster_resources().get("CPU", 1))
    return float(os.cpu_count() or 1)


def save_config(cfg, out_dir: pathlib.Path) -> pathlib.Path:
    """Write the resolved configuration to ``<out_dir>/config.yaml`` and print, in one block, what
    differs from ``conf/base.yaml``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "config.yaml"
    path.write_text(OmegaConf.to_yaml(cfg))
    print(f"config ({path}; differences from conf/base.yaml):\n{cli.changed(cfg)}", flush=True)
    return path


def import_project() -> list[str]:
    """Import every module of the project before ray.init: a Ray Jobs driver cannot rely on
    importing from its working directory afterwards (seen with Ray 2.60: ModuleNotFoundError
    mid-run for a module first imported lazily). All of them, not a hand-kept list, so a new
    lazy import cannot bring the failure back. Returns the names imported."""
    names = []
    for pkg in PROJECT_PACKAGES:
        mod = importlib.import_module(pkg)
        names.append(pkg)
        for info in pkgutil.walk_packages(getattr(mod, "__path__", []), prefix=f"{pkg}."):
            importlib.import_module(info.name)
            names.append(info.name)
    return names
