"""Train a malignancy classifier on a dataset directory.

    python -m ml train --data DATASET --arch irv2_cam --config small --out runs/irv2_cam
    torchrun --nproc-per-node 4 -m ml train ...          # DDP: same entry point

A run directory holds `config.json`, `checkpoint.pt` (the last epoch, for an exact `--resume`),
`model.safetensors` (the best weights by validation AUROC) and `metrics.jsonl` (one event per
line, flushed as written; the platform tails it for live progress). After training, the
threshold is chosen on validation (Youden J) and frozen in `config.json` for the test sets.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import ml
from ml.data import (
    AugmentSpec,
    BalancedSampler,
    ClipDataset,
    ClipSpec,
    DataError,
    count_labels,
    read_manifest,
)

log = logging.getLogger(__name__)

# What the attention maps are supervised with (TrainConfig.attention_target): the mask type
# codes of ml.data (1 punctate, 2 macro, 3 rim).
ATTENTION_TARGETS: dict[str, tuple[int, ...]] = {"calcifications": (1, 2, 3), "punctate": (1,)}

Progress = Callable[[dict], None]


@dataclass
class TrainConfig:
    arch: str = "irv2_cam"  # ml.models.MODEL_NAMES
    preset: str = "small"  # model size and the training defaults in PRESETS
    frames: int = 16  # frames sampled per sweep (3D models; 2D models take the key frame)
    size: int = 64  # model input side in pixels (square)
    roi: bool = True  # crop to the annotated nodule (union box over the sweep) when present
    roi_margin: float = 0.25  # context kept around the nodule box, fraction of its side
    roi_side: int = 0  # > 0: crop a fixed side of stored-clip pixels around the nodule instead
    roi_max_side: int = 0  # > 0: cap the nodule crop's side at this many stored-clip pixels
    context_channel: bool = False  # feed the whole (uncapped) nodule crop as a second input
    # channel beside the capped one (ml.data.ClipSpec.context_channel)
    normalise: bool = True  # per-clip intensity standardisation (ml.data.normalise_intensity)
    flip_average: bool = False  # validation, evaluation and inference average the logits of
    # the clip and its left-right mirror (ml.inference.logits_of)
    temporal_views: int = 1  # validation, evaluation and inference average the logits of this
    # many interleaved clips of `frames` frames each (ml.data.ClipSpec.temporal_views)
    augment: bool = True  # ml.data.AugmentSpec defaults during training
    augment_options: dict = field(default_factory=dict)  # AugmentSpec fields to override,
    # e.g. {"crop_scale": [0.75, 1.5]} (JSON on the command line)
    batch_size: int = 8  # per process; the effective batch is x grad_accum x world size
    epochs: int = 20  # upper bound; early stopping may end sooner
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 0.05  # AdamW, on weights only (not norms or biases), as nanoGPT
    warmup_epochs: float = 1.0  # linear warm-up, then cosine decay to min_lr_ratio x lr
    min_lr_ratio: float = 0.01  # floor of the cosine schedule
    grad_accum: int = 1  # micro-batches per optimiser step
    grad_clip: float = 1.0  # max gradient norm (0 = off)
    ema_decay: float = 0.0  # exponential moving average of the weights per step (0 = off);
    # validation, best weights and the threshold then use the average
    attention_loss_weight: float = 0.5  # weak supervision of attention by calcification masks;
    # used only when the batch has masks and the model has attention maps
    focus_loss_weight: float = 1.0  # supervision of a focus head (IRv2 `focus_head`) by the
    # punctate marks; used only when the model has one and the batch has masks
    tirads_loss_weight: float = 1.0  # supervision of an auxiliary TI-RADS head (IRv2
    # `tirads_head`) by the readers' feature points; used only when the model has one
    evidence_loss_weight: float = 1.0  # classification loss on the focus evidence's own
    # logit (IRv2 `focus_logit`), so that the evidence separates the classes by itself
    evidence_lr_scale: float = 1.0  # learning rate of that logit's linear layer, as a multiple
    # of `lr`: a layer of a few weights on standardised features (IRv2 `focus_norm`) needs
    # larger steps than the network's to move from zero within one run's few hundred steps
    attention_target: str = "calcifications"  # which marks the maps learn: "calcifications"
    # (punctate, macro and rim) or "punctate" (the malignancy sign only)
    patience: int = 0  # early stop after this many epochs without a better val AUROC (0 = off)
    select_after: float = 0.0  # fraction of the epochs before which no epoch can be the best:
    # on a small val set an early, underfit epoch can win on a lucky AUROC
    keep_snapshots: bool = False  # also save the weights of every eligible epoch as
    # snapshots/epoch-NNN.safetensors, for read-outs of model selection
    # (benchmarks/snapshot_sweep.py)
    min_per_class: int = 2  # refuse to train when train or val has fewer cases of a class
    seed: int = 0  # model init, sampling and augmentation
    num_workers: int = 2  # DataLoader worker processes (0 = load in the main process)
    threads: int = 0  # torch CPU threads per process (0 = torch's default)
    amp: bool = True  # autocast on CUDA. Never on CPU: torch's CPU bf16 conv3d gives wrong
    # weight gradients where a feature map has 2 or more frames but fewer than a kernel spans,
    # though it trains 1.9x faster (benchmarks/cpu_train_step.py, docs/ml-results.md "Ninth
    # round")
    amp_dtype: str = "bf16"  # bf16, or fp16 with a gradient scaler for GPUs without bf16
    channels_last_3d: bool = True  # channels-last memory format for 3D models, CUDA and CPU
    # (on CPU the small preset trains 1.3x faster so, measured in the same places)
    compile: bool = False  # torch.compile the model
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:N
    manifest: str = "manifest.csv"  # relative to the dataset; e.g. folds/loco_C3.csv
    log_every: int = 10  # optimiser steps between "step" events in metrics.jsonl
    model_options: dict = field(default_factory=dict)  # extra create_model keywords, e.g.
    # {"attention": ["A", "B"]} (JSON on the command line)
    members: int = 1  # > 1: a seed ensemble of this many runs (seeds seed, seed + 1, ...),
    # trained side by side and joined (ml.ensemble); the score is the mean of their logits
    gradcam_layer: str = ""  # module Grad-CAM hooks, e.g. "stage_a" ("": the model's default)

    def clip_spec(self, spatial_dims: int) -> ClipSpec:
        return ClipSpec(
            frames=self.frames if spatial_dims == 3 else 1,
            size=(self.size, self.size),
            spatial_dims=spatial_dims,
            roi=self.roi,
            roi_margin=self.roi_margin,
            roi_side=self.roi_side,
            roi_max_side=self.roi_max_side,
            context_channel=self.context_channel,
            normalise=self.normalise,
            flip_average=self.flip_average,
            temporal_views=self.temporal_views if spatial_dims == 3 else 1,
        )


# Training defaults per preset; explicit arguments override them. "small" is tuned to train
# irv2_cam on the synthetic data on 2 CPU cores in under 20 minutes (docs/ml-results.md);
# "paper" is the scale of Qian et al. 2025 for a GPU.
PRESETS: dict[str, dict] = {
    # One intra-op thread plus one loader process: on a 2-core machine shared with other work,
    # a 2-thread OpenMP step waits on preempted threads and runs 5-10x slower (measured).
    # 96 px: a punctate focus must survive the resize of the nodule crop (docs/ml-results.md);
    # crops of 0.75-1.5x the nodule box: another centre's depth and nodule sizes put the same
    # focus at another size in pixels.
    "small": dict(frames=16, size=96, batch_size=8, epochs=30, lr=1e-3, warmup_epochs=1.0,
                  select_after=0.5, attention_loss_weight=1.0, threads=1, num_workers=1,
                  augment_options={"crop_scale": [0.75, 1.5]}),
    "paper": dict(frames=32, size=160, batch_size=16, epochs=60, lr=3e-4, warmup_epochs=3.0,
                  num_workers=8, patience=15),
}


def make_config(preset: str = "small", **overrides) -> TrainConfig:
    """A TrainConfig with the preset's defaults, then `overrides` (None values ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown TrainConfig fields: {', '.join(sorted(unknown))}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    cfg = TrainConfig(preset=preset, **values)
    if cfg.attention_target not in ATTENTION_TARGETS:
        raise ValueError(f"attention_target is one of {', '.join(ATTENTION_TARGETS)}; "
                         f"got {cfg.attention_target!r}")
    if cfg.members < 1:
        raise ValueError(f"members is 1 (one network) or more (a seed ensemble); got {cfg.members}")
    if cfg.temporal_views < 1:
        raise ValueError(f"temporal_views is 1 or more; got {cfg.temporal_views}")
    if cfg.roi_max_side < 0:
        raise ValueError(f"roi_max_side is 0 (no cap) or a side in pixels; got {cfg.roi_max_side}")
    if not cfg.evidence_lr_scale > 0:
        raise ValueError(f"evidence_lr_scale is a positive multiple of lr; got "
                         f"{cfg.evidence_lr_scale}")
    if cfg.roi_side < 0:
        raise ValueError(f"roi_side is 0 (a crop relative to the nodule) or a side in pixels; "
                         f"got {cfg.roi_side}")
    return cfg


