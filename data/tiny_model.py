"""The embedded models: tiny random VLMs of each family (Qwen2.5-VL unless named) with a locally trained tokenizer.

    python -m data.tiny_model --out DIR [--seed 0] [--family qwen3_vl]

Builds, deterministically from a seed and with no network, a Hugging Face model directory that
``AutoModelForImageTextToText.from_pretrained``, ``AutoProcessor.from_pretrained`` and
``vllm.LLM(model=dir)`` all load offline:
- a byte-level BPE tokenizer trained on the synthetic task's text with Qwen's pre-tokenizer
  (digits are single tokens), Qwen's special tokens and a Qwen2-VL style chat template;
- the family's image processor (Qwen2/2.5-VL: 14 px patches, 2x2 merge, one token per 28x28
  pixels; Qwen3-VL: 16 px patches, one token per 32x32 pixels; GLM-4.1V: 14 px, its own image
  tokens added to the tokenizer; InternVL: 112 px tiles of 16 tokens);
- the family's model with ~1M parameters (text 128 x 2 layers, vision 64 x 2 layers),
  initialised from the seed (``models/``: one tiny builder per family).

``builtin:tiny`` (base.yaml's ``model.path``; conf=rec and conf=ovd use the ``-one-shape`` models
below) is the Qwen2.5-VL model *warm-started*: a short
supervised run (``orchestrator.py mode=sft``, the same learner, config and loaders) on the
synthetic REC and OVD answers, so that it writes the answer format most of the time while its
boxes are still imprecise -- something for GRPO to improve. ``builtin:tiny-random`` is the random
init. Other families: ``builtin:tiny-qwen2-vl``, ``builtin:tiny-qwen3-vl``, ``builtin:tiny-glm4v``,
``builtin:tiny-internvl`` (and ``...-random``). ``...-one-shape`` is warm-started instead by
1,200 REC steps on the one-shape scene (``data.synthetic.SCENES``), ``...-one-shape-ovd`` by OVD
steps alone on it: ``builtin:tiny-qwen3-vl-one-shape`` and ``...-one-shape-ovd`` are the embedded
models of ``conf=rec`` and ``conf=ovd``, the tiny Qwen3-VL (the one family of these that learns
to localise in minutes: docs/learning.md).
``resolve_model_path`` builds any of them once into the cache and returns its path; any other
value is returned as is (a local directory or a hub id, loaded by the normal Hugging Face code).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import time

BUILTIN = "builtin:tiny"            # random init + warm start (SFT), the default
BUILTIN_RANDOM = "builtin:tiny-random"
WARM_STEPS = 400  # ~2-3 minutes on 2 CPU cores: format learned, boxes still rough
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
SHIPPED_DIR = pathlib.Path(__file__).resolve().parent / "embedded"  # warm starts shipped with the project
BUILD_VERSION = 4  # bump when the recipe changes, so caches rebuild (2: warm start with 3D positions; 3: fp32;
# 4: Qwen3-VL's position embeddings at unit scale)


def cache_root() -> pathlib.Path:
    """``$VLM_R1_RAY_CACHE`` or ``~/.cache/vlm-r1-ray``: built models and generated data."""
    return pathlib.Path(os.environ.get("VLM_R1_RAY_CACHE", pathlib.Path.home() / ".cache" / "vlm-r1-ray"))


def _corpus(seed: int) -> list[str]:
    from data import prompts, synthetic
    texts = [prompts.REC_TEMPLATE, prompts.R1_SYSTEM, "You are a helpful assistant.",
             "<think> reasoning </think><answer> answer </answer>", "None", "0123456789"]
    for row in synthetic.text_rows(400, seed):
        q, a = row["conversations"][0]["value"], row["conversations"][1]["value"]
        texts += [q, a, f"<think>I look for {q[-40:]}</think><answer>{{\"bbox_2d\": {a}}}</answer>",
                  f"<think>checking the shapes</think><answer>{a}</answer>"]
    return texts


def build_tokenizer(seed: int = 0, vocab_size: int = 640, named: dict[str, str] | None = None):
    """Train the BPE on the task text and wrap it as a Qwen2 tokenizer with the chat template;
    ``named`` adds a family's own special tokens, each also an attribute (``tok.start_image_token``)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    from data.prompts import CHAT_TEMPLATE
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_corpus(seed), trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    extra = {"extra_special_tokens": dict(named)} if named else {}
    tok = Qwen2Tokenizer(vocab=state["vocab"], merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>", **extra)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS + list((named or {}).values())])
    tok.chat_template = CHAT_TEMPLATE
    return tok


# (text hidden, layers, heads, kv heads, intermediate; vision hidden, depth, heads, intermediate)
SIZES = {"tiny": (128, 2, 2, 1, 512, 64, 2, 2, 128),       # ~1M: the embedded default
         "small": (192, 3, 3, 1, 768, 128, 4, 2, 256),   # ~2.5M: a testbed lever (bench.testbed)
         "30m": (512, 8, 8, 2, 1536, 256, 4, 4, 768),     # ~30M
         "50m": (640, 10, 10, 2, 2048, 256, 4, 4, 768),   # ~50M (~100 MB in bf16): weight-sync benchmark
         "250m": (1024, 16, 16, 4, 3072, 512, 8, 8, 1536),  # ~250M (~500 MB in bf16): weight-sync benchmark
         "300m": (1024, 20, 16, 4, 3584, 512, 8, 8, 1536),  # ~300M: benchmarks only
         "400m": (1280, 20, 16, 4, 4096, 512, 8, 8, 1536)}  # ~400M: end-to-end benchmark against TRL


# builtin:tiny-<slug> names the family; builtin:tiny alone is Qwen2.5-VL
SLUGS = {"qwen2.5-vl": "qwen2_5_vl", "qwen2-vl": "qwen2_vl", "qwen3-vl": "qwen3_vl", "glm4v": "glm4v",
         "internvl": "internvl"}


def build(out_dir: str | os.PathLike, seed: int = 0, rope_theta: float = 20.0, size: str = "tiny",
          family: str = "qwen2_5_vl") -> pathlib.Path:
    """Build a random model directory of ``family`` (a key of ``models.FAMILIES``) at ``out_dir``
    (a temp dir, then renamed); ``size`` picks one of ``SIZES`` (the larger ones are for benchmarks)."""
    import torch
    from data.prompts import CHAT_TEMPLATE
    from models import family_named

    fam = family_named(family)
    if fam.tiny is None:
        raise ValueError(f"family {family!r} has no tiny build; families with one: "
                         f"{', '.join(sorted(SLUGS))}")
    out = pathlib.Path(out_dir)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = build_tokenizer(seed, named=fam.tokens)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS + list(fam.tokens.values())}
    vocab = (len(tok) + 63) // 64 * 64
    torch.manual_seed(seed)
    model, processor = fam.tiny(SIZES[size], ids, vocab, rope_theta, tok, CHAT_TEMPLATE)
    model = model.eval()
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    (tmp / "BUILD.json").write_text(json.dumps({"version": BUILD_VERSION, "seed": seed, "rope_theta": rope_theta,
                                                "family": family,
                                                "parameters": sum(p.numel() for p in model.parameters())}))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


