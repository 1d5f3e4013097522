"""The learner: a DeepSpeed rank that recomputes log-probs and applies the GRPO update.

A plain class; ``trainer/roles.py`` creates ``learner.world_size`` of them as Ray actors. Each
rank holds the policy (ZeRO 0-3, fp32 or bf16, optional LoRA and frozen vision tower), a frozen
reference policy when ``beta != 0``, and a torch AdamW with warmup + schedule. ``train_step``
takes this rank's share of the step's completions, splits it into micro-batches of
``micro_batch_size`` with gradient accumulation, and scales every micro-batch loss so that the
accumulated, rank-averaged gradient is exactly the gradient of the whole-batch loss.
Rank 0 also owns the weight broadcast to the rollout engines (``learner/sync_io.py``).
"""
from __future__ import annotations

import contextlib
import math
import os
import re

import torch

from learner import grpo
from learner.batch import collate, collate_shared
from samples import TrainItem
from learner.checkpoint_io import CheckpointIO
from learner.ds_config import ds_config
from learner.optim import SkippableAdamW, adamw_kernel, lr_lambda
from learner.sync_io import WeightSyncIO


class Learner(CheckpointIO, WeightSyncIO):
    def __init__(self, rank: int, world_size: int, model_path: str, model_cfg, cfg, rollout_cfg, seed: int,
                 total_steps: int, per_rank_items: int):
        self.rank, self.world_size, self.model_path = rank, world_size, model_path
        self.model_cfg, self.cfg, self.rollout_cfg = dict(model_cfg), dict(cfg), dict(rollout_cfg)
        self.seed, self.total_steps, self.per_rank_items = seed, total_steps, per_rank_items
        self.sender = None
        from conf.hardware import resolve_dtype
        self.cfg["dtype"], self.dtype_reason = resolve_dtype(self.cfg["dtype"], "learner")
        self.sync_dtype = torch.float32  # the engines' dtype, set by weight_meta
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()  # "Writing model shards" bars land in the driver's log as lines

    def reinit(self, **kwargs) -> None:
        """Drop this rank's model, optimizer and weight-sync group and construct it afresh from
        ``__init__``'s arguments in this process (the next run of a ``trainer.session.Session``;
        the driver then calls ``setup``, which keeps the process group of the first: one rank)."""
        import gc
        self.__dict__.clear()
        gc.collect()
        Learner.__init__(self, **kwargs)

    # ------------------------------------------------------------------ setup
    def address(self) -> tuple[str, int]:
        """(host, free port) for the DeepSpeed rendezvous; called on rank 0 before ``setup``."""
        from weights.net import free_port, node_address
        host = node_address()
        return host, free_port(host)

    def setup(self, master_addr: str, master_port: int) -> dict:
        os.environ.update({"MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port), "RANK": str(self.rank),
                           "WORLD_SIZE": str(self.world_size), "LOCAL_RANK": "0"})
        import deepspeed
        import deepspeed.ops
        from transformers import AutoModelForImageTextToText, AutoProcessor
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        # the rendezvous store listens on master_addr only (torch's default server binds every
        # interface); DeepSpeed then adopts the process group made from it
        import datetime

        import torch.distributed as dist
        from weights.net import bind_default_gloo, node_address, tcp_store
        if not dist.is_initialized():  # (a test may build several learners in one process)
            bind_default_gloo(node_address(master_addr))  # DeepSpeed's gloo pairs: on this node's address too
            store = tcp_store(master_addr, master_port, is_master=self.rank == 0)
            dist.init_process_group(backend, store=store, rank=self.rank, world_size=self.world_size,
                                    timeout=datetime.timedelta(minutes=30))
        # DeepSpeed compiles its CPU shared-memory all-reduce (~40 s) at init_distributed, but
        # only its inference path uses it; training all-reduces go through gloo. Skip the build.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
        torch.manual_seed(self.seed)
        proc_kw = {k: self.model_cfg[k] for k in ("min_pixels", "max_pixels") if self.model_cfg.get(k)}
        self.processor = AutoProcessor.from_pretrained(self.model_path, **proc_kw)
        tok = self.processor.tokenizer
        from models import family_of
        self.family = family_of(self.model_path, self.model_cfg.get("family", "auto"),
                                bool(self.model_cfg.get("trust_remote_code")))
        self.banned = {tok.convert_tokens_to_ids(t) for t in self.family.vision_tokens} - {None}
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        dtype = torch.bfloat16 if self.cfg["dtype"] == "bf16" else torch.float32
        load = dict(dtype=dtype, trust_remote_code=self.model_cfg.get("trust_remote_code", False))
        model = AutoModelForImageTextToText.from_pretrained(self.model_path, **load)
        from learner import attention
        sharing = self.cfg["prefix_sharing"] and attention.install(model)  # shared rows: blockwise attention
        self.image_token_id = model.config.image_token_id
        if self.model_cfg.get("freeze_vision_tower"):
            for name, p in model.named_parameters():
                if self.family.vision_prefix in name:
                    p.requires_grad_(False)
        self.lora = self.cfg["lora"]["r"] > 0
        if self.lora and self.cfg["zero_stage"] == 3:
            raise ValueError("LoRA with learner.zero_stage=3 is not supported: adapters and their optimizer state "
                             "are small, use learner.zero_stage=2 (or 0/1) with learner.lora.r > 0")
        if self.lora:
            model = self._wrap_lora(model)
        if self.cfg["gradient_checkpointing"]:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if self.lora or self.model_cfg.get("freeze_vision_tower"):
                model.enable_input_require_grads()
        from learner import linear
        self.linear, self.linear_reason = linear.choose(self.cfg["cpu_linear"], self.cfg["dtype"],
                                                        "cuda" if torch.cuda.is_available() else "cpu",
                                                        self.cfg["zero_stage"])
        if self.linear == "onednn":
            linear.install(model)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = SkippableAdamW(params, lr=self.cfg["lr"], betas=tuple(self.cfg["adam_betas"]),
                             weight_decay=self.cfg["weight_decay"], **adamw_kernel(self.cfg["adam_impl"]))
        self.optimizer_core = opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(self.cfg["warmup_steps"], self.cfg["lr_schedule"],
                                                                 self.total_steps * self.cfg["num_iterations"]))
        self.n_micro = max(1, math.ceil(self.per_rank_items / self.cfg["micro_batch_size"]))
        config = ds_config(self.cfg, self.cfg["micro_batch_size"], self.n_micro, self.world_size)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=opt, lr_scheduler=sched, config=config, model_parameters=params)
        if self.world_size == 1 and self.cfg["zero_stage"] == 0:
            # one rank: DeepSpeed's all-reduce would flatten the gradients, reduce them over this
            # rank alone and copy them back (3% of a 30M update on CPU); ZeRO 1-3 reduce in their optimizer
            self.engine.enable_backward_allreduce = False
        from learner.checkpoint_io import install
        install(self.engine)  # checkpoints load weights-only: data, never code
        self.ref = None
        if self.cfg["beta"] != 0:
            ref = AutoModelForImageTextToText.from_pretrained(self.model_path, **load).eval().requires_grad_(False)
            if sharing:
                attention.install(ref)
            if self.linear == "onednn":
                linear.install(ref)
            if self.cfg["zero_stage"] == 3:
                ref_cfg = ds_config(self.cfg, self.cfg["micro_batch_size"], 1, self.world_size, train=False)
                ref = deepspeed.initialize(model=ref, config=ref_cfg)[0]
            self.ref = ref
        self.steps_done = 0
        n_all = sum(self._numel(p) for p in self.engine.module.parameters())
        n_train = sum(self._numel(p) for p in self.engine.module.parameters() if p.requires_grad)
        return {"parameters": n_all, "trainable": n_train, "micro_batches": self.n_micro, "pid": os.getpid(),
                "dtype": self.cfg["dtype"], "dtype_reason": self.dtype_reason, "threads": torch.get_num_threads(),
                "linear": self.linear, "linear_reason": self.linear_reason}

    @staticmethod
    def _numel(p) -> int:
        return p.ds_numel if hasattr(p, "ds_numel") else p.numel()

    def _wrap_lora(self, model):
        from peft import LoraConfig, get_peft_model
        lc = self.cfg["lora"]
        # VLM-R1's LoRA recipe adapts the language model only; the vision tower stays frozen
        targets = "|".join(lc["target_modules"])
        config = LoraConfig(r=lc["r"], lora_alpha=lc["alpha"], lora_dropout=lc["dropout"],
                            target_modules=rf"^(?!.*{re.escape(self.family.vision_prefix)}).*\.({targets})$")
        return get_peft_model(model, config)

    # ------------------------------------------------------------------ log-probs
    def _logp(self, model, batch: dict, grad: bool, temperature: float | None = None):
        """(log-probs of the targets, entropy or None) ``[b, K]`` at the sampling temperature."""
        ctx = torch.enable_grad() if grad else torch.no_grad()
        with ctx:
            logits = model(**batch["inputs"]).logits  # [b, K, V]
            if "rows" in batch:  # shared prompts: [groups, G * S, V] -> one row of S per completion
                logits = logits.reshape(-1, batch["slot"], logits.shape[-1])[batch["rows"]]
            t = temperature or self.rollout_cfg["temperature"]
            if not grad:
                return grpo.token_logprobs(logits, batch["targets"], t), None
            return grpo.token_logprobs(logits, batch["targets"], t, entropy=True)

    def _batches(self, items: list[TrainItem], shared: bool = True) -> list[dict]:
        mbs = self.cfg["micro_batch_size"]
        chunks = [items[i:i + mbs] for i in range(0, len(items), mbs)]
        if len(chunks) != self.n_micro:
            raise ValueError(f"rank {self.rank} got {len(items)} items = {len(chunks)} micro-batches, expected "
                             f"{self.n_micro}; every step must give each rank the same number of completions")
        return [self._collate(c, shared) for c in chunks]

    def _collate(self, items: list[TrainItem], shared: bool) -> dict:
        """Model inputs for one micro-batch; completions of one prompt share its forward pass when
        ``learner.prefix_sharing`` is on and the model exposes its rotary index (Qwen2/2.5-VL)."""
        vision = self.family.vision_inputs(self.processor)
        rope = self._rope_index() if shared and self.cfg["prefix_sharing"] else None
        if rope is None:
            return collate(items, vision, self.pad_id, self.banned, self.image_token_id)
        dtype = torch.bfloat16 if self.cfg["dtype"] == "bf16" else torch.float32
        return collate_shared(items, vision, self.pad_id, self.banned, self.image_token_id, rope, dtype)

    def _rope_index(self):
        """``(ids, mm_token_type_ids, image_grid_thw) -> [3, 1, P]`` rotary positions, or None."""
        model = self.engine.module
        model = model.get_base_model() if self.lora else model
        return self.family.rope_index(model) if self.family.rope_index else None

    def logprobs(self, items: list[TrainItem]) -> list[list[float]]:
        """The current policy's log-prob of every completion token (no update; for checks)."""
        mbs = self.cfg["micro_batch_size"]
        out = []
        for i in range(0, len(items), mbs):
            chunk = items[i:i + mbs]
            b = self._collate(chunk, shared=True)
            logp, _ = self._logp(self.engine, b, grad=False)
            for j, it in enumerate(chunk):
                start = b["offsets"][j]
                out.append(logp[j, start:start + len(it.completion_token_ids)].tolist())
        return out

    # ------------------------------------------------------------------ training
    def train_step(self, items: list[TrainItem]) -> dict:
        """One GRPO step on this rank's items (``num_iterations`` optimizer steps).

        ``learner.off_policy`` chooses the ratio's anchor: ``none``, the policy's own log-probs
        before the update (on-policy; an old-log-prob pass only when ``num_iterations`` > 1);
        ``bypass``, the engine's behaviour log-probs (no extra pass; the ratio corrects both
        staleness and engine/learner mismatch, dual-clipped at ``is_cap``); ``decoupled``, a
        recomputed proximal policy with truncated importance weights to the engine's (AReaL)."""
        import torch.distributed as dist
        batches = self._batches(items)
        counts = torch.tensor([sum(float(b["mask"].sum()) for b in batches), float(len(items))], dtype=torch.float64)
        dist.all_reduce(counts)
        g_tokens, g_seqs = float(counts[0]), int(counts[1])
        refs = [self._logp(self.ref, b, grad=False)[0] if self.ref is not None else None for b in batches]
        mu, mode, cap = self.cfg["num_iterations"], self.cfg["off_policy"], float(self.cfg["is_cap"])
        recompute = mode == "decoupled" or (mode == "none" and mu > 1)
        olds = [self._logp(self.engine, b, grad=False)[0] for b in batches] if recompute else [None] * len(batches)
        norm = self.cfg["loss_norm"] or self.rollout_cfg["max_new_tokens"]
        sums = {"loss": 0.0, "pg_loss": 0.0, "kl_loss": 0.0}
        tok = {"kl": 0.0, "clip_low_frac": 0.0, "clip_high_frac": 0.0, "ratio_mean": 0.0, "entropy": 0.0,
               "engine_logp_abs_diff": 0.0, "dual_clip_frac": 0.0, "is_mean": 0.0, "is_guarded_frac": 0.0,
               "mismatch_kl": 0.0}
        lm = torch.tensor([[b.get("lm_tokens", 0), b.get("lm_tokens_unshared", 0), b["inputs"]["input_ids"].numel()]
                           for b in batches], dtype=torch.float64).sum(0)  # language-model tokens per forward
        dist.all_reduce(lm)
        n_tok, grad_norms, is_max = 0.0, [], 0.0
        skipped = 0
        for it in range(mu):
            own_norm, bad = None, False  # bad: a non-finite loss on this rank
            for k, (b, ref, old) in enumerate(zip(batches, refs, olds)):
                logp, ent = self._logp(self.engine, b, grad=True)
                anchor, w, wm = self._anchor(mode, self.cfg["is_guard"], logp, old, b, cap)
                loss, m = grpo.policy_loss(
                    logp, anchor, ref, b["advantages"], b["mask"], self.cfg["clip_low"], self.cfg["clip_high"],
                    self.cfg["beta"], self.cfg["loss_agg"], norm=norm, global_tokens=g_tokens, global_seqs=g_seqs,
                    is_weight=w, dual_clip=cap if mode != "none" else None)
                if not torch.isfinite(loss):  # keep the graph and the step count, send no gradient
                    bad, loss = True, (logp * 0.0).sum()
                # DeepSpeed averages gradients over ranks; the loss is already this shard's share of
                # the whole-batch loss, so undo the average and skip its 1/GAS scaling
                self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
                boundary = k == len(batches) - 1  # the accumulation boundary: this step() updates
                if boundary:
                    own_norm = self._grad_norm() if self.cfg["zero_stage"] == 0 else None
                    # the optimizer skips the update if the loss or any gradient is non-finite on any rank
                    self.optimizer_core.skip_next = bad
                self.engine.step()
                if boundary:
                    skipped += int(self._update_skipped())
                if it == 0:
                    n = float(b["mask"].sum())
                    n_tok += n
                    for key in ("kl", "clip_low_frac", "clip_high_frac", "ratio_mean", "dual_clip_frac"):
                        tok[key] += m[key] * n
                    for key in ("is_mean", "is_guarded_frac", "mismatch_kl"):
                        tok[key] += wm[key] * n
                    is_max = max(is_max, wm["is_max"])
                    tok["entropy"] += float((ent * b["mask"]).sum())
                    tok["engine_logp_abs_diff"] += self._engine_diff(b, logp)
                    for key in ("pg_loss", "kl_loss"):
                        sums[key] += m[key]
                    sums["loss"] += float(loss.detach())
            gn = self.engine.get_global_grad_norm()
            gn = gn if gn is not None else own_norm
            grad_norms.append(float(gn) if gn is not None else float("nan"))
        self.steps_done += 1
        vec = torch.tensor([sums["loss"], sums["pg_loss"], sums["kl_loss"], n_tok] + [tok[k] for k in tok], dtype=torch.float64)
        dist.all_reduce(vec)
        top = torch.tensor([is_max], dtype=torch.float64)
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
        total_tok = max(float(vec[3]), 1.0)
        out = {"loss": float(vec[0]), "pg_loss": float(vec[1]), "kl_loss": float(vec[2]), "tokens": float(vec[3])}
        out.update({k: float(vec[4 + i]) / total_tok for i, k in enumerate(tok)})
        for key in ("is_mean", "is_guarded_frac", "mismatch_kl", "dual_clip_frac"):
            out[f"offpolicy/{key}"] = out.pop(key)
        if lm[1] > 0:  # prompt sharing: tokens one forward computes, against the same batch unshared
            out.update({"learner/lm_tokens": float(lm[0]), "learner/lm_tokens_unshared": float(lm[1]),
                        "learner/lm_tokens_padded": float(lm[2])})
        out.update({"offpolicy/is_max": float(top[0]), "grad_norm": grad_norms[-1],
                    "lr": self.scheduler.get_last_lr()[0], "items": g_seqs, "skipped_updates": skipped})
        return out

    @staticmethod
    def _anchor(mode: str, guard: str, logp: torch.Tensor, old, b: dict, cap: float):
        """(ratio anchor, per-token IS weight or None, IS metrics) for one micro-batch; see train_step."""
        behaviour, mask = b["behaviour"], b["mask"]
        if mode == "decoupled":
            w, wm = grpo.importance_weights(old, behaviour, mask, cap, guard)
            return old, w, wm
        # bypass and none: the weights the engine's samples carry under the current policy
        w, wm = grpo.importance_weights(logp.detach(), behaviour, mask, cap, guard)
        if mode == "none":
            return (old if old is not None else logp.detach()), None, wm
        # bypass: the ratio itself is the IS weight; the mask variant also drops tokens outside [1/cap, cap]
        return behaviour, ((w > 0).float() if guard == "mask" else None), wm

    def _update_skipped(self) -> bool:
        """Whether the step just taken left the weights alone: our optimizer refused it, or DeepSpeed's
        ZeRO 1/2 optimizer saw the non-finite gradients first (then the LR schedule is advanced here,
        so that it counts steps the same way in both cases)."""
        if self.optimizer_core.last_skipped:
            return True
        if not self.engine.was_step_applied():
            # torch warns when the first scheduler step comes before any optimizer step, because
            # that usually means the order is wrong and the schedule's first value is lost. Here it
            # is deliberate: the update was refused, and the schedule counts attempted updates.
            import warnings
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                self.scheduler.step()
            return True
        return False

    def _grad_norm(self) -> float:
        """L2 norm of the (already all-reduced) gradients; DeepSpeed records it only under ZeRO."""
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0

    # ------------------------------------------------------------------ supervised warm start
    def _sft_item(self, p) -> TrainItem:
        """Prompt ids exactly as the engine would build them, plus the target answer's ids."""
        from data.prompts import prompt_inputs, sft_answer
        from models import answer_frame, coords_of
        ids = prompt_inputs(self.processor, p.question, p.images, p.task)["input_ids"][0].tolist()
        size = p.image_sizes[0] if p.image_sizes else (1, 1)
        coords = coords_of(self.family, self.model_cfg.get("coords", "auto"))
        in_size = answer_frame(coords, self.processor.image_processor, *size) if p.image_sizes else (1, 1)
        tok = self.processor.tokenizer
        target = tok(sft_answer(p.task, p.question, p.solution, size, in_size), add_special_tokens=False)["input_ids"]
        return TrainItem((p.id, 0), ids, target + [tok.convert_tokens_to_ids("<|im_end|>")], p.images, 0.0, [])

    def sft_step(self, prompts: list) -> dict:
        """One supervised step: token-mean cross-entropy of the target answers (all ranks)."""
        import torch.distributed as dist
        batches = self._batches([self._sft_item(p) for p in prompts], shared=False)
        counts = torch.tensor([sum(float(b["mask"].sum()) for b in batches)], dtype=torch.float64)
        dist.all_reduce(counts)
        total, correct = 0.0, 0.0
        for k, b in enumerate(batches):
            logp, _ = self._logp(self.engine, b, grad=True, temperature=1.0)
            loss = -(logp * b["mask"]).sum() / max(float(counts[0]), 1.0)
            self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
            self.engine.step()
            total += float(loss.detach())
            correct += float(((logp.detach() > math.log(0.5)).float() * b["mask"]).sum())
        self.steps_done += 1
        vec = torch.tensor([total, correct], dtype=torch.float64)
        dist.all_reduce(vec)
        return {"sft_loss": float(vec[0]), "token_acc": float(vec[1]) / max(float(counts[0]), 1.0),
                "tokens": float(counts[0]), "lr": self.scheduler.get_last_lr()[0]}

    def _engine_diff(self, b: dict, logp: torch.Tensor) -> float:
        """Sum over masked tokens of |learner log-prob - engine log-prob| (the RL-for-VLM canary)."""
        total = 0.0
        for j, it in enumerate(b["items"]):
            start = b["offsets"][j]
            n = len(it.engine_logprobs)
            if n == 0:
                continue
            eng = torch.tensor(it.engine_logprobs, dtype=torch.float32)
            ours = logp[j, start:start + n].detach()
            m = b["mask"][j, start:start + n]
            total += float(((ours - eng).abs() * m).sum())
        return total

    def param_checksum(self, names: list[str]) -> dict[str, float]:
        """Sum of each matching parameter (gathered under ZeRO-3), for tests."""
        import deepspeed
        out = {}
        for name, p in self.engine.module.named_parameters():
            if any(k in name for k in names):
                ctx = deepspeed.zero.GatheredParameters([p]) if hasattr(p, "ds_id") else contextlib.nullcontext()
                with ctx:
                    out[name] = float(p.detach().float().sum())
        return out

    def pid(self) -> int:
        return os.getpid()

    def cpu_seconds(self) -> float:
        """CPU time this process has used, every thread included (for the utilisation figure)."""
        import time
        return time.process_time()