def config_from_dict(d: dict) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in d.items() if k in fields})


# --------------------------------------------------------------------------------------------
# Pieces


def build_model(cfg: TrainConfig) -> nn.Module:
    from ml.models import create_model

    options = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.model_options.items()}
    options["in_channels"] = cfg.clip_spec(3).channels
    if cfg.members > 1:
        from ml.models.ensemble import SeedEnsemble

        return SeedEnsemble([create_model(cfg.arch, config=cfg.preset, **options)
                             for _ in range(cfg.members)])
    return create_model(cfg.arch, config=cfg.preset, **options)


def resolved_model_options(model: nn.Module, cfg: TrainConfig) -> dict:
    """`cfg.model_options` completed with every field of the model's architecture config (the
    preset's values included), for architectures that keep one in `model.cfg`."""
    arch = getattr(model, "cfg", None)
    if not dataclasses.is_dataclass(arch):
        return dict(cfg.model_options)
    return {**json.loads(json.dumps(dataclasses.asdict(arch))), **cfg.model_options}


def augment_spec(cfg: TrainConfig) -> AugmentSpec:
    """The run's training augmentation: AugmentSpec defaults with `augment_options` on top."""
    if not cfg.augment:
        return _NO_AUGMENT
    fields = {f.name for f in dataclasses.fields(AugmentSpec)}
    unknown = set(cfg.augment_options) - fields
    if unknown:
        raise ValueError(f"unknown augment options {sorted(unknown)}; options are: "
                         f"{', '.join(sorted(fields))}")
    return AugmentSpec(**{k: tuple(v) if isinstance(v, list) else v
                          for k, v in cfg.augment_options.items()})


