"""A fast probe of what the tiny model can learn to localise: supervised REC in plain PyTorch
(no Ray, no DeepSpeed, no engines), greedy evaluation against the constant-box floor.

    python -m bench.probe --family qwen3_vl --n-val 200             # docs/learning.md's rows (one-shape scene)
    python -m bench.probe --family qwen3_vl --n-val 200 --pos-scale 0.02
    python -m bench.probe --family qwen2_5_vl --n-val 200
    python -m bench.probe --family qwen3_vl --scene '{}'            # the default scene

Prints the loss, an evaluation every ``--eval-every`` steps (accuracy at IoU > 0.5, mean IoU,
distinct boxes) against the one-box floor, and a markdown row naming the CPU. Data and the
built model are cached under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import random
import re
import time

import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
ONE_SHAPE = '{"sizes": [84], "side": [24, 48], "shapes": [1, 1]}'  # data.synthetic.SCENES["one_shape"], in domain


def load(data: pathlib.Path, split: str, processor, task: str = "rec", frame: str = "input_pixels"):
    from PIL import Image

    from data.prompts import prompt_text, sft_answer
    rows = [json.loads(x) for x in (data / f"{task}_{split}.jsonl").read_text().splitlines()]
    out = []
    ip = processor.image_processor
    for r in rows:
        img = Image.open(data / r["image"]).convert("RGB")
        q, sol = r["conversations"][0]["value"], r["conversations"][1]["value"]
        prompt = prompt_text(processor, q, 1, task)
        enc = processor(text=[prompt], images=[img], return_tensors="pt")
        g = enc["image_grid_thw"][0]
        in_size = (int(g[2]) * ip.patch_size, int(g[1]) * ip.patch_size)
        ans = sft_answer(task, q, sol, img.size, in_size if frame == "input_pixels" else (1000, 1000))
        a_ids = processor.tokenizer(ans + "<|im_end|>", add_special_tokens=False)["input_ids"]
        box = json.loads(sol)
        sx, sy = in_size[0] / img.size[0], in_size[1] / img.size[1]
        out.append({"ids": enc["input_ids"][0], "ans": torch.tensor(a_ids), "pix": enc["pixel_values"],
                    "grid": enc["image_grid_thw"], "gt": [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy],
                    "size": in_size, **({"types": enc["mm_token_type_ids"][0]} if "mm_token_type_ids" in enc else {})})
    return out


def collate(items, pad: int):
    seqs = [torch.cat([it["ids"], it["ans"]]) for it in items]
    n = max(len(s) for s in seqs)
    ids = torch.full((len(items), n), pad)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    labels = torch.full((len(items), n), -100)
    types = torch.zeros((len(items), n), dtype=torch.long)
    for i, (s, it) in enumerate(zip(seqs, items)):
        ids[i, :len(s)], mask[i, :len(s)] = s, 1
        labels[i, len(it["ids"]):len(s)] = it["ans"]
        if "types" in it:
            types[i, :len(it["ids"])] = it["types"]
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels,
             "pixel_values": torch.cat([it["pix"] for it in items]),
             "image_grid_thw": torch.cat([it["grid"] for it in items])}
    if "types" in items[0]:
        batch["mm_token_type_ids"] = types
    return batch


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / u if u > 0 else 0.0


@torch.no_grad()
def evaluate(model, processor, items, frame: str = "input_pixels") -> dict:
    model.eval()
    ious, boxes = [], []
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for it in items:
        kw = {"input_ids": it["ids"][None], "attention_mask": torch.ones_like(it["ids"])[None],
              "pixel_values": it["pix"], "image_grid_thw": it["grid"]}
        if "types" in it:
            kw["mm_token_type_ids"] = it["types"][None]
        out = model.generate(**kw, max_new_tokens=40, do_sample=False, eos_token_id=eos)
        text = processor.tokenizer.decode(out[0, len(it["ids"]):], skip_special_tokens=True)
        lst = re.search(r"\[([^\[\]]*)\]", text.split("<answer>")[-1])
        m = re.findall(r"-?\d+(?:\.\d+)?", lst.group(1)) if lst else []
        if len(m) >= 4:
            b = [float(x) for x in m[:4]]
            if frame == "norm1000":
                w, h = it["size"]
                b = [b[0] * w / 1000, b[1] * h / 1000, b[2] * w / 1000, b[3] * h / 1000]
            ious.append(iou(b, it["gt"]))
            boxes.append(tuple(round(x) for x in b))
        else:
            ious.append(0.0)
    model.train()
    n = len(ious)
    acc = sum(v > 0.5 for v in ious) / n
    return {"acc": acc, "iou": sum(ious) / n, "distinct": len(set(boxes)), "parsed": len(boxes) / n}


def main(argv=None):
    from data.tiny_model import SIZES, SLUGS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="qwen2_5_vl", choices=sorted(set(SLUGS.values()) - {"internvl", "glm4v"}),
                    help="a Qwen family (the probe feeds patch grids)")
    ap.add_argument("--size", default="tiny", choices=list(SIZES))
    ap.add_argument("--scene", default=ONE_SHAPE, help="data.synthetic.Scene fields as JSON (default: the one-shape "
                    "scene; '{}' is the default scene)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-val", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--pos-scale", type=float, default=0.0, help="re-draw the vision tower's position embeddings (Qwen3-VL) at this std; the build's: 1.0, the generic init: 0.02")
    ap.add_argument("--coords", default="input_pixels", choices=["input_pixels", "norm1000"])
    ap.add_argument("--rope-theta", type=float, default=20.0)
    ap.add_argument("--out", default="/tmp/probe")
    args = ap.parse_args(argv)
    from bench.rec_stats import constant_box
    from data.scenes import Scene
    from data.synthetic import generate
    from data.tiny_model import BUILD_VERSION, build
    torch.manual_seed(0)
    random.seed(0)
    scene = json.loads(args.scene)
    try:
        spec = Scene(**{k: tuple(v) if isinstance(v, list) else v for k, v in scene.items()})
    except TypeError as e:
        raise SystemExit(f"--scene {args.scene}: {e}; the fields are those of data.synthetic.Scene") from None
    key = re.sub(r"[^a-z0-9]+", "_", json.dumps(scene, sort_keys=True).lower()) or "default"
    data = pathlib.Path(args.out) / f"data_{key}_{args.n_train}_{args.n_val}"
    if not (data / "rec_val.jsonl").exists():
        generate(data, seed=0, n_train=args.n_train, n_val=args.n_val, n_ood=0, tasks=("rec",),
                 spec=spec, progress=False)
    mdir = pathlib.Path(args.out) / f"model_v{BUILD_VERSION}_{args.family}_{args.size}_{args.rope_theta:g}"
    if not (mdir / "BUILD.json").exists():
        build(mdir, seed=0, family=args.family, size=args.size, rope_theta=args.rope_theta)
    from transformers import AutoModelForImageTextToText, AutoProcessor
    processor = AutoProcessor.from_pretrained(mdir)
    model = AutoModelForImageTextToText.from_pretrained(mdir, dtype=torch.float32)
    if args.pos_scale:
        pe = getattr(model.model.visual, "pos_embed", None)
        if pe is None:
            raise SystemExit(f"--pos-scale: {args.family}'s vision tower has no learned position embeddings (qwen3_vl has)")
        torch.nn.init.normal_(pe.weight, std=args.pos_scale)
    frame = args.coords
    t0 = time.perf_counter()
    train, val = load(data, "train", processor, frame=frame), load(data, "val", processor, frame=frame)
    floor = constant_box(data)
    print(f"data {data.name}: {len(train)} train, {len(val)} val; floor acc {floor['acc']:.3f} iou {floor['iou']:.3f}; "
          f"image tokens {int(train[0]['grid'].prod()) // 4}; load {time.perf_counter() - t0:.0f}s", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    # the warm start's schedule: 10 warm-up steps, then cosine to 0
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 10) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    pad = processor.tokenizer.pad_token_id
    rng = random.Random(0)
    t0 = time.perf_counter()
    curve = []
    model.train()
    for step in range(1, args.steps + 1):
        b = collate(rng.sample(train, min(args.batch, len(train))), pad)
        loss = model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
        if step % args.eval_every == 0 or step == args.steps:
            r = evaluate(model, processor, val, frame)
            curve.append((step, r["acc"]))
            print(f"EVAL step {step}: acc {r['acc']:.3f} iou {r['iou']:.3f} distinct {r['distinct']} "
                  f"parsed {r['parsed']:.2f} (floor {floor['acc']:.3f}/{floor['iou']:.3f}) "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
    from conf.hardware import describe_cpu
    pos = f"pos std {args.pos_scale:g}" if args.pos_scale else "as built"
    print(f"\n| family | scene | coords | init | val accuracy at step {' / '.join(str(k) for k, _ in curve)} | "
          f"one box | CPU |\n|---|---|---|---|---|---|---|\n| {args.family} ({args.size}) | {args.scene} | {frame} | {pos} | "
          f"{' / '.join(f'{a:.3f}' for _, a in curve)} | {floor['acc']:.3f} | {describe_cpu()} |")


if __name__ == "__main__":
    main()
