"""Seed ensembles: `python -m ml train --members N` trains N ordinary runs side by side, each
from its own seed, and joins them into one run directory that loads, evaluates and predicts
like any other (`ml.models.ensemble.SeedEnsemble`: the mean of the members' logits).

    RUN/members/seed-0/   RUN/members/seed-1/ ...   complete runs of their own
    RUN/model.safetensors                            the members' weights, prefixed members.K.
    RUN/config.json                                  train.members = N, the members' spec,
                                                     the threshold frozen on validation
    RUN/metrics.jsonl                                start and done of the whole ensemble,
                                                     and the members' progress (below)

Members run as separate processes, `parallel` at a time (default: one per CPU core, each with
the preset's threads), so on the 2-core machine two members take the time of one. Running the
command again resumes: finished members are kept, interrupted ones continue from their
checkpoints.

Progress: whoever watches RUN/metrics.jsonl (the web platform streams it) sees the first
member's steps as they come, and each epoch once every member has finished it, with the
members' mean losses and validation AUROC (each member's own in `member_val_auroc`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ml.data import ClipDataset, ClipSpec, DataError
from ml.jsonl import JsonlTail

log = logging.getLogger(__name__)
PACKAGE_PARENT = Path(__file__).resolve().parent.parent


def member_dirs(run_dir: Path, cfg) -> list[Path]:
    return [run_dir / "members" / f"seed-{cfg.seed + k}" for k in range(cfg.members)]


def _finished(member: Path) -> bool:
    try:
        config = json.loads((member / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return config.get("threshold") is not None and (member / "model.safetensors").is_file()


def train_ensemble(cfg, data_root: str | Path, run_dir: str | Path, *,
                   parallel: int | None = None) -> dict:
    """Train `cfg.members` members (seeds cfg.seed, cfg.seed + 1, ...) and join them."""
    from ml.train import MetricsLog

    if cfg.members < 2:
        raise ValueError("an ensemble needs members >= 2")
    run_dir, data_root = Path(run_dir), Path(data_root).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    metrics = MetricsLog(run_dir / "metrics.jsonl")
    t0 = time.perf_counter()
    metrics("start", arch=cfg.arch, preset=cfg.preset, epochs=cfg.epochs, members=cfg.members)
    dirs = member_dirs(run_dir, cfg)
    try:
        _train_members(cfg, data_root, dirs, parallel or min(cfg.members, os.cpu_count() or 1),
                       MemberProgress(dirs, metrics))
        summary = join(run_dir, dirs, data_root)
    except BaseException as e:
        metrics("error", message=str(e) or type(e).__name__, type=type(e).__name__)
        raise
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    metrics("done", **summary)
    return summary


class MemberProgress:
    """Relays the members' metrics logs into the ensemble's (see the module docstring).

    Tails each member's `metrics.jsonl`; a resumed member's file repeats epochs, and a
    finished member's file is read whole, so running the command again replays every epoch
    once."""

    def __init__(self, dirs: list[Path], metrics) -> None:
        self.tails = [JsonlTail(d / "metrics.jsonl") for d in dirs]
        self.metrics = metrics
        self.epochs: list[dict[int, dict]] = [{} for _ in dirs]
        self.sent: set[int] = set()
        self.best, self.best_epoch = -math.inf, 0

    def poll(self) -> None:
        for k, tail in enumerate(self.tails):
            for e in tail.read():
                if e.get("event") == "step" and k == 0:
                    self.metrics("step", **{key: v for key, v in e.items()
                                            if key not in ("event", "time")}, member=0)
                elif e.get("event") == "epoch":
                    self.epochs[k][int(e["epoch"])] = e
        ready = set.intersection(*(set(m) for m in self.epochs)) - self.sent
        for n in sorted(ready):
            self._epoch(n, [m[n] for m in self.epochs])

    def _epoch(self, n: int, events: list[dict]) -> None:
        def mean(key):
            values = [e[key] for e in events if isinstance(e.get(key), int | float)]
            return round(sum(values) / len(values), 6) if values else None

        auroc = mean("val_auroc")
        improved = auroc is not None and auroc > self.best
        if improved:
            self.best, self.best_epoch = auroc, n
        self.sent.add(n)
        self.metrics("epoch", epoch=n, epochs=events[0].get("epochs"),
                     train_loss=mean("train_loss"), val_loss=mean("val_loss"), val_auroc=auroc,
                     lr=events[0].get("lr"), time=max(e.get("time") or 0 for e in events),
                     best_epoch=self.best_epoch, improved=improved,
                     member_val_auroc=[e.get("val_auroc") for e in events])


def _train_members(cfg, data_root: Path, dirs: list[Path], parallel: int,
                   progress: MemberProgress | None = None) -> None:
    waiting = [(k, d) for k, d in enumerate(dirs) if not _finished(d)]
    running: list[tuple[int, Path, subprocess.Popen]] = []
    failed: list[tuple[int, str]] = []
    while waiting or running:
        while waiting and len(running) < parallel:
            k, d = waiting.pop(0)
            member = dataclasses.replace(cfg, members=1, seed=cfg.seed + k)
            d.mkdir(parents=True, exist_ok=True)
            (d / "member.json").write_text(json.dumps(dataclasses.asdict(member)) + "\n")
            command = [sys.executable, "-m", "ml.ensemble", str((d / "member.json").resolve()),
                       str(data_root), str(d.resolve())]
            log.info("member %s: %s", d.name, " ".join(command))
            with (d / "train.log").open("ab") as out:
                # from the folder that holds the ml package, whatever the caller's folder
                running.append((k, d, subprocess.Popen(command, stdout=out, stderr=out,
                                                       cwd=PACKAGE_PARENT)))
        time.sleep(0.5)
        if progress is not None:
            progress.poll()
        for k, d, proc in list(running):
            if proc.poll() is not None:
                running.remove((k, d, proc))
                if proc.returncode != 0:
                    failed.append((k, f"{d.name} (exit {proc.returncode}, see {d / 'train.log'})"))
    if progress is not None:
        progress.poll()  # what the members wrote after the last look
    if failed:
        # in member order, whichever process ended first
        raise DataError("ensemble members failed: " + ", ".join(m for _, m in sorted(failed)))


def join(run_dir: Path, dirs: list[Path], data_root: Path) -> dict:
    """Write the ensemble's weights and config from its finished members; the threshold is
    frozen on validation with the ensemble's own scores."""
    from ml.train import (
        _atomic_write,
        _json_float,
        build_model,
        code_version,
        config_from_dict,
        evaluate,
        save_weights,
        youden_threshold,
    )

    configs = [json.loads((d / "config.json").read_text()) for d in dirs]
    first = configs[0]
    member_cfg = first["train"]
    layer = member_cfg.get("gradcam_layer") or ""
    train_fields = {**member_cfg, "members": len(dirs), "seed": member_cfg["seed"],
                    "gradcam_layer": ",".join(f"members.{k}.{layer}" for k in range(len(dirs)))
                    if layer else ""}
    cfg = config_from_dict(train_fields)
    model = build_model(cfg)
    from safetensors.torch import load_file

    state = {}
    for k, d in enumerate(dirs):
        state.update({f"members.{k}.{key}": v
                      for key, v in load_file(str(d / "model.safetensors")).items()})
    model.load_state_dict(state)
    model.eval()
    spec = ClipSpec.from_dict(first["spec"])
    val = ClipDataset(data_root, "val", spec, manifest=cfg.manifest)
    torch.set_num_threads(max(1, cfg.threads or torch.get_num_threads()))
    scores = evaluate(model, DataLoader(val, batch_size=cfg.batch_size), torch.device("cpu"),
                      dataclasses.replace(cfg, amp=False))
    threshold = youden_threshold(scores["labels"], scores["probs"])
    save_weights(model, run_dir / "model.safetensors")
    config = {
        "train": dataclasses.asdict(cfg),
        "spec": first["spec"],
        "data_root": str(data_root),
        "counts": first.get("counts"),
        "world_size": 1,
        "code_version": code_version(),
        "threshold": threshold,
        "members": [str(d.relative_to(run_dir)) for d in dirs],
        "member_best_val_auroc": [c.get("best_val_auroc") for c in configs],
        "best_val_auroc": _json_float(scores["auroc"]),
    }
    _atomic_write(run_dir / "config.json",
                  lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    return {"members": len(dirs), "val_auroc": _json_float(scores["auroc"]),
            "threshold": threshold}


def _member_main(argv: list[str]) -> int:
    """`python -m ml.ensemble MEMBER_JSON DATA OUT`: train one member (resuming if it can)."""
    from ml.train import config_from_dict, train

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config_path, data_root, out = argv
    cfg = config_from_dict(json.loads(Path(config_path).read_text()))
    resume = (Path(out) / "checkpoint.pt").is_file()
    summary = train(cfg, data_root, out, resume=resume)
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(_member_main(sys.argv[1:]))
