"""Plan a layout on GPUs: how many engines (of which tensor-parallel size) against how many learner
ranks, synchronous or one step off, and what step time to expect.

    python -m bench.plan --model-size 7b --gpus 64 --gpu h100 --G 8 --prompts 16 --completion-tokens 2048
    python -m bench.plan ... --write plan.yaml --manifest rayjob.yaml   # the best layout as a config and a RayJob
    python -m bench.plan --chart docs/img/scaling.svg                   # samples/s against GPUs, 3B/7B/32B

Every layout that fits is predicted with the loop model (``bench/loop_model.py``) from rates derived
from the GPU's published specifications and the efficiencies assumed in ``bench/gpus.yaml`` (those are
assumptions until a run on such a GPU replaces them), and the best few are printed with their step
time, samples per second, each role's busy share, the bottleneck and the critical path. A layout
fits when an engine's weights leave room for the KV cache of at least one group, a learner rank's
share of the policy, reference and AdamW states (ZeRO-2, else ZeRO-3) fits its GPU, the completions
per step divide over the learner ranks (checked at start by the orchestrator too) and there are no
more engines than prompts. ``--write`` saves the best layout as a config file over ``conf=vlm_r1_<task>``
(``python orchestrator.py conf=plan.yaml``); ``--manifest`` writes a KubeRay RayJob that runs it.
"""
from __future__ import annotations

import argparse
import math
import pathlib
import shlex
import sys
import time
from dataclasses import dataclass

import yaml

from bench.common import table
from bench.loop_model import Layout, Prediction, Rates, Workload, predict

ASSUMPTIONS = pathlib.Path(__file__).with_name("gpus.yaml")
REPO = pathlib.Path(__file__).resolve().parents[1]
TEXT_TOKENS = 60  # the prompt's text around the image (VLM-R1's REC question and format instruction)
GB = 1e9


def assumptions(path: pathlib.Path = ASSUMPTIONS) -> dict:
    return yaml.safe_load(path.read_text())


@dataclass(frozen=True)
class Plan:
    layout: Layout
    prediction: Prediction
    rates: Rates
    learner_gb: float              # a learner rank's memory estimate
    gpus_per_node: int

    def row(self) -> dict:
        lo, p = self.layout, self.prediction
        return {"engines": f"{lo.engines} x TP{lo.devices_per_engine}", "learner ranks": lo.learner_ranks,
                "ZeRO": lo.zero_stage, "loop": "async" if lo.staleness else "sync", "GPUs": lo.devices,
                "step s": p.step_s, "samples/s": p.samples_per_s,
                "samples/s/GPU": p.samples_per_s / lo.devices,
                "busy engines": f"{p.busy['engines']:.0%}", "busy learner": f"{p.busy['learner']:.0%}",
                "bottleneck": p.bottleneck, "critical path": " > ".join(p.critical_path)}


def lm_params(model: dict) -> float:
    return (model["params_b"] - model["vision_params_b"]) * GB


def kv_bytes_per_token(model: dict) -> float:
    return 2 * model["layers"] * model["kv_heads"] * model["head_dim"] * 2  # K and V, bf16


