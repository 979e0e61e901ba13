"""Throughput, FLOPs and memory of the architectures: `python -m ml bench`.

For every architecture, dtype (fp32, or bf16 autocast), eager or `torch.compile`, and batch size:

- forward GFLOPs per clip, counted by `torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per
  multiply-add; convs, matmuls) on the meta device, so counting never allocates a real clip;
- training clips/s (forward + backward + AdamW step) and inference clips/s (`inference_mode`),
  timed after warm-up steps (which also absorb compilation), with `torch.cuda.synchronize`;
- achieved TFLOP/s: training counts 3x the forward FLOPs (backward ~ 2x forward);
- peak memory above the resting model (weights already resident): on CUDA
  `max_memory_allocated` minus `memory_allocated` before; on CPU the process's peak RSS
  (VmHWM, reset through /proc/self/clear_refs) minus its RSS before, falling back to the
  `ru_maxrss` delta where clear_refs cannot be written (then only growth of the high-water mark
  shows). tracemalloc is not used: it does not see tensor memory.
- On CUDA, channels-last memory format (`channels_last_3d` for clips), cuDNN autotuning on.

Also the latency of "inference + 3D Grad-CAM of one 64-frame video" for irv2_cam, the
explanation the reading room waits for.

Writes `bench-<cpu|cuda>-<device name>-<preset>.json` and `.md` under `out_dir` after every
row, so a run cut short by a time limit still leaves its results.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import gc
import json
import logging
import os
import platform
import re
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ml.models import create_model, parameter_count

log = logging.getLogger(__name__)

DEFAULT_ARCHS = ("irv2_cam", "irv2", "r3d_18", "r2plus1d_18", "densenet121_3d", "x3d_s")
DTYPES = {"fp32": None, "bf16": torch.bfloat16}
# Qian et al., Cancer Imaging 2025: GPU figures for 3D models on their clips
PAPER_ANCHORS = {
    "r3d_18_gflops_per_clip": 651,
    "irv2_cam_eager_gflops_per_clip": 303,
    "irv2_cam_params_m": 72,
}
REFERENCE_CLIP = (32, 224, 224)  # 651 GFLOPs is torchvision r3d_18 on 32 x 224 x 224, RGB


# --------------------------------------------------------------------------- device facts


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "unknown"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kb(key: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def _malloc_trim() -> None:
    """Hand freed heap back to the OS (glibc), so that memory an earlier row freed but malloc
    kept is not silently reused by the next row without raising its RSS peak."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory (MiB) above what was allocated at `start()`; see the module docstring."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            self.method = "cuda.max_memory_allocated - memory_allocated before"
        elif self._reset_hwm():
            self.method = "VmHWM (reset via /proc/self/clear_refs) - VmRSS before"
        else:
            self.method = "ru_maxrss delta (high-water mark growth only)"

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return _status_kb("VmHWM") is not None
        except OSError:
            return False

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self.method.startswith("VmHWM"):
            _malloc_trim()
            self._reset_hwm()
            self._base = _status_kb("VmRSS") * 1024
        else:
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("VmHWM"):
            peak = _status_kb("VmHWM") * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return round(max(peak - self._base, 0) / 2**20, 1)


# --------------------------------------------------------------------------- counting


def input_shape(spatial_dims: int, batch: int, frames: int, size: int, channels: int = 1):
    return (
        (batch, channels, frames, size, size)
        if spatial_dims == 3
        else (batch, channels, size, size)
    )


