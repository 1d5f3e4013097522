"""Load training/eval prompts from VLM-R1 JSONL files or COCO instances, refusing bad input.

    prompts, report = load_prompts(files, image_folders, task="rec")

``files`` and ``image_folders`` are ":"-separated like VLM-R1's ``data_file_paths`` and
``image_folders`` (one folder per file, or one for all); so is ``task`` (rec or ovd per file).
With ``search_folders=True`` (validation files read with the training folders) a folder list whose
length matches neither is searched in order for each image. A ``.jsonl`` file holds VLM-R1 rows;
a ``.json`` file is read as COCO instances and turned into OVD rows (one per image, asking for
the categories present). A ``.parquet`` file, a folder written by ``datasets``' ``save_to_disk``
(``folder#split`` for one split of a ``DatasetDict``) or a hub dataset (``hf://org/name#split``, where
a hub is reachable) is read as a table: ``columns`` names its image, problem, solution,
reward-method and id columns (``DEFAULT_COLUMNS``; a table with VLM-R1's ``conversations`` column
and no problem column uses that), and images given as bytes (``datasets``' ``Image`` feature,
parquet structs ``{bytes, path}``) are written once to ``image_cache``, named by their hash.
Every problem -- malformed JSON, a missing field, an image that is
missing, unreadable, too large or outside its folder, a box outside its image -- is reported
with file and line and the row is skipped (``strict=True`` raises ``DataError`` instead).
Nothing else is dropped, and ``report.summary()`` says what was skipped and why.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError

from samples import Prompt

from rewards import ALIASES, REGISTRY, unavailable


class DataError(ValueError):
    """Bad input data under ``data.strict=true``."""


MAX_IMAGES = 4  # images per prompt the rollout engines accept (vLLM's limit_mm_per_prompt)
DEFAULT_COLUMNS = {"image": "image", "problem": "problem", "solution": "solution",
                   "reward_method": "accu_reward_method", "id": "id"}  # data.columns


@dataclass
class SkipReport:
    """Counts of skipped rows by reason, with the first examples of each."""
    loaded: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    examples: dict = field(default_factory=dict)

    def add(self, reason: str, where: str, detail: str, strict: bool) -> None:
        if strict:
            raise DataError(f"{where}: {reason}: {detail} (data.strict=true stops here; "
                            f"set data.strict=false to skip bad rows and report them)")
        self.skipped[reason] += 1
        self.examples.setdefault(reason, []).append(f"{where}: {detail}")
        del self.examples[reason][5:]

    def line(self) -> str:
        """The skips on one line (a data error is one line)."""
        if not self.skipped:
            return "the files hold no rows"
        return "; ".join(f"{n} {reason} (e.g. {self.examples[reason][0]})" for reason, n in self.skipped.most_common())

    def summary(self) -> str:
        if not self.skipped:
            return f"data: {self.loaded} rows loaded, none skipped"
        parts = [f"data: {self.loaded} rows loaded, {sum(self.skipped.values())} skipped:"]
        for reason, n in self.skipped.most_common():
            parts.append(f"  {reason}: {n}  (e.g. {self.examples[reason][0]})")
        return "\n".join(parts)


def split_paths(spec: str | None) -> list[str]:
    """``a.jsonl:b.parquet:hf://org/name#train`` -> its parts (a ``:`` before ``//`` belongs to a URL)."""
    return [p for p in re.split(r":(?!//)", spec or "") if p]


def is_table(path: str) -> bool:
    """Whether a data path is read as a table (parquet, a ``save_to_disk`` folder, a hub dataset)."""
    source = path.split("#", 1)[0]
    return path.startswith("hf://") or source.endswith(".parquet") or os.path.isdir(source)