# warm-start recipes by suffix: "" (REC + OVD on the default scene, WARM_STEPS), "-one-shape" (REC
# on the one_shape scene, long enough that the box follows the shape: conf=rec's model) and
# "-one-shape-ovd" (OVD alone on that scene: conf=ovd's model; REC's warm start does not carry over)
RECIPES = {"": {"scene": "default", "tasks": "rec:ovd", "steps": WARM_STEPS},
           "-one-shape": {"scene": "one_shape", "tasks": "rec", "steps": 1200},
           "-one-shape-ovd": {"scene": "one_shape", "tasks": "ovd", "steps": 2400}}


def parse_builtin(path: str) -> tuple[str, dict | None] | None:
    """``builtin:tiny[-<family>][-random|-one-shape|-one-shape-ovd]`` -> (family, warm-start recipe
    or None for the random init); None for any other path.

    >>> parse_builtin("builtin:tiny")[1]["steps"], parse_builtin("builtin:tiny-qwen3-vl-random"), parse_builtin("/m")
    (400, ('qwen3_vl', None), None)
    """
    if not path.startswith("builtin:"):
        return None
    name = path[len("builtin:"):]
    recipe = RECIPES[""]
    for suffix, r in [("-random", None), *RECIPES.items()]:
        if suffix and name.endswith(suffix):
            name, recipe = name[:-len(suffix)], r
            break
    if name == "tiny":
        return "qwen2_5_vl", recipe
    slug = name[len("tiny-"):] if name.startswith("tiny-") else None
    if slug not in SLUGS:
        names = ", ".join(["builtin:tiny"] + [f"builtin:tiny-{s}" for s in SLUGS])
        raise ValueError(f"model.path={path!r} is not an embedded model: use one of {names} (each also as "
                         f"...-random, the untrained init, or ...-one-shape / ...-one-shape-ovd, warm-started "
                         f"on REC / OVD of the one-shape scene), a local directory or a hub id")
    return SLUGS[slug], recipe


