"""Make the configured data exist and load it: the synthetic set is generated when the config
points into it, then the training and validation prompts are read with a report of skipped rows.

    train, val, report = load_splits(cfg.data, train=True)   # mode=eval: train=False, only val
"""
from __future__ import annotations

import pathlib
import time

from data.loaders import DataError, SkipReport, load_prompts, split_paths
from data.scenes import scene_named
from data.synthetic import TASKS, generate


def ensure_synthetic(data_cfg, train: bool = True) -> bool:
    """Generate the synthetic shapes data if a configured file lives under ``data.synthetic.dir``
    and is missing. Returns True if it generated anything."""
    root = pathlib.Path(data_cfg.synthetic.dir).resolve()
    files = (split_paths(data_cfg.train_files) if train else []) + split_paths(data_cfg.val_files)
    wanted = [pathlib.Path(p).resolve() for p in files]
    missing = [p for p in wanted if root in p.parents and not p.exists()]
    if not missing:
        return False
    tasks = [t for t in TASKS if any(p.name.startswith(f"{t}_") for p in missing)]
    t0 = time.perf_counter()
    print(f"generating the synthetic shapes data ({', '.join(tasks)}) into {root} ...", flush=True)
    s = data_cfg.synthetic
    generate(root, seed=s.seed, n_train=s.n_train, n_val=s.n_val, n_ood=s.n_ood, tasks=tuple(tasks),
             spec=scene_named(s.get("scene", "default")))
    print(f"generated in {time.perf_counter() - t0:.1f} s", flush=True)
    still = [p for p in missing if not p.exists()]
    if still:
        raise DataError(f"{still[0]} is not a file the synthetic generator writes "
                                f"(it writes {{{','.join(TASKS)}}}_{{train,val,val_ood}}.jsonl)")
    return True


def load_splits(d, train: bool = True) -> tuple[list, list, SkipReport]:
    """The prompts of ``data.train_files`` (when ``train``) and ``data.val_files``, generating the
    synthetic set first where they point into it. Bad rows are skipped and counted in the report
    (``data.strict``: the first one stops); a split left with no usable row is a ``DataError``."""
    ensure_synthetic(d, train)
    report = SkipReport()
    kw = dict(task=d.task, accu_methods=d.accu_reward_method, strict=d.strict, max_image_pixels=d.max_image_pixels,
              report=report)
    prompts = []
    if train:
        prompts, _ = load_prompts(d.train_files, d.image_folders, **kw)
        if not prompts:
            raise DataError(f"no usable training rows in {d.train_files}: {report.line()}")
    val = []
    if d.val_files:  # images in data.val_image_folders, else searched in the training folders
        val = load_prompts(d.val_files, d.val_image_folders or d.image_folders, search_folders=not d.val_image_folders,
                           **kw)[0]
        if not val:
            raise DataError(f"no usable validation rows in {d.val_files}: {report.line()}")
    return prompts, val, report