def load_prompts(files: str, image_folders: str, task: str, accu_methods: str | None = None,
                 strict: bool = False, max_image_pixels: int = 50_000_000,
                 report: SkipReport | None = None, search_folders: bool = False, columns: dict | None = None,
                 image_cache: str | None = None) -> tuple[list[Prompt], SkipReport]:
    """Read every file; returns the good prompts (in file order) and the skip report."""
    paths, folders = split_paths(files), split_paths(image_folders)
    methods, tasks = split_paths(accu_methods), split_paths(task)
    if len(tasks) == 1:
        tasks = tasks * len(paths)
    from data.prompts import TEMPLATES
    if len(tasks) != len(paths) or any(t not in TEMPLATES for t in tasks):
        raise DataError(f"data.task={task!r}: give one of {', '.join(TEMPLATES)}, or one per data file (':'-separated)")
    if not paths:
        raise DataError("no data files given (data.train_files / data.val_files are empty)")
    if not folders and all(is_table(p) for p in paths):  # tables may carry their images
        per_file = [()] * len(paths)
    elif len(folders) in (1, len(paths)):
        per_file = [(f,) for f in (folders * len(paths) if len(folders) == 1 else folders)]
    elif search_folders and folders:  # e.g. one validation file whose images are in any training folder
        per_file = [tuple(folders)] * len(paths)
    else:
        raise DataError(f"{len(paths)} data files but {len(folders)} image folders: give one folder per "
                        f"file, or one for all (':'-separated, like VLM-R1)")
    if methods and len(methods) != len(paths):
        raise DataError(f"data.accu_reward_method names {len(methods)} methods for {len(paths)} files")
    report = report or SkipReport()
    out: list[Prompt] = []
    seen: set[str] = set()
    cols = {**DEFAULT_COLUMNS, **(columns or {})}
    cache = os.path.realpath(image_cache) if image_cache else None
    for i, (path, cands) in enumerate(zip(paths, per_file)):
        table = is_table(path)
        if not table and not os.path.isfile(path):
            raise DataError(f"data file not found: {path}")
        for folder in cands:
            if not table and not os.path.isdir(folder):  # (a table's rows may need no folder)
                raise DataError(f"image folder not found: {folder}")
        method = methods[i] if methods else None
        if table:
            rows = _table_rows(path, cols, cache, report, strict)
        else:
            rows = (_coco_rows if path.endswith(".json") else _jsonl_rows)(path, report, strict)
        real = tuple(os.path.realpath(f) for f in cands)
        for where, row in rows:
            p = _prompt(row, where, real, tasks[i], method, report, strict, max_image_pixels, cache)
            if p is not None:
                if p.id in seen:  # ids repeat across VLM-R1 files; completions are keyed by prompt id
                    p = dataclasses.replace(p, id=f"{p.id}@{where}")
                seen.add(p.id)
                out.append(p)
    report.loaded += len(out)
    return out, report


def _jsonl_rows(path: str, report: SkipReport, strict: bool):
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            where = f"{path}:{n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:  # counted, never silently repaired into other text
                report.add("not_utf8", where, str(e)[:120], strict)
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as e:
                report.add("malformed_json", where, str(e)[:120], strict)
                continue
            yield where, row


def _table_records(path: str):
    """The rows of a table source as dicts, images undecoded (bytes / paths, never PIL images)."""
    source, _, split = path.partition("#")
    if source.endswith(".parquet") and not path.startswith("hf://"):
        import pyarrow.parquet as pq
        try:
            batches = pq.ParquetFile(source).iter_batches(batch_size=256)
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"{source}: not a readable parquet file ({e})"[:300]) from None
        for batch in batches:
            yield from batch.to_pylist()
        return
    import datasets
    try:
        if path.startswith("hf://"):
            ds = datasets.load_dataset(source[len("hf://"):], split=split or "train")
        else:
            ds = datasets.load_from_disk(source)
    except (OSError, ValueError, FileNotFoundError, ConnectionError) as e:
        where = "the hub" if path.startswith("hf://") else "disk"
        raise DataError(f"{path}: cannot load this dataset from {where} ({e}); a dataset from the hub can be "
                        "saved with datasets' save_to_disk or to_parquet and given as that path"[:400]) from None
    if isinstance(ds, datasets.DatasetDict):
        if not split and len(ds) == 1:
            split = next(iter(ds))
        if split not in ds:
            raise DataError(f"{path}: name one of its splits as {source}#<split>: {', '.join(ds)}")
        ds = ds[split]
    elif split and not path.startswith("hf://"):
        raise DataError(f"{path}: this folder holds one dataset, not splits; drop #{split}")
    for table in ds.with_format("arrow").iter(batch_size=256):
        yield from table.to_pylist()


