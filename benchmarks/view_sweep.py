"""How a trained run's AUROC moves with the number of temporal views and flip averaging at
test time, split by split, for the ensemble and for each member.

    .venv/bin/python benchmarks/view_sweep.py RUN [--views 1 2 3 4] [--no-flip] [--out FILE]

The run was trained (model selection, frozen threshold) with its own `temporal_views`; the
other counts here are read-outs of the same weights, for choosing the count a run should be
trained with, not a result to report as if trained so. A punctate focus shows in a median two
frames of a sweep, so 16 sampled frames miss a quarter to a third of them, 32 a few per cent
and 48 almost none (docs/ml-results.md, "Third round").

Prints and writes JSON: {views: {flip: {split: {"ensemble": auroc, "members": [auroc, ...]}}}}.
A diagnostic, not a test: it needs a trained run and its dataset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's ml package
from ml.data import ClipDataset, read_manifest  # noqa: E402
from ml.evaluate import score_logits  # noqa: E402
from ml.inference import load_model, spec_of  # noqa: E402
from ml.models.ensemble import members_of  # noqa: E402

SPLITS = ("val", "internal_test", "external_test")


def member_logits(model, ds: ClipDataset) -> np.ndarray:
    """(cases, members) logits, scored as evaluation scores them with the dataset's spec (its
    temporal views and flip averaging)."""
    return np.stack([score_logits(m, ds) for m in members_of(model)], axis=1)


def sweep(run: Path, views: list[int], flips: tuple[bool, ...] = (False, True)) -> dict:
    model, config = load_model(run)
    base = spec_of(config)
    root = Path(config["data_root"])
    manifest = config["train"].get("manifest", "manifest.csv")
    records = read_manifest(root, manifest)
    out: dict = {"run": str(run), "trained_views": base.temporal_views}
    for v in views:
        for flip in flips:
            spec = dataclasses.replace(base, temporal_views=v, flip_average=flip)
            block = {}
            for split in SPLITS:
                ds = ClipDataset(root, split, spec, manifest=manifest, records=records)
                if not len(ds):
                    continue
                logits, labels = member_logits(model, ds), ds.labels
                block[split] = {
                    "ensemble": round(float(roc_auc_score(labels, logits.mean(1))), 4),
                    "members": [round(float(roc_auc_score(labels, c)), 4) for c in logits.T],
                }
            out.setdefault(str(v), {})["flip" if flip else "plain"] = block
            print(v, "flip" if flip else "plain",
                  {s: b["ensemble"] for s, b in block.items()}, flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--views", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--no-flip", action="store_true", help="skip the flip-averaged read-outs")
    p.add_argument("--out", type=Path, default=None, help="default RUN/view_sweep.json")
    args = p.parse_args(argv)
    if min(args.views) < 1:
        p.error(f"--views are counts of 1 or more; got {args.views}")
    torch.set_num_threads(2)
    try:
        result = sweep(args.run, args.views, (False,) if args.no_flip else (False, True))
    except FileNotFoundError as exc:  # not a run directory, or its dataset has moved
        p.error(str(exc))
    (args.out or args.run / "view_sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
