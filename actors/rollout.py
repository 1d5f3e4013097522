"""Rollout engine: one vLLM engine that samples G completions per prompt, with log-probs.

A plain class; ``trainer/roles.py`` makes it a Ray actor on its own placement-group bundle (its own
GPUs on a cluster). Prompts arrive as ``samples.Prompt`` (paths, not pixels): the engine
opens the images itself, applies the chat template, and returns one ``Rollout`` per sample with
everything the reward workers and the learner need -- the exact prompt token ids the engine used
(image placeholders expanded), completion ids/text, finish reason, per-token log-probs, and the
original and model-input image sizes (for reward rescaling).
"""
from __future__ import annotations

import os
import time

from data.images import open_rgb
from data.loaders import MAX_IMAGES
from data.prompts import prompt_text
from models import answer_frame
from samples import Prompt, Refused, Rollout

# What an engine raises when one prompt is wrong rather than the engine: vLLM's request errors
# (``VLLMClientError``: more tokens than max_model_len, ...), a processor refusing an image
# (ValueError), an image that cannot be read (OSError: gone, truncated, not an image).
PROMPT_ERRORS: tuple = (ValueError, OSError)


def completion_text(tokenizer, ids) -> str:
    """The text of completion ``ids`` as vLLM's incremental detokenizer gives it: special tokens
    skipped, and a trailing byte sequence that never completed a character left out (vLLM holds a
    token back while its text ends in U+FFFD, waiting for the bytes that would complete it).

    >>> class Bytes:  # a byte-level tokenizer: token i is byte i
    ...     def decode(self, ids, skip_special_tokens=True):
    ...         return bytes(ids).decode("utf-8", errors="replace")
    >>> completion_text(Bytes(), list("ok ".encode()) + [0xE2, 0x82])  # '€' cut after 2 of 3 bytes
    'ok '
    >>> completion_text(Bytes(), list("1 €".encode()))
    '1 €'
    """
    k, text = len(ids), tokenizer.decode(ids, skip_special_tokens=True)
    while text.endswith("\ufffd") and k > 0:
        k -= 1
        text = tokenizer.decode(ids[:k], skip_special_tokens=True)
    return text


def sampled_logprobs(logprobs) -> list[float]:
    """The sampled token's log-prob at each position of a completion, from vLLM's flat log-probs
    (the sampled token first at each position) or its list of per-position dicts."""
    if logprobs is None:
        return []
    if hasattr(logprobs, "start_indices"):  # vllm.logprobs.FlatLogprobs
        return [logprobs.logprobs[k] for k in logprobs.start_indices]
    return [next(iter(d.values())).logprob if d else 0.0 for d in logprobs]