def attention_loss(model: nn.Module, mask: torch.Tensor, has_mask: torch.Tensor,
                   target: str = "calcifications") -> torch.Tensor:
    from ml.models import attention_supervision_loss

    return attention_supervision_loss(model.attention_maps, mask, has_mask,
                                      codes=ATTENTION_TARGETS[target])


def check_splits(records, min_per_class: int) -> dict:
    """Refuse, with a message a person can act on, data that cannot train a classifier."""
    counts = count_labels(records)
    for split in ("train", "val"):
        c = counts.get(split, {"n": 0, "malignant": 0, "benign": 0})
        for cls in ("benign", "malignant"):
            if c[cls] < min_per_class:
                raise DataError(
                    f"split {split!r} has {c[cls]} {cls} case(s) (benign {c['benign']}, "
                    f"malignant {c['malignant']}); training needs at least {min_per_class} of "
                    f"each class in train and in val. Add cases or rebuild the split."
                )
    return counts


def check_tirads_readings(model: nn.Module, cfg: TrainConfig, records) -> None:
    """A TI-RADS head with nothing to learn from is a mistake, not a run: refuse it."""
    if getattr(model, "tirads_fc", None) is None or cfg.tirads_loss_weight <= 0:
        return
    if not any(v is not None for r in records if r.split == "train"
               for v in r.tirads_points.values()):
        raise DataError(
            "the TI-RADS head is on, but no training case has a TI-RADS reading (the "
            "manifest's tirads_<feature> columns are empty). Export a snapshot whose accepted "
            "annotations record TI-RADS, rebuild the dataset with this version of "
            "`ml dataset`, or turn the head off.")


