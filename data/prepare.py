"""Make the configured data exist: generate the synthetic set when the config points into it."""
from __future__ import annotations

import pathlib
import time

from data.loaders import split_paths


def ensure_synthetic(data_cfg) -> bool:
    """Generate the synthetic shapes data if a configured file lives under ``data.synthetic.dir``
    and is missing. Returns True if it generated anything."""
    root = pathlib.Path(data_cfg.synthetic.dir).resolve()
    wanted = [pathlib.Path(p).resolve() for p in split_paths(data_cfg.train_files) + split_paths(data_cfg.val_files)]
    missing = [p for p in wanted if root in p.parents and not p.exists()]
    if not missing:
        return False
    from data.synthetic import TASKS, generate, scene_named
    tasks = [t for t in TASKS if any(p.name.startswith(f"{t}_") for p in missing)]
    t0 = time.perf_counter()
    print(f"generating the synthetic shapes data ({', '.join(tasks)}) into {root} ...", flush=True)
    s = data_cfg.synthetic
    generate(root, seed=s.seed, n_train=s.n_train, n_val=s.n_val, n_ood=s.n_ood, tasks=tuple(tasks),
             spec=scene_named(s.get("scene", "default")))
    print(f"generated in {time.perf_counter() - t0:.1f} s", flush=True)
    still = [p for p in missing if not p.exists()]
    if still:
        raise FileNotFoundError(f"{still[0]} is not a file the synthetic generator writes "
                                f"(it writes {{{','.join(TASKS)}}}_{{train,val,val_ood}}.jsonl)")
    return True
