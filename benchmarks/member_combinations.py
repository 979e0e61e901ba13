"""How a seed ensemble's AUROC depends on its number of members: every combination of k of the
members of several runs, for each k, split by split.

    .venv/bin/python benchmarks/member_combinations.py RUN [RUN ...] [--out FILE]

The runs are seed ensembles of one configuration on one dataset, trained from different seeds
(`--seed 0`, `--seed 2`, ...), so their members are independent draws of the same recipe. Each
member is scored once with its own selected weights, as evaluation scores it (the run's views
and flip averaging); an ensemble of any k members is then the mean of their logits, which is
exactly what `python -m ml train --members k` would have produced from those seeds. With N
members there are C(N, k) ensembles of k: their spread is the run-to-run spread a user of a
k-member configuration should expect.

Prints a table and writes JSON (default member_combinations.json beside the first run): per
member the AUROC per split and its logits; per k and split the mean, minimum and maximum AUROC
over the combinations, the share at or above 0.90, and every combination's AUROC. A diagnostic,
not a test: it needs trained runs and their dataset.
"""

from __future__ import annotations

import argparse
import itertools
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

SPLITS = ("val", "internal_test", "external_test")
GOAL = 0.90  # the ml issue's external-test AUROC


def members_of_runs(runs: list[Path]) -> list[Path]:
    members = []
    for run in runs:
        if not (run / "config.json").is_file():
            raise FileNotFoundError(f"{run} is not a run directory (no config.json)")
        members += sorted((run / "members").glob("seed-*")) or [run]
    return members


def score_member(member: Path) -> tuple[dict, dict]:
    """({split: logits}, {split: labels}) for one member, as evaluation scores it."""
    model, config = load_model(member)
    spec = spec_of(config)
    root = Path(config["data_root"])
    manifest = config["train"].get("manifest", "manifest.csv")
    records = read_manifest(root, manifest)
    logits, labels = {}, {}
    for split in SPLITS:
        ds = ClipDataset(root, split, spec, manifest=manifest, records=records)
        if not len(ds):
            continue
        logits[split] = score_logits(model, ds)
        labels[split] = np.asarray(ds.labels)
    return logits, labels


def combinations(logits: dict[str, dict], labels: dict) -> dict:
    names = list(logits)
    out = {}
    for k in range(1, len(names) + 1):
        block = {}
        for split, y in labels.items():
            aurocs = {"+".join(c): round(float(roc_auc_score(
                y, np.mean([logits[m][split] for m in c], 0))), 4)
                for c in itertools.combinations(names, k)}
            values = np.array(list(aurocs.values()))
            block[split] = {"mean": round(float(values.mean()), 4),
                            "min": round(float(values.min()), 4),
                            "max": round(float(values.max()), 4),
                            "at_or_above_goal": round(float((values >= GOAL).mean()), 3),
                            "combinations": aurocs}
        out[str(k)] = block
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        members = members_of_runs(args.runs)
    except FileNotFoundError as exc:
        p.error(str(exc))
    if len({m.name for m in members}) < len(members):
        p.error("two runs share a seed: train each run from its own --seed")
    logits, labels = {}, None
    for member in members:
        logits[member.name], member_labels = score_member(member)
        if labels is not None and any(not np.array_equal(labels[s], member_labels[s])
                                      for s in labels):
            p.error(f"{member} was scored on other cases: the runs must share one dataset")
        labels = member_labels
        print(member.name, {s: round(float(roc_auc_score(labels[s], v)), 4)
                            for s, v in logits[member.name].items()}, flush=True)
    result = {
        "runs": [str(r) for r in args.runs],
        "members": {m: {s: {"auroc": round(float(roc_auc_score(labels[s], v)), 4),
                            # unrounded: rounding can tie two close cases and move AUROC
                            "logits": [float(x) for x in v]}
                        for s, v in split_logits.items()}
                    for m, split_logits in logits.items()},
        "by_members": combinations(logits, labels),
    }
    out = args.out or args.runs[0].parent / "member_combinations.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'k':>3} {'n':>4}" + "".join(f"{s + ' mean (min-max)':>34}" for s in labels)
          + f"{'ext. >= 0.90':>14}")
    for k, block in result["by_members"].items():
        n = len(next(iter(block.values()))["combinations"])
        cells = "".join(f"{b['mean']:>18.4f} ({b['min']:.3f}-{b['max']:.3f})"
                        for b in block.values())
        print(f"{k:>3} {n:>4}{cells}{block['external_test']['at_or_above_goal']:>14.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