def engine_rates(gpu: dict, model: dict, eff: dict, w: Workload, tp: int, image_patches: float) -> dict | None:
    """An engine of ``tp`` GPUs: decode (weights and KV cache read per step, two tensor-parallel
    all-reduces per layer), prefill (prompt tokens and image patches at ``prefill_mfu``) and how many
    sequences its KV cache holds; None when its share of the weights leaves no room for one group."""
    flops, bw = tp * gpu["bf16_tflops"] * 1e12, tp * gpu["hbm_gb_s"] * GB
    weights = model["params_b"] * GB * 2
    free = tp * gpu["memory_gb"] * GB * eff["gpu_memory_utilization"] - weights - tp * 2 * GB  # 2 GB runtime per GPU
    longest = w.longest_tokens or w.completion_tokens
    per_seq = kv_bytes_per_token(model) * (w.prompt_tokens + longest)
    seqs = int(free // per_seq) if free > 0 else 0
    if seqs < w.G:
        return None
    context = w.prompt_tokens + w.completion_tokens / 2  # mean context a decoded token attends to
    prefill_s = (2 * lm_params(model) * w.prompt_tokens
                 + 2 * model["vision_params_b"] * GB * image_patches * w.images_per_prompt) / (flops * eff["prefill_mfu"])
    tp_sync = 2 * model["layers"] * eff["tp_allreduce_s"] if tp > 1 else 0.0  # two all-reduces per layer
    return {"decode_step_s": eff["decode_step_overhead_s"] + tp_sync + weights / (bw * eff["decode_bandwidth"]),
            "decode_seq_s": kv_bytes_per_token(model) * context / (bw * eff["decode_bandwidth"])
            + 2 * lm_params(model) / (flops * eff["prefill_mfu"]),
            "prefill_tokens_per_s": w.prompt_tokens / prefill_s, "max_seqs": min(seqs, eff["max_seqs"])}


def learner_gb(model: dict, ranks: int, zero_stage: int, beta: float, eff: dict) -> float:
    """A rank's memory: bf16 policy (and reference with ``beta > 0``), bf16 gradients, fp32 master
    weights and AdamW moments (12 bytes), sharded as the ZeRO stage shards them, plus activations."""
    p = model["params_b"] * GB
    ref = 2 * p if beta > 0 else 0.0
    if zero_stage == 3:
        states = (2 * p + ref + 2 * p + 12 * p) / ranks
    else:  # ZeRO-2: weights whole on every rank, gradients and optimizer states sharded
        states = 2 * p + ref + (2 * p + 12 * p) / ranks
    return states / GB + eff["activation_reserve_gb"]


def learner_rates(gpu: dict, model: dict, eff: dict, ranks: int, gpus_per_node: int, image_patches: float) -> dict:
    """A learner rank: forward + backward at ``train_mfu`` with gradient checkpointing (8 FLOPs per
    parameter and token: the forward is computed twice), the vision tower per image, an AdamW step
    over its shard, and all-reduce over NVLink within a node or the network adapters across nodes."""
    flops = gpu["bf16_tflops"] * 1e12 * eff["train_mfu"]
    link = (gpu["nvlink_gb_s"] if ranks <= gpus_per_node else gpu["nic_gb_s"]) * GB * eff["link"]
    shard = model["params_b"] * GB / ranks
    return {"train_tokens_per_s": flops / (8 * lm_params(model)), "forward_tokens_per_s": flops / (2 * lm_params(model)),
            "vision_s_per_image": 8 * model["vision_params_b"] * GB * image_patches / flops,
            "optimizer_s": 28 * shard / (gpu["hbm_gb_s"] * GB * eff["optimizer_bandwidth"]),
            "allreduce_bytes_per_s": link}


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def plans(w: Workload, gpu: dict, model: dict, eff: dict, gpus: int, gpus_per_node: int = 8,
          reward_workers: int = 16, image_patches: float = 1600, staleness: tuple[int, ...] = (0, 1),
          tolerance: float = 0.02) -> list[Plan]:
    """Every layout on at most ``gpus`` GPUs that fits, predicted, best first: the layouts within
    ``tolerance`` of the highest samples/s come first, fewest GPUs first (the best is the cheapest of
    the nearly fastest), then the rest, fastest first."""
    out = []
    for tp in (t for t in (1, 2, 4, 8) if t <= gpus_per_node):
        engine = engine_rates(gpu, model, eff, w, tp, image_patches)
        if engine is None:
            continue
        for engines in range(1, min(w.prompts, (gpus - 1) // tp) + 1):
            for ranks in divisors(w.prompts * w.G):
                if engines * tp + ranks > gpus:
                    break
                fits = [(z, gb) for z in (2, 3) if (gb := learner_gb(model, ranks, z, w.beta, eff)) <= gpu["memory_gb"]]
                if not fits:
                    continue
                stage, rank_gb = fits[0]
                one_node = engines * tp + ranks <= gpus_per_node  # the weight sync stays on NVLink
                rates = Rates(**engine, **learner_rates(gpu, model, eff, ranks, gpus_per_node, image_patches),
                              reward_s_per_sample=eff["reward_s_per_sample"], sync_latency_s=eff["sync_latency_s"],
                              sync_bytes_per_s=gpu["nvlink_gb_s" if one_node else "nic_gb_s"] * GB * eff["link"])
                for k in staleness:
                    lo = Layout(engines=engines, learner_ranks=ranks, reward_workers=reward_workers, staleness=k,
                                zero_stage=stage, devices_per_engine=tp)
                    out.append(Plan(lo, predict(w, rates, lo), rates, rank_gb, gpus_per_node))
    top = max((p.prediction.samples_per_s for p in out), default=0.0)
    near = lambda p: p.prediction.samples_per_s >= (1 - tolerance) * top
    return sorted(out, key=lambda p: (not near(p), p.layout.devices if near(p) else 0, -p.prediction.samples_per_s))


def config_text(plan: Plan, w: Workload, model: dict, task: str, command: str) -> str:
    """The layout as a config file over VLM-R1's recipe for ``task``."""
    lo, p = plan.layout, plan.prediction
    longest = int(w.longest_tokens or w.completion_tokens)
    body = {
        "defaults": [f"vlm_r1_{task}"],
        "model": {"path": model["hub"]},
        "rollout": {"num_engines": lo.engines, "devices_per_engine": lo.devices_per_engine,
                    "num_generations": w.G, "max_new_tokens": longest,
                    "max_model_len": max(4096, 1024 * math.ceil((w.prompt_tokens + longest) / 1024))},
        "learner": {"world_size": lo.learner_ranks, "gpus_per_rank": 1, "zero_stage": lo.zero_stage},
        "reward": {"num_workers": lo.reward_workers},
        "trainer": {"prompts_per_step": w.prompts, "max_staleness": lo.staleness},
    }
    head = (f"# Planned by: {command} ({time.strftime('%Y-%m-%d')})\n"
            f"# Predicted (GPU rates from published specifications and ASSUMED efficiencies, bench/gpus.yaml):\n"
            f"#   step {p.step_s:.1f} s, {p.samples_per_s:.2f} samples/s on {lo.devices} GPUs; busy: engines "
            f"{p.busy['engines']:.0%}, learner {p.busy['learner']:.0%}; bottleneck: {p.bottleneck}\n"
            f"#   a learner rank holds about {plan.learner_gb:.0f} GB (ZeRO-{lo.zero_stage}); replace the estimate "
            f"with a measured step: python -m bench.calibrate on such a machine\n"
            f"# Run: python orchestrator.py conf=<this file> data.train_files=... data.val_files=... "
            f"data.image_folders=...\n")
    return head + yaml.safe_dump(body, sort_keys=False, default_flow_style=None, width=110)


def manifest_text(plan: Plan, config: str, task: str, name: str) -> str:
    """A KubeRay RayJob (the shipped ``docker/k8s/rayjob.yaml`` resized) running the planned config,
    which travels in a ConfigMap mounted on the head, where the job's driver reads it."""
    docs = yaml.safe_load((REPO / "docker" / "k8s" / "rayjob.yaml").read_text())
    lo = plan.layout
    nodes = math.ceil(lo.devices / plan.gpus_per_node)
    per_node = min(plan.gpus_per_node, lo.devices)
    docs["metadata"]["name"] = name
    docs["spec"]["entrypoint"] = " ".join([
        "python /home/ray/app/orchestrator.py conf=/home/ray/plan/plan.yaml cluster.address=auto",
        "data.train_files=/data/train.jsonl data.val_files=/data/val.jsonl data.image_folders=/data/images",
        f"trainer.resume=auto trainer.output_dir=/checkpoints/{name} wandb.mode=offline"])
    head = docs["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    head["containers"][0]["volumeMounts"].append({"name": "plan", "mountPath": "/home/ray/plan", "readOnly": True})
    head["volumes"].append({"name": "plan", "configMap": {"name": f"{name}-plan"}})
    group = docs["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    group.update(replicas=nodes, minReplicas=nodes, maxReplicas=nodes)
    res = group["template"]["spec"]["containers"][0]["resources"]
    for kind in ("requests", "limits"):
        res[kind].update({"nvidia.com/gpu": str(per_node), "cpu": str(8 * per_node), "memory": f"{64 * per_node}Gi"})
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-plan"},
                  "data": {"plan.yaml": config}}
    return (f"# RayJob for a planned layout ({task}): {lo.engines} engines x {lo.devices_per_engine} GPUs + "
            f"{lo.learner_ranks} learner ranks on {nodes} node(s) of {per_node} GPUs.\n"
            f"# Set image: (docker/Dockerfile's, pushed to your registry) and the data paths in the entrypoint;\n"
            f"#   kubectl apply -f docker/k8s/storage.yaml -f docker/k8s/networkpolicy.yaml -f <this file>\n"
            + yaml.safe_dump_all([config_map, docs], sort_keys=False, width=110))


def workload(args, model_size: str | None = None, gpus_doc: dict | None = None) -> Workload:
    return Workload(prompts=args.prompts, G=args.G, prompt_tokens=TEXT_TOKENS + args.image_tokens,
                    completion_tokens=args.completion_tokens, longest_tokens=args.longest_tokens or 0.0,
                    params_b=(gpus_doc or assumptions())["models"][model_size or args.model_size]["params_b"],
                    beta=args.beta)


def best_by_gpus(args, doc: dict, size: str, counts: list[int], staleness: int) -> list[float | None]:
    """The fastest layout's samples/s at each GPU count (None where nothing fits)."""
    w, gpu, model = workload(args, size, doc), doc["gpus"][args.gpu], doc["models"][size]
    out = []
    for n in counts:
        found = plans(w, gpu, model, doc["efficiency"], n, args.gpus_per_node, args.reward_workers,
                      4 * args.image_tokens, (staleness,))
        out.append(max(p.prediction.samples_per_s for p in found) if found else None)
    return out


def nice_step(top: float, ticks: int = 4) -> float:
    """A round tick spacing (1, 2, 2.5 or 5 times a power of ten) that covers ``top`` in ``ticks`` steps."""
    raw = top / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


def chart_svg(series: dict[str, list[float | None]], counts: list[int], title: str, subtitle: str = "") -> str:
    """A line chart (GPUs on a log2 x axis, samples/s on y) as standalone SVG; asynchronous series
    dashed, a series drawn from the first GPU count where it fits."""
    W, H, L, B, T, R = 660, 420, 60, 50, 60, 150
    step = nice_step(max((v for vs in series.values() for v in vs if v is not None), default=1.0))
    top = step * 4
    x = lambda i: L + i * (W - L - R) / (len(counts) - 1)
    y = lambda v: H - B - v / top * (H - B - T)
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>', f'<text x="{L}" y="20" font-size="14">{title}</text>',
           f'<text x="{L}" y="38" fill="#555">{subtitle}</text>',
           f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>',
           f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">GPUs</text>',
           f'<text x="14" y="{(T + H - B) / 2}" transform="rotate(-90 14 {(T + H - B) / 2})" text-anchor="middle">samples/s</text>']
    for i, n in enumerate(counts):
        out.append(f'<text x="{x(i):.1f}" y="{H - B + 16}" text-anchor="middle">{n}</text>')
    for k in range(5):
        out.append(f'<text x="{L - 6}" y="{y(step * k) + 4:.1f}" text-anchor="end">{step * k:g}</text>')
        out.append(f'<line x1="{L}" y1="{y(step * k):.1f}" x2="{W - R}" y2="{y(step * k):.1f}" stroke="#ddd"/>')
    for j, (name, values) in enumerate(series.items()):
        c, dash = colours[j // 2 % len(colours)], ' stroke-dasharray="5,4"' if "async" in name else ""
        pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values) if v is not None)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"{dash}/>')
        out.append(f'<line x1="{W - R + 10}" y1="{T + 18 * j}" x2="{W - R + 34}" y2="{T + 18 * j}" stroke="{c}" '
                   f'stroke-width="2"{dash}/><text x="{W - R + 40}" y="{T + 18 * j + 4}">{name}</text>')
    return "\n".join(out + ["</svg>"]) + "\n"


def main(argv=None) -> list[Plan]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    doc = assumptions()
    ap.add_argument("--model-size", default="7b", choices=list(doc["models"]))
    ap.add_argument("--gpus", type=int, default=64, help="GPUs at most")
    ap.add_argument("--gpu", default="h100", choices=list(doc["gpus"]))
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--G", type=int, default=8, help="samples per prompt")
    ap.add_argument("--prompts", type=int, default=16, help="prompts per step")
    ap.add_argument("--completion-tokens", type=float, default=512, help="mean completion length")
    ap.add_argument("--longest-tokens", type=float, default=None,
                    help="the longest completion of a step (decode steps; rollout.max_new_tokens); default: the mean")
    ap.add_argument("--image-tokens", type=int, default=400, help="language-model tokens per image (after merging)")
    ap.add_argument("--beta", type=float, default=0.04, help="KL weight: > 0 adds the reference pass")
    ap.add_argument("--reward-workers", type=int, default=16)
    ap.add_argument("--task", default="rec", choices=["rec", "ovd"])
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--tolerance", type=float, default=0.02,
                    help="the best layout is the one with the fewest GPUs within this share of the fastest")
    ap.add_argument("--write", metavar="FILE", help="write the best layout as a config file")
    ap.add_argument("--manifest", metavar="FILE", help="write a KubeRay RayJob running it")
    ap.add_argument("--chart", metavar="SVG", help="instead: samples/s against GPUs (8-512) for 3B/7B/32B, sync and async")
    a = ap.parse_args(argv)
    if a.G < 1 or a.prompts < 1 or a.gpus < 2 or a.completion_tokens <= 0:
        ap.error("--G, --prompts and --completion-tokens must be positive and --gpus at least 2")
    gpu = doc["gpus"][a.gpu]
    if a.chart:
        counts = [8, 16, 32, 64, 128, 256, 512]
        series, rows = {}, []
        for size in ("3b", "7b", "32b"):
            for k, loop in ((0, "sync"), (1, "async")):
                series[f"{size.upper()} {loop}"] = best_by_gpus(a, doc, size, counts, k)
                rows.append({"model": size.upper(), "loop": loop,
                             **{str(n): v for n, v in zip(counts, series[f"{size.upper()} {loop}"])}})
        title = f"Predicted samples/s against GPUs, {gpu['name']}"
        subtitle = (f"{a.prompts} prompts x G={a.G}, {a.completion_tokens:g}-token completions; the fastest layout "
                    "at each count; dashed: one step off")
        pathlib.Path(a.chart).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(a.chart).write_text(chart_svg(series, counts, title, subtitle))
        print(f"## {title}: {subtitle} (assumptions: bench/gpus.yaml)\n")
        print(table(rows, ["model", "loop"] + [str(n) for n in counts]))
        print(f"\nwrote {a.chart}")
        return []
    w, model = workload(a, gpus_doc=doc), doc["models"][a.model_size]
    found = plans(w, gpu, model, doc["efficiency"], a.gpus, a.gpus_per_node, a.reward_workers, 4 * a.image_tokens,
                  tolerance=a.tolerance)
    if not found:
        raise SystemExit(f"no layout of {model['hub']} fits {a.gpus} x {gpu['name']}: more GPUs, or a GPU with more memory")
    print(f"## {model['hub']} on up to {a.gpus} x {gpu['name']}: {a.prompts} prompts x G={a.G}, completions "
          f"{a.completion_tokens:g} tokens (longest {a.longest_tokens or a.completion_tokens:g})\n")
    print("GPU rates: published specifications x ASSUMED efficiencies (bench/gpus.yaml), not measured here.\n")
    print(table([p.row() for p in found[:a.top]], list(found[0].row())))
    best = found[0]
    print(f"\nbest: the fewest GPUs within {a.tolerance:.0%} of the fastest layout's samples/s (the first row)")
    sync = max((p for p in found if p.layout.staleness == 0), key=lambda p: p.prediction.samples_per_s, default=None)
    fast = max(p.prediction.samples_per_s for p in found)
    if sync is not None and sync.prediction.samples_per_s < fast:
        print(f"the fastest synchronous layout: {sync.prediction.samples_per_s:.2f} samples/s "
              f"({fast / sync.prediction.samples_per_s:.2f}x slower than the fastest one step off)")
    command = "python -m bench.plan " + " ".join(shlex.quote(x) for x in (sys.argv[1:] if argv is None else argv))
    text = config_text(best, w, model, a.task, command)
    if a.write:
        pathlib.Path(a.write).write_text(text)
        print(f"\nwrote {a.write}: python orchestrator.py conf={a.write} (with your model and data paths)")
    if a.manifest:
        name = f"vlm-r1-{a.task}-{a.model_size}-{best.layout.devices}gpu"
        pathlib.Path(a.manifest).write_text(manifest_text(best, text, a.task, name))
        print(f"wrote {a.manifest}: kubectl apply -f {a.manifest}")
    return found


if __name__ == "__main__":
    main()