def resolve_model_path(path: str, seed: int = 0, shipped: bool = True) -> str:
    """``builtin:tiny[-<family>][-random]`` -> the cached model (built on first use); anything
    else unchanged. Without ``-random`` the model is warm-started (``warm_start``), unless the
    project ships that very build (``data/embedded/``, ``python -m tools.ship_models``: the
    embedded models of ``conf=rec`` and ``conf=ovd``), which is then used as it is."""
    parsed = parse_builtin(path)
    if parsed is None:
        return path
    family, recipe = parsed
    slug = next(s for s, f in SLUGS.items() if f == family)
    base = cache_root() / f"tiny-{slug}-v{BUILD_VERSION}-s{seed}"
    if recipe is not None and shipped:
        ready = SHIPPED_DIR / warm_name(base, recipe)
        record = json.loads((ready / "BUILD.json").read_text()) if (ready / "BUILD.json").exists() else {}
        if (record.get("warm_start_steps"), record.get("warm_start_tasks")) == (recipe["steps"], recipe["tasks"]):
            return str(ready)
    if not (base / "BUILD.json").exists():
        t0 = time.perf_counter()
        print(f"building the embedded tiny {slug} into {base} ...", flush=True)
        build(base, seed, family=family)
        print(f"built in {time.perf_counter() - t0:.1f} s", flush=True)
    if recipe is None:
        return str(base)
    out = base.with_name(warm_name(base, recipe))
    done = json.loads((out / "BUILD.json").read_text()) if (out / "BUILD.json").exists() else {}
    if (done.get("warm_start_steps"), done.get("warm_start_tasks")) != (recipe["steps"], recipe["tasks"]):
        warm_start(base, out, seed, recipe["steps"], recipe["scene"], recipe["tasks"])  # never built, or by another recipe
    return str(out)


def warm_name(base: pathlib.Path, recipe: dict) -> str:
    """The directory name of ``base`` warm-started by ``recipe`` (in the cache, or shipped)."""
    scene = recipe["scene"]
    suffix = "" if scene == "default" else f"-{scene}" + ("" if recipe["tasks"] == "rec" else f"-{recipe['tasks']}")
    return base.name + "-warm" + suffix


def warm_start(base: pathlib.Path, out: pathlib.Path, seed: int = 0, steps: int = WARM_STEPS,
               scene: str = "default", tasks: str = "rec:ovd") -> pathlib.Path:
    """Supervised warm start of ``base`` on the synthetic answers of ``tasks`` in ``scene``, saved at ``out``."""
    import subprocess
    import sys
    repo = pathlib.Path(__file__).resolve().parents[1]
    from data.scenes import data_dir_name
    syn = cache_root() / data_dir_name(0, scene)
    work = out.with_name(out.name + f".work{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    print(f"warm-starting the tiny model ({steps} supervised steps on the synthetic answers) ...", flush=True)
    t0 = time.perf_counter()
    files = lambda split: ":".join(f"{syn}/{t}_{split}.jsonl" for t in tasks.split(":"))  # noqa: E731
    cmd = [sys.executable, str(repo / "orchestrator.py"), "mode=sft", f"model.path={base}", f"seed={seed}",
           f"data.task={tasks}", f"data.synthetic.dir={syn}", f"data.synthetic.scene={scene}", f"data.image_folders={syn}",
           f"data.train_files={files('train')}", f"data.val_files={files('val')}",
           f"trainer.max_steps={steps}", "trainer.prompts_per_step=16", "trainer.epochs=100", "learner.lr=3e-3",
           "learner.lr_schedule=cosine", "learner.warmup_steps=10", "learner.beta=0", "learner.micro_batch_size=16",
           # fp32 whatever the CPU: the same warm start everywhere, and on a CPU with AMX, bf16 (auto) made
           # this 1M model's warm start slower (4.7 vs 3.0 min) and left it without a single
           # overlapping box (val mean IoU 0.000 vs 0.018; python -m bench.testbed --dtype bf16)
           "learner.dtype=fp32",
           "trainer.eval_steps=0", "trainer.save_steps=0", "trainer.report=false", "wandb.mode=disabled",
           "cluster.include_dashboard=false", f"trainer.output_dir={work}"]
    subprocess.run(cmd, check=True, cwd=repo)
    hf = work / "checkpoints" / f"step_{steps:06d}" / "hf"
    info = json.loads((base / "BUILD.json").read_text())
    info.update({"warm_start_steps": steps, "warm_start_scene": scene, "warm_start_tasks": tasks,
                 "warm_start_seconds": round(time.perf_counter() - t0, 1)})
    (hf / "BUILD.json").write_text(json.dumps(info))
    if out.exists():
        shutil.rmtree(out)
    hf.rename(out)
    shutil.rmtree(work, ignore_errors=True)
    print(f"warm start done in {info['warm_start_seconds']} s: {out}", flush=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Build an embedded tiny model directory (random init).")
    ap.add_argument("--out", default=None, help="output dir (default: the cache)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--family", default="qwen2_5_vl", choices=sorted(SLUGS.values()))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    slug = next(s for s, f in SLUGS.items() if f == args.family)
    out = build(args.out, args.seed, family=args.family) if args.out else \
        pathlib.Path(resolve_model_path(f"builtin:tiny-{slug}-random", args.seed))
    info = json.loads((out / "BUILD.json").read_text())
    print(f"tiny model: {info['parameters']:,} parameters at {out} ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