def lr_lambda(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up from 1/warmup to 1, then cosine decay to min_ratio."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    evidence_fc = getattr(model, "evidence_fc", None)
    own_rate = evidence_fc is not None and cfg.evidence_lr_scale != 1.0
    separate = {id(p) for p in evidence_fc.parameters()} if own_rate else set()
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in separate]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if own_rate:  # a third group only then: the checkpoints of other runs resume unchanged
        groups.append({"params": list(evidence_fc.parameters()), "weight_decay": 0.0,
                       "lr": cfg.lr * cfg.evidence_lr_scale})
    # on a GPU one fused kernel updates every parameter (hundreds of small tensors otherwise,
    # a launch-bound tail on each step); the CPU keeps the default implementation
    every = [p for g in groups for p in g["params"]]
    fused = bool(every) and all(p.is_cuda for p in every)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), fused=fused or None)


def auroc(labels, scores) -> float:
    """Mann-Whitney AUROC (ties count half); NaN when a class is missing."""
    from scipy.stats import rankdata

    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    n1, n0 = int((y == 1).sum()), int((y == 0).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def youden_threshold(labels, scores) -> float:
    from ml.stats import youden_threshold as stats_youden

    return float(stats_youden(np.asarray(labels), np.asarray(scores)).threshold)


class MetricsLog:
    """Append JSON lines to metrics.jsonl, flushed per line; rank 0 only."""

    def __init__(self, path: Path | None, progress: Progress | None = None):
        self.path, self.progress = path, progress

    def __call__(self, event: str, **data) -> None:
        record = {"event": event, "time": round(time.time(), 3), **data}
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
        if self.progress is not None:
            self.progress(record)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(path, lambda p: save_file(state, str(p), metadata={"format": "pt"}))


def load_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)))


def _rng_state() -> dict:
    # Plain types and tensors only, so the checkpoint loads with torch.load(weights_only=True).
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def code_version() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{ml.__version__}+{sha}" if sha else ml.__version__


@dataclass
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _worker_init(worker_id: int) -> None:
    # Loader processes do small per-clip work: one thread each, or they fight the trainer.
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def init_distributed() -> Distributed:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not torch_dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch_dist.init_process_group(backend=backend)
    return Distributed(torch_dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), world)


def resolve_device(name: str, dist: Distributed) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and dist.enabled:
        name = f"cuda:{dist.local_rank}"
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