def _table_rows(path: str, cols: dict, cache: str | None, report: SkipReport, strict: bool):
    """A table's rows in VLM-R1's row form (embedded images written to ``cache``)."""
    for n, rec in enumerate(_table_records(path), 1):
        where = f"{path}:{n}"
        if cols["problem"] not in rec and "conversations" in rec:
            row = {"conversations": rec["conversations"]}
        else:
            missing = [c for c in (cols["problem"], cols["solution"]) if c not in rec]
            if missing:
                raise DataError(f"{path}: no column {missing[0]!r} (its columns: {', '.join(rec)}); map yours with "
                                f"data.columns.problem / data.columns.solution")
            row = {"conversations": [{"from": "human", "value": rec[cols["problem"]]},
                                     {"from": "gpt", "value": rec[cols["solution"]]}]}
        for key, col in (("id", cols["id"]), ("accu_reward_method", cols["reward_method"])):
            if rec.get(col) is not None:
                row[key] = rec[col]
        try:
            row["image"] = _table_images(rec.get(cols["image"]), cache)
        except (TypeError, OSError) as e:
            report.add("bad_image_entry", where, str(e)[:160], strict)
            continue
        yield where, row


def _table_images(value, cache: str | None) -> list[str]:
    """A table cell's images as paths: a path, bytes, ``{bytes, path}`` or a list of those; bytes are
    written to ``cache`` as ``<sha256>.img`` (absolute paths, accepted only there)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _table_images(v, cache)]
    if isinstance(value, dict) and value.get("bytes") is not None:
        value = value["bytes"]
    elif isinstance(value, dict) and isinstance(value.get("path"), str):
        value = value["path"]
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (bytes, bytearray)):
        raise TypeError(f"an image must be a path, bytes or {{bytes, path}}, not {type(value).__name__}")
    if cache is None:
        raise TypeError("the table embeds images but no data.image_cache is set to write them to")
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, hashlib.sha256(value).hexdigest()[:32] + ".img")
    if not os.path.isfile(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(value)
        os.replace(tmp, path)
    return [path]


def _prompt(row, where, folders, task, method, report, strict, max_pixels, cache=None) -> Prompt | None:
    try:
        conv = row["conversations"]
        question, solution = conv[0]["value"], conv[1]["value"]
        images = row.get("image", [])
        images = [images] if isinstance(images, str) else images
        if not isinstance(question, str) or not isinstance(images, list) or not all(isinstance(x, str) for x in images):
            raise TypeError("question must be text and image a path or list of paths")
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        report.add("bad_row", where, f"expected conversations[0..1].value and image: {e!r}"[:160], strict)
        return None
    if not isinstance(solution, str):
        try:
            solution = json.dumps(solution)  # VLM-R1 stringifies non-string solutions
        except (ValueError, RecursionError) as e:
            report.add("bad_solution", where, f"solution cannot be written as text: {e!r}"[:160], strict)
            return None
    row_method = row.get("accu_reward_method") or method
    if row_method is not None and not isinstance(row_method, str):
        report.add("bad_row", where, f"accu_reward_method must be a reward name, not {type(row_method).__name__}", strict)
        return None
    if row_method is not None and ALIASES.get(row_method, row_method) not in REGISTRY:
        report.add("unknown_reward", where, f"accu_reward_method {row_method!r} is not a known reward", strict)
        return None
    missing = unavailable(row_method) if row_method is not None else None
    if missing:
        report.add("unknown_reward", where, missing, strict)
        return None
    if len(images) > MAX_IMAGES:
        report.add("too_many_images", where, f"{len(images)} images; the engines take at most {MAX_IMAGES} per prompt",
                   strict)
        return None
    abs_paths, sizes = [], []
    for rel in images:
        checked = _check_image(rel, folders, max_pixels, cache)
        if isinstance(checked, str):
            report.add(checked.split(":")[0], where, checked, strict)
            return None
        abs_paths.append(checked[0])
        sizes.append(checked[1])
    problem = _check_solution(solution, task, sizes[0] if sizes else None)
    if problem:
        report.add(problem.split(":")[0], where, problem, strict)
        return None
    pid = str(row.get("id", where))
    return Prompt(pid, tuple(abs_paths), tuple(sizes), question.replace("<image>", "").strip(), solution,
                  task, row.get("accu_reward_method") or method, where)


def _check_image(rel: str, folders: tuple[str, ...], max_pixels: int, cache: str | None = None):
    """(absolute path, (w, h)) of a readable image inside the first of ``folders`` holding it (or
    an image a table embedded, written to ``cache``), or a reason string."""
    if "\0" in rel or not rel.strip():
        return f"bad_image_path: {rel!r} is no file name"
    if cache and os.path.isabs(rel) and os.path.dirname(rel) == cache:
        folders, rel = (cache,), os.path.basename(rel)
    elif os.path.isabs(rel):
        return f"image_outside_folder: absolute image path {rel!r} (paths are relative to the image folder)"
    if not folders:
        return f"missing_image: {rel!r}: no image folder is set for this file (data.image_folders)"
    for folder in folders:
        path = os.path.realpath(os.path.join(folder, rel))
        if os.path.commonpath([path, folder]) != folder:
            return f"image_outside_folder: {rel!r} resolves outside {folder}"
        if os.path.isfile(path):
            break
    else:
        if len(folders) == 1:
            return f"missing_image: {path}"
        return (f"missing_image: {rel!r} is in none of the {len(folders)} training image folders "
                f"{':'.join(folders)} (set data.val_image_folders)")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                return f"image_too_large: {w}x{h} exceeds data.max_image_pixels={max_pixels}"
            im.verify()  # reads the whole file: catches truncation and corrupt data
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"unreadable_image: {path}: {e}"[:200]
    return path, (w, h)


def _finite_box(b) -> bool:
    return (isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                         and math.isfinite(v) for v in b) and b[0] < b[2] and b[1] < b[3])


def _inside(b, size) -> bool:
    return size is None or (b[0] >= 0 and b[1] >= 0 and b[2] <= size[0] and b[3] <= size[1])


def _check_solution(solution: str, task: str, size) -> str | None:
    """A reason string if the ground truth is unusable, else None."""
    if task == "qa":
        return None if solution.strip() else "bad_solution: empty answer"
    if task == "rec":
        try:
            box = json.loads(solution)
        except (ValueError, RecursionError):
            return f"bad_solution: REC solution is not a [x1, y1, x2, y2] list: {solution[:60]!r}"
        if not _finite_box(box):
            return f"bad_solution: REC box must be 4 finite numbers with x1<x2, y1<y2: {solution[:60]!r}"
        return None if _inside(box, size) else f"box_outside_image: {box} in an image of {size}"
    if solution.strip() == "None":
        return None
    from rewards.ovd import gt_items
    body = solution.strip()
    try:
        raw = json.loads(body.split("```json", 1)[1].rsplit("```", 1)[0]) if "```json" in body else json.loads(body)
    except (ValueError, IndexError, RecursionError):
        return f"bad_solution: OVD solution is neither None nor a json list: {solution[:60]!r}"
    items = gt_items(solution)
    if not isinstance(raw, list) or len(items) != len(raw) or not all(_finite_box(it["bbox_2d"]) for it in items):
        return f"bad_solution: OVD items need a 4-number bbox_2d and a text label: {solution[:80]!r}"
    for it in items:
        if not _inside(it["bbox_2d"], size):
            return f"box_outside_image: {it['bbox_2d']} in an image of {size}"
    return None


def _coco_rows(path: str, report: SkipReport, strict: bool):
    """COCO instances -> VLM-R1 OVD rows: per image, detect the categories present."""
    from data.synthetic import OVD_QUESTION
    try:
        with open(path, encoding="utf-8") as f:
            coco = json.load(f)
        cats = {c["id"]: c["name"] for c in coco["categories"]}
        images = {im["id"]: im for im in coco["images"] if isinstance(im, dict) and isinstance(im.get("id"), (int, str))}
        anns = coco["annotations"]
    except (ValueError, KeyError, TypeError, OSError, RecursionError) as e:
        raise DataError(f"{path}: not a COCO instances file ({e!r})"[:300]) from None
    per_image = collections.defaultdict(list)
    for k, a in enumerate(anns):
        try:
            if a.get("iscrowd", 0):
                continue
            x, y, w, h = a["bbox"]
            item = {"bbox_2d": [round(x), round(y), round(x + w), round(y + h)], "label": cats[a["category_id"]]}
            per_image[a["image_id"]].append(item)
        except (KeyError, ValueError, TypeError, AttributeError, OverflowError) as e:
            report.add("bad_annotation", f"{path}:annotations[{k}]", repr(e), strict)
    for image_id, items in per_image.items():
        im = images.get(image_id)
        if im is None:
            report.add("bad_annotation", f"{path}:image_id={image_id}", "annotation for an unknown image", strict)
            continue
        if not isinstance(im, dict) or not isinstance(im.get("file_name"), str):
            report.add("bad_image_entry", f"{path}:image_id={image_id}", "the image has no file_name", strict)
            continue
        labels = list(dict.fromkeys(it["label"] for it in items))
        yield f"{path}:image_id={image_id}", {
            "id": image_id, "image": im["file_name"],
            "conversations": [{"from": "human", "value": "<image>" + OVD_QUESTION.format(cats=", ".join(labels))},
                              {"from": "gpt", "value": "```json\n" + json.dumps(items) + "\n```"}]}
