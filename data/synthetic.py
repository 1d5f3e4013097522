"""Synthetic shapes data in VLM-R1's own JSONL format, deterministic from a seed.

    python -m data.synthetic --out DIR [--seed 0] [--n-train 2000] [--n-val 300] [--tasks rec ovd count ...]

Draws images of coloured shapes (circles, squares, triangles, diamonds) on varied backgrounds,
some overlapping, and writes, per task and split, a JSONL file of rows::

    {"id": "rec-train-0", "image": "images/rec-train-0.png",
     "conversations": [{"from": "human", "value": "<image>Please provide the bounding box ..."},
                       {"from": "gpt", "value": "[x1, y1, x2, y2]"}]}

REC rows ask for one object by a referring expression ("the blue triangle", "the largest red
shape", "the circle left of the square"); OVD rows ask to detect categories ("green square",
"circle") and answer with the fenced json list of ``{"bbox_2d", "label"}`` or ``None``. Boxes
are absolute pixels of the image, inclusive of the drawn shape.

VLM-R1's other tasks (``data.task=qa``; each row names its ``accu_reward_method``): ``count``
(how many shapes: ``numeric``), ``yes_no`` (is there a ...: ``yes_no``), ``mcq`` (the colour of
a shape among four lettered options: ``mcq``), ``math`` (points per shape times shapes:
``math``) and ``gui`` (two screens, name the shape missing from the second: ``all_match``, VLM-R1's
multi-image GUI defect task).

Splits: ``train`` and ``val`` (in-domain: same phrasings, 1-3 shapes), and ``val_ood``
(out-of-domain: 4-6 shapes, so more distractors, and relation phrasings never used in train).
``shifts`` adds one out-of-domain split per named shift of appearance or geometry
(``data.scenes.SHIFTS``: ``small`` / ``large`` shapes, an ``image_size`` never seen, a
``dark_background``, ``new_colours``, shapes in the ``corners``), written as ``{task}_val_{shift}``
with the in-domain shape count and phrasings: the task is the one learnt, only the look changes.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import sys
import time
from dataclasses import dataclass

from PIL import Image, ImageDraw

from data.scenes import DEFAULT_SCENE, SCENES, SHIFTS, Scene, shifted

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (230, 200, 30), "purple": (140, 60, 180), "orange": (240, 130, 20)}
# the ``new_colours`` shift: colours (and names) that no training image or question has
PALETTES = {"base": COLOURS, "new": {"cyan": (30, 200, 210), "pink": (245, 120, 190), "brown": (125, 75, 35),
                                     "olive": (120, 130, 30)}}
SHAPES = ("circle", "square", "triangle", "diamond")
# the ``dark_background`` shift: backgrounds far darker than any light training tint
BACKGROUND_SETS = {"light": [(245, 245, 245), (225, 225, 215), (200, 210, 225), (235, 225, 240), (190, 190, 190)],
                   "dark": [(25, 25, 30), (45, 30, 30), (25, 45, 35), (30, 35, 60)]}
REC_QUESTION = "Please provide the bounding box coordinate of the region this sentence describes: {expr}."
OVD_QUESTION = ("Please carefully check the image and detect the following objects: [{cats}]. "
                "Output each detected target's bbox coordinates in JSON format. The format of the bbox "
                "coordinates is: ```json\n[{{\"bbox_2d\": [x1, y1, x2, y2], \"label\": \"target name\"}}, "
                "{{\"bbox_2d\": [x1, y1, x2, y2], \"label\": \"target name\"}}]\n```. If there are no such "
                "targets in the image, simply respond with None.")
QA_KINDS = {"count": "numeric", "yes_no": "yes_no", "mcq": "mcq", "math": "math", "gui": "all_match"}
TASKS = ("rec", "ovd", *QA_KINDS)  # what ``generate`` writes files for
# relations: the in-domain phrasing and the out-of-domain paraphrase of the same relation
RELATIONS_ID = {"left": "{a} left of the {b}", "right": "{a} right of the {b}",
                "above": "{a} above the {b}", "below": "{a} below the {b}"}
RELATIONS_OOD = {"left": "{a} to the left side of the {b}", "right": "{a} on the right-hand side of the {b}",
                 "above": "{a} located over the {b}", "below": "{a} sitting under the {b}"}




@dataclass
class Shape:
    kind: str
    colour: str
    box: list[int]  # x1, y1, x2, y2 (inclusive pixels)

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"

    @property
    def area(self) -> int:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


def _draw(draw: ImageDraw.ImageDraw, s: Shape, alpha: float = 1.0) -> None:
    x1, y1, x2, y2 = s.box
    rgb = COLOURS.get(s.colour) or PALETTES["new"][s.colour]
    fill = rgb + ((round(255 * alpha),) if alpha < 1 else ())
    if s.kind == "circle":
        draw.ellipse(s.box, fill=fill)
    elif s.kind == "square":
        draw.rectangle(s.box, fill=fill)
    elif s.kind == "triangle":
        draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=fill)
    else:
        draw.polygon([((x1 + x2) / 2, y1), (x2, (y1 + y2) / 2), ((x1 + x2) / 2, y2), (x1, (y1 + y2) / 2)], fill=fill)


def _scene(rng: random.Random, n_shapes: int, spec: Scene = DEFAULT_SCENE) -> tuple[int, int, tuple, list[Shape]]:
    w, h = rng.choice(spec.sizes), rng.choice(spec.sizes)
    shapes: list[Shape] = []
    for _ in range(n_shapes * 20):
        if len(shapes) == n_shapes:
            break
        side = rng.randint(spec.side[0], min(spec.side[1], min(w, h) - 2))
        if spec.placement == "corners":  # the box touches a corner (within 2 px)
            x1 = rng.choice([rng.randint(0, 2), w - side - 1 - rng.randint(0, 2)])
            y1 = rng.choice([rng.randint(0, 2), h - side - 1 - rng.randint(0, 2)])
        else:
            x1, y1 = rng.randint(0, w - side - 1), rng.randint(0, h - side - 1)
        box = [x1, y1, x1 + side, y1 + side]
        cand = Shape(rng.choice(SHAPES), rng.choice(list(PALETTES[spec.palette])), box)
        if any(o.name == cand.name for o in shapes):
            continue  # names are unique within an image so every object can be referred to
        overlap = max((_overlap(box, o.box) for o in shapes), default=0.0)
        if overlap > 0.3 or (overlap > 0 and rng.random() < 0.6):
            continue  # a few light overlaps, never hiding most of a shape
        shapes.append(cand)
    return w, h, rng.choice(BACKGROUND_SETS[spec.backgrounds]), shapes


def _overlap(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return 0.0 if w <= 0 or h <= 0 else w * h / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def _relation(a: Shape, b: Shape) -> str | None:
    (ax, ay), (bx, by) = a.centre, b.centre
    dx, dy = ax - bx, ay - by
    if abs(dx) > 1.5 * abs(dy) and abs(dx) > 12:
        return "left" if dx < 0 else "right"
    if abs(dy) > 1.5 * abs(dx) and abs(dy) > 12:
        return "above" if dy < 0 else "below"
    return None


def _refer(rng: random.Random, shapes: list[Shape], ood: bool) -> tuple[str, Shape] | None:
    """A referring expression that picks out exactly one shape, and that shape."""
    target = rng.choice(shapes)
    options = [f"the {target.name}"]
    if sum(s.kind == target.kind for s in shapes) == 1:
        options.append(f"the {target.kind}")
    same_colour = [s for s in shapes if s.colour == target.colour]
    if len(same_colour) > 1:
        areas = sorted(s.area for s in same_colour)
        if target.area == areas[-1] and areas[-1] != areas[-2]:
            options.append(f"the largest {target.colour} shape")
        if target.area == areas[0] and areas[0] != areas[1]:
            options.append(f"the smallest {target.colour} shape")
    for other in shapes:
        rel = _relation(target, other) if other is not target else None
        if rel and sum(s.kind == target.kind for s in shapes) == 1 and sum(s.kind == other.kind for s in shapes) == 1:
            phr = (RELATIONS_OOD if ood else RELATIONS_ID)[rel]
            options.append("the " + phr.format(a=target.kind, b=other.kind))
    return rng.choice(options), target


def _fenced(items: list[dict]) -> str:
    return "```json\n" + json.dumps(items) + "\n```"


def _ovd_query(rng: random.Random, shapes: list[Shape]) -> tuple[list[str], list[dict]]:
    cats: list[str] = []
    for _ in range(rng.randint(1, 3)):
        r = rng.random()
        if r < 0.4:
            cats.append(rng.choice(SHAPES))
        elif r < 0.8 and shapes:
            cats.append(rng.choice(shapes).name)  # present
        else:
            cats.append(f"{rng.choice(list(COLOURS))} {rng.choice(SHAPES)}")  # maybe absent
    cats = list(dict.fromkeys(cats))
    items = [{"bbox_2d": s.box, "label": c} for c in cats for s in shapes if c in (s.kind, s.name)]
    return cats, items


def _background(w: int, h: int, bg: tuple, spec: Scene) -> Image.Image:
    if not spec.position_code:
        return Image.new("RGB", (w, h), bg)
    # brightness 150 -> 250 left to right; a blue (top) to yellow (bottom) tint of +-40
    xs = [150 + 100 * x / (w - 1) for x in range(w)]
    img = Image.new("RGB", (w, h))
    img.putdata([(round(min(255, v + t)), round(min(255, v + t)), round(max(0, v - t)))
                 for y in range(h) for t in [40 * (2 * y / (h - 1) - 1)] for v in xs])
    return img


def generate(out_dir: str | os.PathLike, seed: int = 0, n_train: int = 2000, n_val: int = 300,
             n_ood: int = 300, tasks=("rec", "ovd"), progress: bool = True,
             spec: Scene = DEFAULT_SCENE, shifts=(), splits=None) -> dict[str, pathlib.Path]:
    """Write images and ``{task}_{split}.jsonl`` under ``out_dir``; returns the file paths.
    ``shifts`` (names of ``data.scenes.SHIFTS``) add a ``val_{shift}`` split each, of ``n_ood``
    rows; ``splits`` (names) writes only those of the splits planned.

    Deterministic: the same arguments give byte-identical files. Splits use disjoint seeds."""
    out = pathlib.Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    files = {}
    plan = [("train", n_train, False, spec), ("val", n_val, False, spec), ("val_ood", n_ood, True, spec)]
    plan += [(f"val_{name}", n_ood, False, shifted(spec, name)) for name in shifts]
    for t_i, task in enumerate(tasks):
        for s_i, (split, n, ood, sp) in enumerate(plan):
            if splits is not None and split not in splits:
                continue
            rng = random.Random(f"{seed}-{task}-{split}")
            path = out / f"{task}_{split}.jsonl"
            rows = [_row(rng, task, split, i, ood, out, sp) for i in _progress(range(n), f"{task}/{split}", progress)]
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
            tmp.replace(path)
            files[f"{task}_{split}"] = path
    return files


def _row(rng: random.Random, task: str, split: str, i: int, ood: bool, out: pathlib.Path | None,
         spec: Scene = DEFAULT_SCENE) -> dict:
    n_shapes = rng.randint(*spec.ood_shapes) if ood else rng.randint(*spec.shapes)
    while True:
        w, h, bg, shapes = _scene(rng, n_shapes, spec)
        if shapes and (task != "mcq" or _nameable(shapes)):
            break
    rel = f"images/{task}-{split}-{i}.png"
    if out is not None:  # None: text only (the tokenizer's training corpus)
        img = _background(w, h, bg, spec)
        draw = ImageDraw.Draw(img, "RGBA" if spec.alpha < 1 else None)
        for s in shapes:
            _draw(draw, s, spec.alpha)
        img.save(out / rel, optimize=False, compress_level=1)
    if task in QA_KINDS:
        question, answer, second = _qa(rng, task, shapes)
        rels = [rel]
        if task == "gui":  # the second screen: the first without one shape
            rels.append(f"images/{task}-{split}-{i}-b.png")
            if out is not None:
                img = _background(w, h, bg, spec)
                draw = ImageDraw.Draw(img, "RGBA" if spec.alpha < 1 else None)
                for s in second:
                    _draw(draw, s, spec.alpha)
                img.save(out / rels[1], optimize=False, compress_level=1)
        turns = [{"from": "human", "value": "<image>" * len(rels) + question}, {"from": "gpt", "value": answer}]
        return {"id": f"{task}-{split}-{i}", "image": rels if len(rels) > 1 else rel,
                "accu_reward_method": QA_KINDS[task], "conversations": turns}
    if task == "rec":
        expr, target = _refer(rng, shapes, ood)
        question, answer = REC_QUESTION.format(expr=expr), json.dumps(target.box)
        extra = {}
    else:
        cats, items = _ovd_query(rng, shapes)
        question, answer = OVD_QUESTION.format(cats=", ".join(cats)), (_fenced(items) if items else "None")
        extra = {}
    return {"id": f"{task}-{split}-{i}", "image": rel, **extra,
            "conversations": [{"from": "human", "value": "<image>" + question}, {"from": "gpt", "value": answer}]}


def _nameable(shapes: list[Shape]) -> list[tuple[str, Shape]]:
    """Shapes a colour question can name without giving the colour away: the only one of its
    kind, or the strictly largest."""
    out = [(f"the {s.kind}", s) for s in shapes if sum(o.kind == s.kind for o in shapes) == 1]
    areas = sorted((s.area for s in shapes), reverse=True)
    if len(areas) == 1 or areas[0] > areas[1]:
        out.append(("the largest shape", max(shapes, key=lambda s: s.area)))
    return out


def _qa(rng: random.Random, kind: str, shapes: list[Shape]) -> tuple[str, str, list[Shape]]:
    """(question, answer, the second screen's shapes for ``gui``) of a QA row about ``shapes``."""
    if kind == "count":
        return "How many shapes are in the image?", str(len(shapes)), []
    if kind == "yes_no":
        probe = rng.choice(shapes).name if rng.random() < 0.5 else f"{rng.choice(list(COLOURS))} {rng.choice(SHAPES)}"
        present = any(s.name == probe for s in shapes)
        return f"Is there a {probe} in the image? Answer yes or no.", "yes" if present else "no", []
    if kind == "mcq":
        named = _nameable(shapes)
        what, target = rng.choice(named)
        options = rng.sample([c for c in COLOURS if c != target.colour], 3) + [target.colour]
        rng.shuffle(options)
        listed = " ".join(f"{'ABCD'[k]}. {c}" for k, c in enumerate(options))
        return f"What colour is {what}? {listed} Answer with the option's letter.", "ABCD"[options.index(target.colour)], []
    if kind == "math":
        points = rng.randint(2, 9)
        return f"Each shape in the image is worth {points} points. How many points is the image worth?", \
            str(points * len(shapes)), []
    gone = rng.choice(shapes)  # gui
    return ("The second screen should show everything the first one shows. Which shape is missing from it? "
            "Answer with its colour and kind."), gone.name, [s for s in shapes if s is not gone]


def text_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows of every task and split without images (for building the tokenizer)."""
    rows = []
    for task in ("rec", "ovd"):
        for split, ood in (("train", False), ("val_ood", True)):
            rng = random.Random(f"text-{seed}-{task}-{split}")
            rows += [_row(rng, task, split, i, ood, None) for i in range(n)]
    return rows


def _progress(it, desc: str, enabled: bool):
    if not enabled or not sys.stderr.isatty():  # a bar in a log file is one line per update
        return it
    from tqdm import tqdm
    return tqdm(it, desc=f"synthetic {desc}", leave=False, mininterval=0.5)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Generate the synthetic shapes datasets (VLM-R1 JSONL).")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-val", type=int, default=300)
    ap.add_argument("--n-ood", type=int, default=300)
    ap.add_argument("--tasks", nargs="+", default=["rec", "ovd"], choices=TASKS)
    ap.add_argument("--scene", default="default", choices=list(SCENES))
    ap.add_argument("--shifts", nargs="*", default=[], choices=list(SHIFTS),
                    help="out-of-domain shift splits to add ({task}_val_{shift}.jsonl, --n-ood rows each)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    files = generate(args.out, args.seed, args.n_train, args.n_val, args.n_ood, tasks=tuple(args.tasks),
                     spec=SCENES[args.scene], shifts=tuple(args.shifts))
    for k, p in files.items():
        print(f"{k:14s} {sum(1 for _ in open(p)):6d} rows  {p}")
    print(f"generated in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