# --------------------------------------------------------------------------------------------
# Loops


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The dtype training autocasts to on `device`, or None for fp32 (always on CPU)."""
    if not cfg.amp or device.type != "cuda":
        return None
    return torch.float16 if cfg.amp_dtype == "fp16" else torch.bfloat16


def _autocast(cfg: TrainConfig, device: torch.device):
    dtype = autocast_dtype(cfg, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _to_device(batch: dict, device: torch.device, channels_last: bool) -> dict:
    out = dict(batch)
    x = batch["clip"].to(device, non_blocking=True)
    if channels_last and x.ndim == 5:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    out["clip"] = x
    out["label"] = batch["label"].to(device, non_blocking=True)
    out["mask"] = batch["mask"].to(device, non_blocking=True)
    out["has_mask"] = batch["has_mask"].to(device, non_blocking=True)
    if "tirads" in batch:
        out["tirads"] = batch["tirads"].to(device, non_blocking=True)
    return out


def train_one_epoch(
    model: nn.Module,
    raw_model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler: torch.amp.GradScaler,
    cfg: TrainConfig,
    device: torch.device,
    epoch: int,
    step: int,
    steps_total: int,
    metrics: MetricsLog,
    show_progress: bool = False,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
) -> tuple[float, int]:
    """One pass over the training loader; returns (mean loss, global optimiser step)."""
    from tqdm import tqdm

    model.train()
    use_att = cfg.attention_loss_weight > 0 and hasattr(raw_model, "attention_maps")
    channels_last = cfg.channels_last_3d
    total, count = 0.0, 0
    n_micro = len(loader)
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
               disable=not show_progress)
    for i, batch in enumerate(bar):
        batch = _to_device(batch, device, channels_last)
        last_micro = (i + 1) % cfg.grad_accum == 0 or i + 1 == n_micro
        sync = model.no_sync() if (hasattr(model, "no_sync") and not last_micro) else (
            contextlib.nullcontext())
        with sync:
            with _autocast(cfg, device):
                logits = model(batch["clip"])  # (B, 1)
                loss = F.binary_cross_entropy_with_logits(
                    logits[:, 0].float(), batch["label"].float())
                att = None
                if use_att and bool(batch["has_mask"].any()) and raw_model.attention_maps:
                    att = attention_loss(raw_model, batch["mask"], batch["has_mask"],
                                         cfg.attention_target)
                    loss = loss + cfg.attention_loss_weight * att
                focus = getattr(raw_model, "focus_logits", None)
                if (focus is not None and cfg.focus_loss_weight > 0
                        and bool(batch["has_mask"].any())):
                    from ml.models import focus_loss

                    loss = loss + cfg.focus_loss_weight * focus_loss(
                        focus, batch["mask"], batch["has_mask"])
                tirads = getattr(raw_model, "tirads_logits", None)
                if tirads is not None and cfg.tirads_loss_weight > 0 and "tirads" in batch:
                    from ml.models import tirads_loss

                    loss = loss + cfg.tirads_loss_weight * tirads_loss(tirads, batch["tirads"])
                evidence = getattr(raw_model, "evidence_logits", None)
                if evidence is not None and cfg.evidence_loss_weight > 0:
                    loss = loss + cfg.evidence_loss_weight * F.binary_cross_entropy_with_logits(
                        evidence[:, 0].float(), batch["label"].float())
            scaler.scale(loss / cfg.grad_accum).backward()
        total += float(loss.detach()) * len(batch["label"])
        count += len(batch["label"])
        if not last_micro:
            continue
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if ema is not None:
            ema.update_parameters(raw_model)
        step += 1
        bar.set_postfix(loss=f"{total / count:.4f}")
        if step % cfg.log_every == 0 or step == steps_total:
            metrics("step", epoch=epoch + 1, step=step, steps_total=steps_total,
                    loss=round(float(loss.detach()), 6),
                    attention_loss=None if att is None else round(float(att.detach()), 6),
                    lr=scheduler.get_last_lr()[0])
    return total / max(count, 1), step


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    cfg: TrainConfig | None = None,
    dist: Distributed | None = None,
) -> dict:
    """Probabilities for every case of the loader; `loss` (BCE) and `auroc` over them.

    Under DDP each rank scores its shard and the results are gathered on every rank.
    """
    from ml.inference import logits_of

    model.eval()
    cfg = cfg or TrainConfig(amp=False)
    channels_last = cfg.channels_last_3d
    case_ids, labels, logits = [], [], []
    for batch in loader:
        b = _to_device(batch, device, channels_last)
        with _autocast(cfg, device):
            # scored as evaluation and inference score: the threshold is frozen on this
            out = logits_of(model, b["clip"], cfg.flip_average, cfg.temporal_views)
        logits += out[:, 0].float().cpu().tolist()
        labels += batch["label"].tolist()
        case_ids += list(batch["case_id"])
    if dist is not None and dist.enabled:
        parts = [None] * dist.world_size
        torch_dist.all_gather_object(parts, (case_ids, labels, logits))
        case_ids = [c for p in parts for c in p[0]]
        labels = [c for p in parts for c in p[1]]
        logits = [c for p in parts for c in p[2]]
    z = torch.tensor(logits, dtype=torch.float64)
    y = torch.tensor(labels, dtype=torch.float64)
    loss = float(F.binary_cross_entropy_with_logits(z, y)) if len(y) else float("nan")
    probs = torch.sigmoid(z).numpy()
    return {"case_ids": case_ids, "labels": np.asarray(labels, dtype=int), "probs": probs,
            "loss": loss, "auroc": auroc(labels, probs)}


# --------------------------------------------------------------------------------------------
# The run


def _better(auc: float, loss: float, best: dict) -> bool:
    # Validation sets are small and AUROC saturates; the lower loss breaks ties.
    if math.isnan(auc):
        return best["epoch"] < 0
    if auc > best["auroc"] + 1e-9:
        return True
    return abs(auc - best["auroc"]) <= 1e-9 and loss < best["loss"]


def train(
    cfg: TrainConfig,
    data_root: str | Path,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    show_progress: bool = False,
) -> dict:
    """Train (or resume) a run; returns the summary also written as the "done" event.

    `progress` receives every metrics event (a dict) as it is logged, on rank 0.
    With `resume=True` the run continues from `checkpoint.pt` with the configuration stored in
    `config.json` (then `cfg` is ignored), reproducing the uninterrupted run exactly.
    """
    if cfg.members > 1:
        raise ValueError("a seed ensemble trains its members side by side: use "
                         "ml.ensemble.train_ensemble (python -m ml train --members N)")
    dist = init_distributed()
    run_dir, data_root = Path(run_dir), Path(data_root).resolve()
    ckpt_path = run_dir / "checkpoint.pt"
    if resume:
        if not ckpt_path.is_file():
            raise DataError(f"nothing to resume: {ckpt_path} does not exist")
        stored = json.loads((run_dir / "config.json").read_text())
        cfg = config_from_dict(stored["train"])
    elif ckpt_path.is_file():
        raise DataError(f"{run_dir} already holds a run: pass --resume to continue it, or "
                        f"choose another output directory")
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:  # a fresh run starts a fresh log (an earlier attempt may have failed)
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    metrics = MetricsLog(run_dir / "metrics.jsonl" if dist.is_main else None, progress)
    try:
        return _train(cfg, data_root, run_dir, ckpt_path, resume, dist, metrics, show_progress)
    except BaseException as e:
        metrics("error", message=str(e) or type(e).__name__, type=type(e).__name__)
        raise
    finally:
        if dist.enabled and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def _train(cfg, data_root, run_dir, ckpt_path, resume, dist, metrics, show_progress) -> dict:
    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device, dist)
    records = read_manifest(data_root, cfg.manifest)
    counts = check_splits(records, cfg.min_per_class)

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    raw_model = build_model(cfg).to(device)
    check_tirads_readings(raw_model, cfg, records)
    spatial_dims = int(getattr(raw_model, "spatial_dims", 3))
    spec = cfg.clip_spec(spatial_dims)
    # The architecture, resolved, goes into config.json: a later change to a preset's widths,
    # blocks or pooling must not change what these weights load into.
    cfg = dataclasses.replace(cfg, model_options=resolved_model_options(raw_model, cfg))
    first = next(r for r in records if r.split == "train")
    clip_hw = np.load((data_root / cfg.manifest).parent / first.clip, mmap_mode="r").shape[1:]
    spec = dataclasses.replace(spec, clip_size=tuple(int(v) for v in clip_hw))
    if cfg.channels_last_3d and spatial_dims == 3:
        raw_model = raw_model.to(memory_format=torch.channels_last_3d)
    model = raw_model
    if dist.enabled:
        model = nn.parallel.DistributedDataParallel(
            raw_model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)

    augment = augment_spec(cfg)
    train_ds = ClipDataset(data_root, "train", spec, train=True, augment=augment,
                           seed=cfg.seed, manifest=cfg.manifest, records=records)
    val_ds = ClipDataset(data_root, "val", spec, manifest=cfg.manifest, records=records)
    sampler = BalancedSampler(train_ds.labels, seed=cfg.seed, rank=dist.rank,
                              world_size=dist.world_size)
    # The loaders draw their worker seeds from their own generator, never the global RNG
    # (dropout's), which persistent workers would otherwise leave out of step after a resume.
    loader_kw = dict(num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                     persistent_workers=cfg.num_workers > 0, worker_init_fn=_worker_init,
                     generator=torch.Generator().manual_seed(cfg.seed))
    if cfg.num_workers > 0:
        loader_kw["prefetch_factor"] = 2
        # Spawned, not forked: a fork copies the host's thread pools (OpenCV's, a web worker's)
        # without their threads, and a loader process forked from a busy host can deadlock.
        # The dataset pickles cheaply: it opens its memory-mapped clips lazily.
        loader_kw["multiprocessing_context"] = "spawn"
    train_loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler,
                              drop_last=len(sampler) > cfg.batch_size, **loader_kw)
    val_indices = list(range(dist.rank, len(val_ds), dist.world_size))
    val_loader = DataLoader(torch.utils.data.Subset(val_ds, val_indices),
                            batch_size=cfg.batch_size, **loader_kw)

    optimizer = make_optimizer(raw_model, cfg)
    ema = None
    if cfg.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(raw_model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay),
                            use_buffers=True)
    eval_model = raw_model if ema is None else ema.module
    steps_per_epoch = max(1, math.ceil(len(train_loader) / cfg.grad_accum))
    steps_total = steps_per_epoch * cfg.epochs
    warmup = max(1, round(cfg.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, warmup, steps_total, cfg.min_lr_ratio))
    scaler = torch.amp.GradScaler(
        "cuda", enabled=cfg.amp and cfg.amp_dtype == "fp16" and device.type == "cuda")

    start_epoch, step = 0, 0
    best = {"epoch": -1, "auroc": -math.inf, "loss": math.inf, "stale": 0}
    if resume:
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        raw_model.load_state_dict(ckpt["model"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        sampler.load_state_dict(ckpt["sampler"])
        start_epoch, step, best = ckpt["epoch"], ckpt["step"], ckpt["best"]
        _set_rng_state(ckpt["rng"])
        log.info("resuming %s after epoch %d", run_dir, start_epoch)
    config = {
        "train": asdict(cfg),
        "spec": asdict(spec),
        "data_root": str(data_root),
        "counts": counts,
        "world_size": dist.world_size,
        "code_version": code_version(),
        "threshold": None,
    }
    if dist.is_main:
        _atomic_write(run_dir / "config.json",
                      lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    metrics("start", arch=cfg.arch, preset=cfg.preset, epochs=cfg.epochs,
            resumed_from_epoch=start_epoch if resume else None, steps_total=steps_total,
            counts=counts, device=str(device), world_size=dist.world_size,
            autocast=str(autocast_dtype(cfg, device) or "fp32").removeprefix("torch."))

    stopped_early = False
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        train_loss, step = train_one_epoch(
            model, raw_model, train_loader, optimizer, scheduler, scaler, cfg, device, epoch,
            step, steps_total, metrics, show_progress and dist.is_main, ema)
        val = evaluate(eval_model, val_loader, device, cfg, dist)
        eligible = epoch + 1 > cfg.select_after * cfg.epochs or epoch + 1 == cfg.epochs
        improved = eligible and _better(val["auroc"], val["loss"], best)
        if improved:
            best.update(epoch=epoch, auroc=val["auroc"], loss=val["loss"], stale=0)
            if dist.is_main:
                save_weights(eval_model, run_dir / "model.safetensors")
        elif eligible:
            best["stale"] += 1
        if eligible and cfg.keep_snapshots and dist.is_main:
            (run_dir / "snapshots").mkdir(exist_ok=True)
            save_weights(eval_model, run_dir / "snapshots" / f"epoch-{epoch + 1:03d}.safetensors")
        if dist.is_main:
            state = {
                "model": raw_model.state_dict(),
                "ema": None if ema is None else ema.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "sampler": {"seed": sampler.seed, "epoch": epoch + 1},
                "epoch": epoch + 1,
                "step": step,
                "best": dict(best),
                "rng": _rng_state(),
                "config": asdict(cfg),
            }
            _atomic_write(ckpt_path, lambda p, s=state: torch.save(s, p))
        metrics("epoch", epoch=epoch + 1, epochs=cfg.epochs, train_loss=round(train_loss, 6),
                val_loss=round(val["loss"], 6), val_auroc=_json_float(val["auroc"]),
                lr=scheduler.get_last_lr()[0], time=round(time.perf_counter() - t0, 2),
                best_epoch=best["epoch"] + 1, best_val_auroc=_json_float(best["auroc"]),
                improved=improved)
        log.info("epoch %d/%d train_loss %.4f val_loss %.4f val_auroc %.4f (%.0fs)",
                 epoch + 1, cfg.epochs, train_loss, val["loss"], val["auroc"],
                 time.perf_counter() - t0)
        if cfg.patience and best["stale"] >= cfg.patience:
            stopped_early = True
            log.info("no better val AUROC for %d epochs: stopping", cfg.patience)
            break

    # Freeze the operating point on validation with the best weights.
    if dist.enabled:
        torch_dist.barrier()
    load_weights(eval_model, run_dir / "model.safetensors")
    val = evaluate(eval_model, val_loader, device, cfg, dist)
    threshold = youden_threshold(val["labels"], val["probs"])
    config.update(threshold=threshold, best_epoch=best["epoch"] + 1,
                  best_val_auroc=_json_float(best["auroc"]))
    summary = {"best_epoch": best["epoch"] + 1, "best_val_auroc": _json_float(best["auroc"]),
               "threshold": threshold, "stopped_early": stopped_early,
               "seconds": round(time.perf_counter() - t_start, 1)}
    if dist.is_main:
        _atomic_write(run_dir / "config.json",
                      lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    metrics("done", **summary)
    return summary


_NO_AUGMENT = AugmentSpec(time_span=(1.0, 1.0), time_reverse=0.0, hflip=0.0,
                          crop_scale=(1.0, 1.0), crop_shift=0.0, rotate_deg=0.0, gamma=(1.0, 1.0),
                          contrast=(1.0, 1.0), brightness=0.0, speckle=0.0)


def _json_float(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


# --------------------------------------------------------------------------------------------
# CLI


def _json_object(text: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`--data`, `--out`, `--config`, `--resume` and one flag per TrainConfig field."""
    parser.add_argument("--data", required=True, help="dataset directory")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--config", default="small", choices=sorted(PRESETS),
                        help="preset: model size and training defaults")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "preset":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=None)
        else:
            kind = {"int": int, "float": float, "str": str, "dict": _json_object}[str(f.type)]
            parser.add_argument(flag, dest=f.name, type=kind, default=None,
                                help=_preset_defaults_help(f))
    return parser


def _preset_defaults_help(f: dataclasses.Field) -> str:
    """'small: 16, paper: 32': what the flag defaults to under each preset."""
    base = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if base == "" or base is None:
        base = "unset"
    values = {name: preset.get(f.name, base) for name, preset in sorted(PRESETS.items())}
    if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) == 1:
        return f"default {base}"
    return "default " + ", ".join(f"{name}: {v}" for name, v in values.items())


def main(argv: list[str] | None = None) -> int:
    parser = add_train_arguments(argparse.ArgumentParser(prog="python -m ml train",
                                                         description=__doc__.split("\n")[0]))
    args = parser.parse_args(argv)
    return run_from_args(args)


def run_from_args(args: argparse.Namespace) -> int:
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(TrainConfig)
                 if f.name != "preset"}
    cfg = make_config(args.config, **overrides)
    if cfg.members > 1:
        from ml.ensemble import train_ensemble

        summary = train_ensemble(cfg, args.data, args.out)
    else:
        summary = train(cfg, args.data, args.out, resume=args.resume, show_progress=True)
    sys.stdout.write(json.dumps(summary) + "\n")  # the result on stdout; logs go to stderr
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    raise SystemExit(main())