class RolloutEngine:
    """Wraps ``vllm.LLM``. ``cfg`` is the ``rollout`` config section (a mapping)."""

    def __init__(self, model_path: str, cfg, seed: int = 0, index: int = 0, model_cfg=None, lora_rank: int = 0):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg["kv_cache_gb"]))
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        from transformers import AutoProcessor
        from vllm import LLM
        self.index, self.cfg = index, cfg
        proc_kw = {}
        if model_cfg is not None:
            proc_kw = {k: model_cfg[k] for k in ("min_pixels", "max_pixels") if model_cfg.get(k)}
        self.processor = AutoProcessor.from_pretrained(model_path, **proc_kw)
        from conf.hardware import resolve_block_size, resolve_dtype, resolve_eager
        self.dtype, self.dtype_reason = resolve_dtype(cfg["dtype"], "rollout")
        self.eager, self.eager_reason = resolve_eager(cfg["enforce_eager"])
        t0 = time.perf_counter()
        mm_kwargs = {"mm_processor_kwargs": proc_kw} if proc_kw else {}
        self.block_size, self.block_reason = resolve_block_size(cfg["block_size"], gpu=_has_gpu())
        if self.block_size is not None:
            mm_kwargs["block_size"] = self.block_size
        # LoRA adapter sync: the engine serves the frozen base plus the adapter of the last update
        # (none before the first: a fresh adapter is zero, so the base is the policy)
        self._lora, self._lora_root, self._lora_n = None, None, 0
        self.transfer = cfg.get("weight_transfer", "vllm")  # vLLM's weight-transfer API | the worker extension
        if self.transfer == "vllm":
            from actors.vllm_ext import BACKEND
            mm_kwargs["weight_transfer_config"] = {"backend": BACKEND}
        if lora_rank > 0:
            import atexit
            import shutil
            import tempfile
            mm_kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=vllm_lora_rank(lora_rank))
            self._lora_root = tempfile.mkdtemp(prefix=f"vlm-r1-lora-engine{index}-")
            atexit.register(shutil.rmtree, self._lora_root, True)
        self.llm = LLM(model=model_path, dtype=self.dtype, max_model_len=cfg["max_model_len"], seed=seed + index,
                       limit_mm_per_prompt={"image": MAX_IMAGES, "video": 0}, enforce_eager=self.eager,
                       tensor_parallel_size=cfg["devices_per_engine"] if _has_gpu() else 1,
                       gpu_memory_utilization=cfg["gpu_memory_utilization"], logprobs_mode="processed_logprobs",
                       # never split a prompt's prefill across steps: vLLM then discards the sampled token
                       # and rewinds the request's seeded generator, which CPU generators cannot do
                       # ("RuntimeError: CPU Generator does not use offset")
                       enable_chunked_prefill=False, max_num_batched_tokens=max(cfg["max_model_len"], 4096),
                       worker_extension_cls="actors.vllm_ext.WeightSync",  # (imported by the workers: it
                       # also registers the weight-transfer backend, rollout.weight_transfer=vllm)
                       trust_remote_code=bool(model_cfg and model_cfg.get("trust_remote_code")), **mm_kwargs)
        self.start_s = time.perf_counter() - t0
        self._reset_s = 0.0
        tok = self.processor.tokenizer
        from models import family_of
        self.family = family_of(model_path, (model_cfg or {}).get("family", "auto"),
                                bool(model_cfg and model_cfg.get("trust_remote_code")))
        self.banned_ids = sorted({tok.convert_tokens_to_ids(t) for t in self.family.vision_tokens}
                                 - {None, tok.unk_token_id})
        from models import coords_of
        self.coords = coords_of(self.family, (model_cfg or {}).get("coords", "auto"))

    def reinit(self, **kwargs) -> float:
        """Drop this engine's ``LLM`` (and vLLM's per-process distributed state), then build it
        afresh from ``__init__``'s arguments in this process, as a new actor would be built: the
        next run of a ``trainer.session.Session`` (``import vllm`` and the imports inside ``LLM``
        are most of a start-up; a second ``LLM`` in a process that has made one starts in about 3 s
        instead of 15). Returns the new engine's start-up seconds."""
        import gc

        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel
        self.__dict__.clear()
        gc.collect()
        destroy_model_parallel()
        destroy_distributed_environment()
        RolloutEngine.__init__(self, **kwargs)
        return self.start_s

    def sampling_params(self, n: int, greedy: bool = False, seed: int | None = None):
        """vLLM sampling parameters; vision special tokens can never be sampled. A per-request
        ``seed`` makes the samples a function of (weights, prompt, seed), which is what lets a
        resumed run draw exactly the completions the uninterrupted run drew."""
        from vllm import SamplingParams
        bias = {t: -100.0 for t in self.banned_ids}
        # the engine decodes each completion once at the end (completion_text) rather than vLLM every
        # token of it twice over (the text, and each log-prob's token); log-probs come flat, not a
        # dict per token (`python -m bench.rollout --outputs vllm engine`: 1.27x at the 1M model)
        common = dict(n=n, max_tokens=self.cfg["max_new_tokens"], logprobs=0, logit_bias=bias, seed=seed,
                      detokenize=False, flat_logprobs=True)
        if greedy:
            return SamplingParams(temperature=0.0, **common)
        return SamplingParams(temperature=self.cfg["temperature"], top_p=self.cfg["top_p"], **common)

    def _request(self, p: Prompt) -> dict:
        text = prompt_text(self.processor, p.question, len(p.images), p.task)
        images = [open_rgb(path) for path in p.images]
        req = {"prompt": text}
        if images:
            req["multi_modal_data"] = {"image": images if len(images) > 1 else images[0]}
        return req

    def generate(self, prompts: list, n: int | None = None, greedy: bool = False) -> list:
        """``n`` (default G) samples for each prompt, grouped prompt after prompt. A prompt may be
        given as ``(prompt, seed)`` to fix its samples. A prompt this engine cannot take (its image
        unreadable, too long for ``max_model_len``) comes back as one ``Refused`` in its place,
        and the others are generated as usual; an error of the engine itself is raised."""
        n = n or self.cfg["num_generations"]
        if not prompts:
            return []
        pairs = [p if isinstance(p, tuple) else (p, None) for p in prompts]
        refused, jobs = {}, []
        for i, (p, seed) in enumerate(pairs):
            try:
                jobs.append((i, self._request(p), self.sampling_params(n, greedy, seed)))
            except PROMPT_ERRORS as e:
                refused[i] = Refused(p, _reason(e))
        outs = self._generate(jobs, refused, pairs)
        rollouts = []
        for i, (p, _) in enumerate(pairs):
            if i in refused:
                rollouts.append(refused[i])
                continue
            sizes = tuple(answer_frame(self.coords, self.processor.image_processor, w, h) for w, h in p.image_sizes)
            for j, c in enumerate(outs[i].outputs):
                rollouts.append(Rollout(p, j, list(outs[i].prompt_token_ids), list(c.token_ids),
                                        completion_text(self.processor.tokenizer, c.token_ids),
                                        c.finish_reason or "length", sampled_logprobs(c.logprobs), sizes, self.index))
        return rollouts

    def _generate(self, jobs: list, refused: dict, pairs: list) -> dict:
        """vLLM's outputs by position. vLLM refuses a whole call when one request is invalid, so on
        a prompt's error each prompt is generated alone (same seeds: the same samples) to find which
        one it was; those join ``refused``."""
        from vllm.exceptions import VLLMClientError
        outs, parts = {}, [jobs] if jobs else []
        while parts:
            part = parts.pop(0)
            try:
                got = self.llm.generate([r for _, r, _ in part], [s for _, _, s in part], use_tqdm=False,
                                        lora_request=self._lora)
                outs.update({i: o for (i, _, _), o in zip(part, got)})
            except PROMPT_ERRORS + (VLLMClientError,) as e:
                if len(part) > 1:
                    parts += [[job] for job in part]
                else:
                    refused[part[0][0]] = Refused(pairs[part[0][0]][0], _reason(e))
        return outs

    # ------------------------------------------------------------------ weight sync
    def init_weight_group(self, host: str, port: int, rank_offset: int, world_size: int, backend: str = "gloo",
                          pack_bytes: int | None = None, delta: bool = False, adapter: dict | None = None) -> list[int]:
        """Join the learner's weight group (``adapter``: the PEFT config of LoRA adapter sync)."""
        from weights.net import node_address
        if (adapter is not None) != (self._lora_root is not None):
            raise ValueError("LoRA adapter sync needs an engine started with lora_rank > 0, and only then")
        here = node_address(host)  # where this engine's gloo pairs listen
        if self.transfer == "vllm":
            self.llm.init_weight_transfer_engine({"init_info": dict(
                host=host, port=port, rank_offset=rank_offset, world_size=world_size, backend=backend, bind_host=here,
                pack_bytes=pack_bytes, delta=delta, adapter=adapter)})
            return [rank_offset + i for i in range(self.num_workers())]
        return self.llm.collective_rpc("init_weight_group", args=(host, port, rank_offset, world_size, backend),
                                       kwargs={"bind_host": here, "pack_bytes": pack_bytes, "delta": delta,
                                               "adapter": adapter})

    def _update(self, meta: list, adapter_dir: str | None = None) -> int:
        """One update through the chosen entry point; the number of tensors received."""
        if self.transfer == "vllm":
            self.llm.start_weight_update()
            self.llm.update_weights({"update_info": {"meta": [list(m) for m in meta], "adapter_dir": adapter_dir}})
            self.llm.finish_weight_update()
            return len(meta)  # (each worker checks that it consumed every tensor sent)
        kwargs = {} if adapter_dir is None else {"adapter_dir": adapter_dir}
        return self.llm.collective_rpc("receive_weights", args=(meta,), kwargs=kwargs)[0]

    def receive_weights(self, meta: list) -> int:
        """Receive a full update from the learner, then clear every cache that holds old results.
        With adapter sync each update is a new adapter directory under a new LoRA id (vLLM loads
        it at the next generation; the previous directory is removed)."""
        if self._lora_root is None:
            n = self._update(meta)
        else:
            import pathlib
            import shutil
            from vllm.lora.request import LoRARequest
            self._lora_n += 1
            path = pathlib.Path(self._lora_root) / f"v{self._lora_n}"
            n = self._update(meta, str(path))
            old, self._lora = self._lora, LoRARequest("policy", self._lora_n, str(path))
            if old is not None:
                shutil.rmtree(old.lora_path, ignore_errors=True)
        t0 = time.perf_counter()
        self.llm.reset_prefix_cache()
        self.llm.reset_mm_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self._reset_s = time.perf_counter() - t0
        return n

    def last_sync_timing(self) -> dict[str, float]:
        """Seconds of the last weight update: receiving, reloading (worker 0), cache resets."""
        return {**self.llm.collective_rpc("last_sync_timing")[0], "cache_reset_s": self._reset_s}

    def weight_checksum(self, names: list[str]) -> dict[str, float]:
        return self.llm.collective_rpc("weight_checksum", args=(names,))[0]

    def weight_digest(self, names: list[str]) -> str:
        """Delta sync: sha256 of the weights this engine was sent (worker 0's kept copy)."""
        return self.llm.collective_rpc("weight_digest", args=(names,))[0]

    def num_workers(self) -> int:
        """vLLM workers in this engine (tensor-parallel ranks), each a member of the weight group."""
        return self.cfg["devices_per_engine"] if _has_gpu() else 1

    def info(self) -> dict:
        """What this engine resolved from ``auto``: its dtype and compilation (and why), its CPU threads."""
        import torch
        return {"dtype": self.dtype, "dtype_reason": self.dtype_reason, "threads": torch.get_num_threads(),
                "weight_transfer": self.transfer, "start_s": self.start_s,
                "compiled": not self.eager, "compiled_reason": self.eager_reason,
                "block_size": self.block_size, "block_reason": self.block_reason}

    def transfer_entry(self) -> str:
        """The class the worker's updates arrive through (``GlooWeightTransfer`` or ``extension``)."""
        return self.llm.collective_rpc("transfer_entry")[0]

    def cpu_seconds(self) -> float:
        """CPU time this process has used, every thread included (for the utilisation figure)."""
        return time.process_time()

    def ready(self) -> float:
        """Engine start-up time in seconds (also a cheap liveness probe)."""
        return self.start_s

    def pid(self) -> int:
        return os.getpid()


def vllm_lora_rank(r: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds rank ``r``.

    >>> vllm_lora_rank(4), vllm_lora_rank(64), vllm_lora_rank(65)
    (8, 64, 128)
    """
    ranks = (1, 8, 16, 32, 64, 128, 256, 320, 512)
    if r > ranks[-1]:
        raise ValueError(f"learner.lora.r={r}: vLLM serves LoRA ranks up to {ranks[-1]}; use a smaller rank "
                         "or learner.lora.sync=merged")
    return next(x for x in ranks if x >= r)


def _has_gpu() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - torch without CUDA support
        return False


def _reason(e: BaseException) -> str:
    """An error as one short line: its type and the start of its message."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}"
