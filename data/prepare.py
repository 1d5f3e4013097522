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
              report=report, columns=dict(d.columns), image_cache=d.image_cache)
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


class PromptLength:
    """Prompt tokens as the engine will count them: the chat-templated text, plus what each image
    expands to in the family's processor at the configured pixel limits. The expansion is measured
    with the processor itself (a blank image of that size), so it is exact for every family; once
    two sizes agree with the processor's own token count (``_get_num_multimodal_tokens``, what vLLM
    asks too) plus a constant (the image's start/end tokens), the other sizes take that count
    without running the processor, so a dataset with thousands of image sizes loads in seconds.

        n = PromptLength(processor)(prompt)
    """

    def __init__(self, processor):
        self.processor, self.extra = processor, {}
        self.base_text = self.text("x", 1, "rec")
        self.base_tokens = len(processor.tokenizer(self.base_text)["input_ids"])  # (the text without the image)
        self.offsets: list[int] = []  # measured expansion - the processor's count, per measured size
        self.offset: int | None = None  # once two sizes agree

    def text(self, question: str, n_images: int, task: str) -> str:
        from data.prompts import prompt_text
        return prompt_text(self.processor, question, n_images, task)

    def measure(self, size: tuple[int, int]) -> int:
        """Tokens a blank image of ``size`` adds, through the processor."""
        from PIL import Image
        ids = self.processor(text=[self.base_text], images=[Image.new("RGB", size)])["input_ids"][0]
        return len(ids) - self.base_tokens

    def count(self, size: tuple[int, int]) -> int | None:
        """The processor's own image-token count for ``size`` (w, h), if it has one."""
        fn = getattr(self.processor, "_get_num_multimodal_tokens", None)
        try:
            return int(fn(image_sizes=[(size[1], size[0])]).num_image_tokens[0]) if fn else None
        except Exception:  # noqa: BLE001 - a processor without the API's full form: measure instead
            return None

    def image(self, size: tuple[int, int]) -> int:
        """Tokens one image of ``size`` (w, h) adds to a prompt beyond its place-holder text."""
        if size not in self.extra:
            fast = self.count(size)
            if fast is not None and self.offset is not None:
                self.extra[size] = fast + self.offset
            else:
                self.extra[size] = n = self.measure(size)
                if fast is not None:
                    self.offsets.append(n - fast)
                    if len(self.offsets) >= 2 and len(set(self.offsets)) == 1:
                        self.offset = self.offsets[0]
        return self.extra[size]

    def __call__(self, p) -> int:
        text = self.text(p.question, len(p.images), p.task)
        return len(self.processor.tokenizer(text)["input_ids"]) + sum(self.image(tuple(s)) for s in p.image_sizes)


def drop_too_long(prompts: list, count, max_len: int, report: SkipReport, strict: bool) -> list:
    """The prompts an engine with ``rollout.max_model_len`` = ``max_len`` can take (at least one
    token left to generate); the others are skips in ``report`` (``data.strict``: the first stops)."""
    kept = []
    for p in prompts:
        n = count(p)
        if n >= max_len:
            report.loaded -= 1
            report.add("prompt longer than rollout.max_model_len", p.source or p.id,
                       f"{n} tokens (images included) >= {max_len}: raise rollout.max_model_len or lower "
                       "model.max_pixels", strict)
        else:
            kept.append(p)
    return kept


def fit_to_engines(train: list, val: list, model_path: str, model_cfg, max_len: int, report: SkipReport,
                   strict: bool = False) -> tuple[list, list]:
    """Drop (and count in ``report``) the rows whose prompt the rollout engines would refuse as too
    long, counted with the model's own processor; a split left empty is a ``DataError``."""
    from transformers import AutoProcessor
    kw = {k: model_cfg[k] for k in ("min_pixels", "max_pixels") if model_cfg.get(k)}
    processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=bool(model_cfg.get("trust_remote_code")),
                                              **kw)
    count = PromptLength(processor)
    out = []
    for name, split in (("training", train), ("validation", val)):
        kept = drop_too_long(split, count, max_len, report, strict)
        if split and not kept:
            raise DataError(f"no usable {name} rows: {report.line()}")
        out.append(kept)
    return out[0], out[1]