def count_model(arch: str, preset: str, frames: int, size: int, **kw) -> dict:
    """Parameters and forward FLOPs per clip, on the meta device (no memory, no compute)."""
    with torch.device("meta"):
        model = create_model(arch, config=preset, **kw).eval()
    # outside the device context: its per-op dispatch hook would triple the time
    x = torch.zeros(input_shape(model.spatial_dims, 1, frames, size), device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return {
        "params_m": round(parameter_count(model) / 1e6, 3),
        "gflops_per_clip": round(counter.get_total_flops() / 1e9, 3),
        "spatial_dims": model.spatial_dims,
    }


def paper_reference(archs: Sequence[str]) -> list[dict]:
    """Paper-preset sizes at the study's clip size, for comparison with the anchors."""
    rows = []
    for arch in archs:
        rows.append({"arch": arch, **count_model(arch, "paper", *REFERENCE_CLIP[:2])})
    rows.append(
        {
            "arch": "irv2_cam blocks=(10, 20, 10)",
            **count_model("irv2_cam", "paper", *REFERENCE_CLIP[:2], blocks=(10, 20, 10)),
        }
    )
    return rows


# --------------------------------------------------------------------------- timing


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """Training's own AdamW (fused on a GPU), at a learning rate too small to upset the timing."""
    from ml.train import TrainConfig, make_optimizer

    return make_optimizer(model, TrainConfig(lr=1e-6))


def _train_step(
    runner: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype | None,
) -> Callable[[], None]:
    """One training step on batch x (random labels): forward, BCE, backward, optimiser step."""
    y = torch.randint(0, 2, (x.shape[0], 1), device=device).float()

    def step() -> None:
        with _autocast(device, dtype):
            loss = F.binary_cross_entropy_with_logits(runner(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _timed(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> dict:
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    t1 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    t2 = time.perf_counter()
    return {"warmup_s": round(t1 - t0, 3), "step_s": (t2 - t1) / max(steps, 1)}


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def measure(
    model: nn.Module,
    runner: nn.Module,
    x: torch.Tensor,
    *,
    device: torch.device,
    dtype: torch.dtype | None,
    warmup: int,
    steps: int,
    memory: PeakMemory,
) -> dict:
    """Training and inference speed of `runner` (model or its compiled wrapper) on batch x."""
    opt = _optimizer(model)
    train_step = _train_step(runner, opt, x, device, dtype)

    def infer_step() -> None:
        with torch.inference_mode(), _autocast(device, dtype):
            runner(x)

    model.train()
    memory.start()
    train = _timed(train_step, device, warmup, steps)
    train_mem = memory.peak_mib()
    opt.zero_grad(set_to_none=True)
    opt.state.clear()  # free AdamW's moments before measuring inference memory
    model.eval()
    memory.start()
    infer = _timed(infer_step, device, warmup, steps)
    infer_mem = memory.peak_mib()
    b = x.shape[0]
    return {
        "train_clips_per_s": round(b / train["step_s"], 3),
        "infer_clips_per_s": round(b / infer["step_s"], 3),
        "train_warmup_s": train["warmup_s"],
        "infer_warmup_s": infer["warmup_s"],
        "train_peak_mib": train_mem,
        "infer_peak_mib": infer_mem,
    }


def gradcam_latency(
    *,
    device: torch.device,
    preset: str,
    frames: int,
    size: int,
    dtype_name: str,
    channels_last: bool,
    reps: int,
    memory: PeakMemory,
) -> dict:
    """Seconds for one clip: plain inference, and inference + 3D Grad-CAM (+ attention maps),
    eager and, on a GPU, replayed from a CUDA graph (`ml.gradcam.GraphedGradCAM`), with the
    largest difference between the two heatmaps."""
    from ml.gradcam import GradCAM

    dtype = DTYPES[dtype_name]
    model = create_model("irv2_cam", config=preset).to(device).eval()
    x = torch.rand(input_shape(3, 1, frames, size), device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)

    def infer() -> None:
        with torch.inference_mode(), _autocast(device, dtype):
            model(x)

    def explain() -> None:
        with GradCAM(model) as gc_, _autocast(device, dtype):
            gc_.cam(x)  # includes the copy of heatmap and attention maps to host memory

    plain = _timed(infer, device, 1, reps)
    memory.start()
    cam = _timed(explain, device, 1, reps)
    row = {
        "arch": "irv2_cam",
        "preset": preset,
        "clip": f"{frames}x{size}x{size}",
        "dtype": dtype_name,
        "channels_last": channels_last,
        "inference_s": round(plain["step_s"], 4),
        "latency_s": round(cam["step_s"], 4),
        "peak_mib": memory.peak_mib(),
    }
    # batch norms folded into the convolutions, eager; then, on a GPU, replayed from a CUDA
    # graph without and with the folding
    variants = [("folded", False, True)]
    if device.type == "cuda":
        variants += [("graphed", True, False), ("graphed_folded", True, True)]
    with GradCAM(model) as gc_, _autocast(device, dtype):
        eager_heat = gc_.explain(x)[0]  # what every variant's heatmap is compared with
    for name, graph, fold in variants:
        row.update(_explainer_latency(name, model, x, eager_heat, dtype, reps, memory,
                                      graph, fold))
    return row


def _explainer_latency(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    eager_heat: torch.Tensor,
    dtype: torch.dtype | None,
    reps: int,
    memory: PeakMemory,
    graph: bool,
    fold: bool,
) -> dict:
    """Latency of `ml.gradcam.GraphedGradCAM` (host copies included, as in the eager row) and
    the largest difference of its heatmap from `eager_heat`, as `<name>_...` fields; a
    failure is reported in the row, not raised (the eager figures stand)."""
    from ml.gradcam import GraphedGradCAM

    memory.start()
    try:
        # float16 maps on the graphed path, as the platform's (ml.inference) copies them
        with GraphedGradCAM(model, x, autocast=dtype, graph=graph, fold_norms=fold,
                            maps_dtype=torch.float16 if graph else None) as explainer:

            def run() -> None:
                heat, logits, attention = explainer(x)
                heat.cpu(), logits.cpu(), [a.cpu() for a in attention]

            timed = _timed(run, x.device, 1, reps)
            heat = explainer(x)[0]
            capture_s = explainer.capture_s
    except Exception as exc:  # noqa: BLE001 - a diagnostic, never lose the eager figures
        log.warning("Grad-CAM variant %s failed: %s", name, exc)
        return {f"{name}_status": f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    row = {
        f"{name}_latency_s": round(timed["step_s"], 4),
        f"{name}_peak_mib": memory.peak_mib(),
        f"{name}_max_abs_diff": float((heat.float() - eager_heat).abs().max()),
    }
    if capture_s is not None:
        row[f"{name}_capture_s"] = round(capture_s, 2)
    return row


def profile_training(
    arch: str,
    *,
    device: torch.device,
    preset: str,
    frames: int,
    size: int,
    batch: int,
    dtype_name: str,
    channels_last: bool,
    steps: int = 3,
    top: int = 25,
    built: tuple[nn.Module, nn.Module] | None = None,
) -> tuple[dict, str]:
    """Where a training step's time goes: `torch.profiler` over `steps` eager steps, or over
    the steps of `built`'s (model, runner), e.g. a torch.compile'd runner already compiled for
    this batch (its fused kernels count as "fused").

    Returns a summary (device-busy share of the wall time, the share of the kernel time spent
    in convolutions, normalisation and the rest) and the profiler's table of the `top` ops by
    self device time. A busy share well under 1 means the GPU waits for launches (many small
    kernels); a large normalisation or elementwise share means memory-bound work that fusion
    (torch.compile) could remove.
    """
    from torch.profiler import ProfilerActivity, profile

    dtype = DTYPES[dtype_name]
    if built is None:
        model = create_model(arch, config=preset).to(device)
        runner = model
    else:
        model, runner = built
    model.train()
    x = torch.rand(input_shape(model.spatial_dims, batch, frames, size), device=device)
    if channels_last:
        if built is None:
            model = runner = model.to(memory_format=_memory_format(x.ndim))
        x = x.contiguous(memory_format=_memory_format(x.ndim))
    step = _train_step(runner, _optimizer(model), x, device, dtype)
    for _ in range(2):  # cuDNN autotuning and allocator warm-up stay outside the profile
        step()
    _sync(device)
    activities = [ProfilerActivity.CPU]
    on_gpu = device.type == "cuda"
    if on_gpu:
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    key = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    kernel_us = {"convolution": 0.0, "normalisation": 0.0, "fused": 0.0, "other": 0.0}
    for ev in events:
        # on CUDA count the kernels' own rows: an op's self device time repeats its kernels'
        if on_gpu and ev.device_type != torch.autograd.DeviceType.CUDA:
            continue
        name = ev.key.lower()
        spent = float(getattr(ev, key, 0.0) or 0.0)
        if name.startswith(("triton", "cpp_fused")):  # torch.compile's generated kernels
            kernel_us["fused"] += spent
        elif any(k in name for k in ("conv", "cudnn", "xmma", "gemm", "wgrad", "dgrad")):
            kernel_us["convolution"] += spent
        elif any(k in name for k in ("batch_norm", "bn_", "norm")):
            kernel_us["normalisation"] += spent
        else:
            kernel_us["other"] += spent
    total_us = sum(kernel_us.values())
    summary = {
        "arch": arch,
        "preset": preset,
        "compiled": built is not None and built[1] is not built[0],
        "batch": batch,
        "dtype": dtype_name,
        "channels_last": channels_last,
        "steps": steps,
        "step_s": round(wall / steps, 4),
        "device_busy_share": round(total_us / 1e6 / wall, 3) if on_gpu else None,
        "kernel_share": {
            k: round(v / total_us, 3) if total_us else None for k, v in kernel_us.items()
        },
    }
    table = events.table(sort_by=key, row_limit=top)
    return summary, table


# --------------------------------------------------------------------------- the run


def run_benchmark(
    archs: Sequence[str] = DEFAULT_ARCHS,
    *,
    device: str | torch.device = "cpu",
    frames: int = 32,
    size: int = 224,
    batch_sizes: Sequence[int] = (8, 32),
    dtypes: Sequence[str] = ("fp32", "bf16"),
    compile: Sequence[bool] = (False, True),
    preset: str = "paper",
    out_dir: str | Path = "benchmarks/results",
    steps: int = 10,
    warmup: int = 3,
    channels_last: bool | None = None,
    gradcam_frames: int = 64,
    time_budget_s: float | None = None,
    tag: str = "",
    reference: bool = True,
    profile: bool = False,
    profile_compiled: bool = False,
    progress: bool = False,
) -> list[dict]:
    """Benchmark `archs`; returns one dict per (compile, arch, dtype, batch) row.

    Rows run eager first for every architecture, then compiled, so a time budget (or a killed
    run) loses the slow-to-compile rows first. `channels_last` None: on for CUDA only.
    `gradcam_frames` 0 skips the Grad-CAM latency. `reference` adds every architecture's
    paper-preset parameters and GFLOPs at 32 x 224 x 224 (counted on the meta device).
    `profile` adds, after the eager rows, a `torch.profiler` breakdown of the first
    architecture's eager training step at the largest batch (`<stem>-profile.txt`);
    `profile_compiled` the same for the first compiled row that ran, with its already compiled
    runner (`<stem>-profile-compiled.txt`).
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was asked for but torch sees no GPU")
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise ValueError(f"dtypes must be among {tuple(DTYPES)}, got {unknown}")
    if channels_last is None:
        channels_last = dev.type == "cuda"
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    start = time.monotonic()
    name = device_name(dev)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench-{dev.type}-{slug(name)}-{preset}" + (f"-{slug(tag)}" if tag else "")
    memory = PeakMemory(dev)
    report = {
        "device": dev.type,
        "device_name": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "preset": preset,
        "frames": frames,
        "size": size,
        "steps": steps,
        "warmup": warmup,
        "channels_last": channels_last,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32 if dev.type == "cuda" else None,
        "memory_method": memory.method,
        "train_step": "forward + backward + AdamW step (ml.train.make_optimizer), BCE loss",
        "flops_method": "torch.utils.flop_counter.FlopCounterMode, 2 FLOPs per MAC, batch 1",
        "paper_anchors": PAPER_ANCHORS,
        "paper_reference": (
            paper_reference(list(dict.fromkeys([*archs, "irv2_cam"]))) if reference else []
        ),
        "rows": [],
        "gradcam": [],
        "profile": None,
        "profile_compiled": None,
    }
    counts = {a: count_model(a, preset, frames, size) for a in archs}
    plan = [
        (comp, arch, dtype, bs)
        for comp in compile
        for arch in archs
        for dtype in dtypes
        for bs in batch_sizes
    ]
    ctx = {
        "dev": dev,
        "preset": preset,
        "frames": frames,
        "size": size,
        "steps": steps,
        "warmup": warmup,
        "channels_last": channels_last,
        "memory": memory,
    }
    over_budget = (
        (lambda: time.monotonic() - start > time_budget_s)
        if time_budget_s is not None
        else (lambda: False)
    )
    bar = _progress(len(plan), progress)
    built: dict = {}
    # eager rows, then the Grad-CAM latency, then compiled rows (slow to compile): a time
    # budget or a killed run loses the compiled rows first
    for phase in (False, True):
        for comp, arch, dtype, bs in plan:
            if comp != phase:
                continue
            bar.set_description(f"{arch} {dtype} bs{bs}{' compiled' if comp else ''}")
            if over_budget():
                row = _row_head(arch, counts[arch], dtype, comp, bs, ctx)
                row["status"] = "skipped: time budget"
            else:
                row = _bench_row(arch, counts[arch], dtype, comp, bs, ctx, built)
            report["rows"].append(row)
            bar.update(1)
            _write(out, stem, report)
            if (comp and profile_compiled and report["profile_compiled"] is None
                    and row["status"] == "ok" and (arch, comp) in built):
                report["profile_compiled"] = _profile_row(
                    arch, bs, dtype, ctx, out, f"{stem}-compiled", built[arch, comp])
                _write(out, stem, report)
        built.clear()
        _free(dev, collect=True)
        if not phase and gradcam_frames > 0:
            for dtype in dtypes:
                if over_budget():
                    break
                report["gradcam"].append(_gradcam_row(dtype, gradcam_frames, ctx))
                _write(out, stem, report)
        if not phase and profile and not over_budget():
            report["profile"] = _profile_row(archs[0], max(batch_sizes), dtypes[0], ctx, out, stem)
            _write(out, stem, report)
    bar.close()
    report["wall_s"] = round(time.monotonic() - start, 1)
    _write(out, stem, report)
    log.info("wrote %s", out / f"{stem}.json")
    return report["rows"]


def _row_head(arch: str, c: dict, dtype: str, comp: bool, bs: int, ctx: dict) -> dict:
    shape = input_shape(c["spatial_dims"], bs, ctx["frames"], ctx["size"])
    return {
        "arch": arch,
        "preset": ctx["preset"],
        "input": "x".join(map(str, shape[1:])),
        "params_m": c["params_m"],
        "gflops_per_clip": c["gflops_per_clip"],
        "dtype": dtype,
        "compile": comp,
        "batch": bs,
        "channels_last": ctx["channels_last"],
    }


def _bench_row(arch: str, c: dict, dtype: str, comp: bool, bs: int, ctx: dict, built: dict):
    """One measured row; `built` caches the (model, runner) of the current arch and mode."""
    dev = ctx["dev"]
    row = _row_head(arch, c, dtype, comp, bs, ctx)
    x = None
    try:
        if (arch, comp) not in built:
            built.clear()
            _free(dev, collect=True)
            built[arch, comp] = _build(arch, ctx["preset"], dev, ctx["channels_last"], comp)
        model, runner = built[arch, comp]
        x = torch.rand(input_shape(c["spatial_dims"], bs, ctx["frames"], ctx["size"]), device=dev)
        if ctx["channels_last"]:
            x = x.contiguous(memory_format=_memory_format(x.ndim))
        row.update(
            measure(
                model,
                runner,
                x,
                device=dev,
                dtype=DTYPES[dtype],
                warmup=ctx["warmup"],
                steps=ctx["steps"],
                memory=ctx["memory"],
            )
        )
        gf = c["gflops_per_clip"]
        row["train_tflops"] = round(3 * gf * row["train_clips_per_s"] / 1e3, 6)
        row["infer_tflops"] = round(gf * row["infer_clips_per_s"] / 1e3, 6)
        row["status"] = "ok"
    except torch.cuda.OutOfMemoryError:
        row["status"] = "out of memory"
    except Exception as exc:  # a failed configuration must not lose the others
        log.warning("%s %s bs%d failed: %s", arch, dtype, bs, exc)
        row["status"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    finally:
        x = None
        _free(dev, collect=row.get("status") != "ok")
    return row


def _gradcam_row(dtype: str, frames: int, ctx: dict) -> dict:
    try:
        return gradcam_latency(
            device=ctx["dev"],
            preset=ctx["preset"],
            frames=frames,
            size=ctx["size"],
            dtype_name=dtype,
            channels_last=ctx["channels_last"],
            reps=max(3, 2 * ctx["steps"]),  # milliseconds each: enough repeats to time
            memory=ctx["memory"],
        )
    except torch.cuda.OutOfMemoryError:
        return {"arch": "irv2_cam", "dtype": dtype, "status": "out of memory"}
    except Exception as exc:
        log.warning("Grad-CAM latency (%s) failed: %s", dtype, exc)
        return {"arch": "irv2_cam", "dtype": dtype, "status": f"error: {type(exc).__name__}"}
    finally:
        _free(ctx["dev"], collect=True)


def _profile_row(arch: str, batch: int, dtype: str, ctx: dict, out: Path, stem: str,
                 built: tuple[nn.Module, nn.Module] | None = None) -> dict:
    try:
        summary, table = profile_training(
            arch,
            device=ctx["dev"],
            preset=ctx["preset"],
            frames=ctx["frames"],
            size=ctx["size"],
            batch=batch,
            dtype_name=dtype,
            channels_last=ctx["channels_last"],
            built=built,
        )
        (out / f"{stem}-profile.txt").write_text(table)
        return summary
    except torch.cuda.OutOfMemoryError:
        return {"arch": arch, "batch": batch, "status": "out of memory"}
    except Exception as exc:  # the profile is a diagnostic: never lose the rows for it
        log.warning("profile of %s failed: %s", arch, exc)
        return {"arch": arch, "batch": batch, "status": f"error: {type(exc).__name__}: {exc}"}
    finally:
        _free(ctx["dev"], collect=True)


def _memory_format(ndim: int) -> torch.memory_format:
    return torch.channels_last_3d if ndim == 5 else torch.channels_last


def _build(arch: str, preset: str, dev: torch.device, channels_last: bool, comp: bool):
    model = create_model(arch, config=preset).to(dev)
    if channels_last:
        model = model.to(memory_format=_memory_format(model.spatial_dims + 2))
    runner = torch.compile(model, dynamic=False) if comp else model
    return model, runner


def _free(dev: torch.device, collect: bool = False) -> None:
    if collect:  # a full collection costs ~0.3 s with torch loaded: only between models
        gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


class _NoBar:
    def set_description(self, *a) -> None: ...
    def update(self, *a) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="config")


# --------------------------------------------------------------------------- reports


def _write(out: Path, stem: str, report: dict) -> None:
    tmp = out / f".{stem}.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, out / f"{stem}.json")
    (out / f"{stem}.md").write_text(markdown(report))


def _fmt(v, nd: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and 0 < abs(v) < 1:
        return f"{v:.3g}"  # small values (tiny CPU clips) keep 3 significant digits
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def markdown(report: dict) -> str:
    r = report
    lines = [
        f"# Benchmark: {r['device_name']} ({r['device']}), preset `{r['preset']}`",
        "",
        f"torch {r['torch']}, {r['threads']} CPU threads, {r['date']}. Clips "
        f"{r['frames']}x{r['size']}x{r['size']} (2D models: {r['size']}x{r['size']} key frame), "
        f"1 channel; {r['warmup']} warm-up + {r['steps']} timed steps; channels-last "
        f"{'on' if r['channels_last'] else 'off'}.",
        f"Train step: {r['train_step']}. TFLOP/s: training counts 3x forward FLOPs. "
        f"FLOPs: {r['flops_method']}. Peak memory (MiB above the resident model): "
        f"{r['memory_method']}.",
        "",
        "| arch | input | params (M) | GFLOPs/clip | dtype | compile | batch | train clips/s "
        "| infer clips/s | train TFLOP/s | infer TFLOP/s | train peak MiB | infer peak MiB "
        "| status |",
        "|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in r["rows"]:
        lines.append(
            "| "
            + " | ".join(
                [
                    row["arch"],
                    row["input"],
                    _fmt(row["params_m"], 2),
                    _fmt(row["gflops_per_clip"]),
                    row["dtype"],
                    "yes" if row["compile"] else "no",
                    str(row["batch"]),
                    _fmt(row.get("train_clips_per_s"), 2),
                    _fmt(row.get("infer_clips_per_s"), 2),
                    _fmt(row.get("train_tflops"), 3),
                    _fmt(row.get("infer_tflops"), 3),
                    _fmt(row.get("train_peak_mib"), 0),
                    _fmt(row.get("infer_peak_mib"), 0),
                    row["status"],
                ]
            )
            + " |"
        )
    if r["gradcam"]:
        lines += [
            "",
            "## Inference + 3D Grad-CAM of one video (irv2_cam)",
            "",
            "| clip | dtype | inference (s) | inference + Grad-CAM + attention maps (s) "
            "| the same, batch norms folded (s) | from a CUDA graph (s) "
            "| from a CUDA graph, folded (s) | peak MiB |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for g in r["gradcam"]:
            cells = [
                g.get(f"{v}_status") or _fmt(g.get(f"{v}_latency_s"), 4)
                for v in ("folded", "graphed", "graphed_folded")
            ]
            lines.append(
                f"| {g.get('clip', '-')} | {g['dtype']} | {_fmt(g.get('inference_s'), 4)} "
                f"| {_fmt(g.get('latency_s'), 4)} | {' | '.join(cells)} "
                f"| {_fmt(g.get('peak_mib'), 0)} |"
            )
    for key, mode, suffix in (("profile", "eager", "-profile.txt"),
                              ("profile_compiled", "compiled", "-compiled-profile.txt")):
        prof = r.get(key)
        if prof and "step_s" in prof:
            shares = ", ".join(f"{k} {v:.0%}" for k, v in prof["kernel_share"].items()
                               if v is not None)
            busy = prof["device_busy_share"]
            lines += [
                "",
                f"## Where a training step goes ({prof['arch']}, batch {prof['batch']}, "
                f"{prof['dtype']}, {mode})",
                "",
                f"{prof['step_s']} s a step; device busy {busy:.0%} of the wall time; "
                if busy is not None
                else f"{prof['step_s']} s a step; ",
            ]
            lines[-1] += f"kernel time: {shares}. Top ops in the `{suffix}` beside this file."
        elif prof:
            lines += ["", f"Profile ({mode}): {prof.get('status')}"]
    a = r["paper_anchors"]
    if r["paper_reference"]:
        lines += [
            "",
            "## Paper-preset sizes at 32x224x224 (2D: 224x224), 1 channel, 1 logit",
            "",
            "| arch | params (M) | GFLOPs/clip |",
            "|---|---:|---:|",
        ]
    for p in r["paper_reference"]:
        lines.append(f"| {p['arch']} | {p['params_m']:.2f} | {p['gflops_per_clip']:.1f} |")
    lines += [
        "",
        f"Anchors from Qian et al. 2025 (GPU): r3d_18 {a['r3d_18_gflops_per_clip']} GFLOPs/clip "
        f"(torchvision r3d_18 on 32x224x224 RGB; ours has 1 input channel), eager 3D "
        f"IRv2+CBAM {a['irv2_cam_eager_gflops_per_clip']} GFLOPs/clip, "
        f"{a['irv2_cam_params_m']}M parameters (matched by the released 10/20/10 block counts).",
        "",
    ]
    if r.get("wall_s") is not None:
        lines.append(f"Wall time {r['wall_s']} s.")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ml bench",
        description="Throughput, FLOPs and memory of the model architectures.",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto (default)")
    p.add_argument(
        "--preset",
        choices=("small", "paper"),
        default=None,
        help="model config (default: paper on CUDA, small on CPU)",
    )
    p.add_argument("--frames", type=int, default=32, help="frames per clip (default 32)")
    p.add_argument("--size", type=int, default=224, help="frame height and width (default 224)")
    p.add_argument("--archs", nargs="+", default=list(DEFAULT_ARCHS), metavar="ARCH")
    p.add_argument(
        "--batch-sizes",
        nargs="+",
        type=int,
        default=None,
        metavar="N",
        help="default: 8 32 on CUDA, 2 on CPU",
    )
    p.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=["fp32", "bf16"])
    p.add_argument(
        "--compile",
        action="store_true",
        help="also run torch.compile'd models (after all eager rows)",
    )
    p.add_argument("--compile-only", action="store_true", help="only torch.compile'd models")
    p.add_argument(
        "--no-channels-last", action="store_true", help="keep contiguous memory format on CUDA"
    )
    p.add_argument("--steps", type=int, default=10, help="timed steps per row (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up steps per row (default 3)")
    p.add_argument(
        "--gradcam-frames",
        type=int,
        default=64,
        help="frames of the Grad-CAM latency video (default 64)",
    )
    p.add_argument("--no-gradcam", action="store_true", help="skip the Grad-CAM latency")
    p.add_argument(
        "--profile",
        action="store_true",
        help="profile the first architecture's eager training step (torch.profiler)",
    )
    p.add_argument(
        "--profile-compiled",
        action="store_true",
        help="profile the first compiled row's training step, with its compiled model",
    )
    p.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the table of paper-preset sizes at 32x224x224",
    )
    p.add_argument(
        "--tag",
        default="",
        help="appended to the result files' names, so a later run does not overwrite them",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="S",
        help="skip the remaining rows after S seconds",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    p.add_argument("--out-dir", default="benchmarks/results")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ml bench ...`; exit status 1 when rows ran and none succeeded."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    on_gpu = device.startswith("cuda")
    preset = args.preset or ("paper" if on_gpu else "small")
    batch_sizes = args.batch_sizes or ([8, 32] if on_gpu else [2])
    compile_modes = (True,) if args.compile_only else (False, True) if args.compile else (False,)
    rows = run_benchmark(
        args.archs,
        device=device,
        frames=args.frames,
        size=args.size,
        batch_sizes=batch_sizes,
        dtypes=args.dtypes,
        compile=compile_modes,
        preset=preset,
        out_dir=args.out_dir,
        steps=args.steps,
        warmup=args.warmup,
        channels_last=False if args.no_channels_last else None,
        gradcam_frames=0 if args.no_gradcam else args.gradcam_frames,
        time_budget_s=args.time_budget,
        tag=args.tag,
        reference=not args.no_reference,
        profile=args.profile,
        profile_compiled=args.profile_compiled,
        progress=True,
    )
    for row in rows:
        log.info(
            "%-15s %-5s bs%-3d %s train %s clips/s infer %s clips/s %s",
            row["arch"],
            row["dtype"],
            row["batch"],
            "compiled" if row["compile"] else "eager",
            row.get("train_clips_per_s", "-"),
            row.get("infer_clips_per_s", "-"),
            row["status"],
        )
    ran = [r for r in rows if not r["status"].startswith("skipped")]
    return 1 if ran and not any(r["status"] == "ok" for r in ran) else 0


if __name__ == "__main__":
    raise SystemExit(main())
