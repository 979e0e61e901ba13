"""The CPU training step of the headline model in fp32 and bf16, contiguous and channels-last,
in one run, and whether each setting's convolution weight gradients are right: why CPU
training runs fp32 on channels-last clips (`TrainConfig.amp`, `channels_last_3d`).

    .venv/bin/python benchmarks/cpu_train_step.py [--steps 8] [--trials 10] [--out DIR]

The step is what `python -m ml train --config small` runs per batch for the headline
(docs/ml-results.md): irv2_cam `small` with the punctate-focus head, 8 clips of 16 x 96 x 96,
forward, BCE, backward and the AdamW step of `ml.train.make_optimizer`, one intra-op thread
(the preset's), after two warm-up steps. fp32 contiguous is the peer every row is compared with.
bf16 is autocast, as CUDA training does it.

The gradient check: a 3 x 3 x 3 Conv3d on a 2-frame input (a short clip at a deep stage, where
the depth is below the kernel's), `--trials` fresh layers and inputs per setting; a trial is
wrong when the weight gradient is not finite or differs from fp32 on the same bf16-rounded
values by more than 2% of its largest element. With torch 2.13.0+cpu, bf16 fails most trials
(NaN, or 1e36 garbage in about two thirds of the elements); fp32 fails none.

Writes `cpu-train-step-<cpu>.json` under `--out` (default benchmarks/results/).
A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's ml package
from ml.bench import device_name, slug  # noqa: E402
from ml.models import create_model  # noqa: E402
from ml.train import make_config, make_optimizer  # noqa: E402

HEADLINE_OPTIONS = {"focus_head": True, "focus_count": True, "focus_logit": True,
                    "focus_detach": True}
SETTINGS = (  # (name, bf16 autocast, channels-last); the first is the peer
    ("fp32", False, False),
    ("fp32 channels-last", False, True),
    ("bf16", True, False),
    ("bf16 channels-last", True, True),
)


def step_seconds(bf16: bool, channels_last: bool, steps: int, warmup: int = 2) -> list[float]:
    torch.manual_seed(0)
    cfg = make_config("small", arch="irv2_cam", model_options=HEADLINE_OPTIONS)
    model = create_model("irv2_cam", config="small", **HEADLINE_OPTIONS)
    x = torch.randn(cfg.batch_size, 1, cfg.frames, cfg.size, cfg.size)
    y = (torch.arange(cfg.batch_size) % 2).float()
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    optimizer = make_optimizer(model, cfg)
    model.train()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with cast:
            loss = F.binary_cross_entropy_with_logits(model(x)[:, 0].float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def wrong_gradient_trials(bf16: bool, channels_last: bool, trials: int) -> int:
    """Trials of the short-clip Conv3d whose weight gradient is not the contiguous fp32 one
    (for bf16: on the bf16-rounded weights and input, so that rounding is no error)."""
    wrong = 0
    for seed in range(trials):
        torch.manual_seed(seed)
        conv = torch.nn.Conv3d(16, 16, 3, padding=1, bias=False)
        x = torch.randn(4, 16, 2, 12, 12)
        rounded = (lambda t: t.bfloat16().float()) if bf16 else (lambda t: t)
        weight = rounded(conv.weight.detach()).requires_grad_()
        F.conv3d(rounded(x), weight, padding=1).sum().backward()
        reference = weight.grad
        if channels_last:
            conv = conv.to(memory_format=torch.channels_last_3d)
            x = x.contiguous(memory_format=torch.channels_last_3d)
        cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with cast:
            out = conv(x)
        out.float().sum().backward()
        grad = conv.weight.grad
        off = (grad - reference).abs() > 0.02 * reference.abs().max()
        wrong += bool(not torch.isfinite(grad).all() or off.any())
    return wrong


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per setting")
    parser.add_argument("--trials", type=int, default=10, help="gradient-check trials")
    parser.add_argument("--out", default="benchmarks/results", help="directory for the JSON")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.trials < 1:
        parser.error("--steps and --trials are 1 or more")
    torch.set_num_threads(1)
    cpu = device_name(torch.device("cpu"))
    rows = []
    for name, bf16, channels_last in SETTINGS:
        times = step_seconds(bf16, channels_last, args.steps)
        rows.append({"setting": name, "bf16": bf16, "channels_last": channels_last,
                     "median_step_s": round(statistics.median(times), 4),
                     "min_step_s": round(min(times), 4),
                     "wrong_gradient_trials": wrong_gradient_trials(bf16, channels_last,
                                                                    args.trials)})
    peer = rows[0]["median_step_s"]
    for row in rows:
        row["speedup_vs_fp32"] = round(peer / row["median_step_s"], 2)
    report = {
        "cpu": cpu,
        "cpu_bf16_instructions": bool(getattr(torch.cpu, "_is_avx512_bf16_supported",
                                              lambda: False)()),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "threads": 1,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "step": "irv2_cam small + focus head, 8 x 1 x 16 x 96 x 96, forward + BCE + backward "
                "+ AdamW",
        "steps": args.steps,
        "gradient_check": "Conv3d 16->16, 3x3x3, padding 1, input 4 x 16 x 2 x 12 x 12; wrong: "
                          "not finite or off fp32 by > 2% of the largest element",
        "trials": args.trials,
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"cpu-train-step-{slug(cpu)}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{cpu} (bf16 instructions: {report['cpu_bf16_instructions']}), one thread")
    for row in rows:
        print(f"  {row['setting']:<20} {row['median_step_s']:.3f} s/step  "
              f"x{row['speedup_vs_fp32']:.2f} vs fp32  wrong gradients in "
              f"{row['wrong_gradient_trials']}/{args.trials} trials")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
