"""How a trained run's AUROC depends on which epoch's weights it keeps: each snapshot alone,
and the rules that choose or combine them, for every member and for the ensemble.

    .venv/bin/python benchmarks/snapshot_sweep.py RUN [--out FILE]

RUN must have been trained with `--keep-snapshots` (each member's `snapshots/epoch-NNN.
safetensors`: the weights of every epoch eligible for model selection). The rules:

- `best_val`: the run's own choice, the best validation AUROC (ties to the lower loss);
- `last`: the last epoch;
- `top3_val`: the mean logit of the three best epochs by validation AUROC (then loss);
- `mean_last5`, `mean_all`: the mean logit of the last five, or of all eligible, epochs;
- `swa_last5`, `swa_all`: one network whose weights are the mean of those epochs' weights
  (stochastic weight averaging), its batch-norm statistics recomputed on one pass over the
  training clips, as `torch.optim.swa_utils.update_bn` does.

On 32 validation cases many epochs tie or differ by one pair of cases, so the single best
epoch is partly chance; the averaging rules ask whether that chance costs AUROC on new cases.
Validation figures of `best_val` and `top3_val` are optimistic (they chose on them).

Prints a table and writes JSON (default RUN/snapshot_sweep.json): per member the AUROC of
every snapshot per split, and per rule the members' and the ensemble's AUROC per split. A
diagnostic, not a test: it needs a trained run and its dataset.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's ml package
from ml.data import ClipDataset, read_manifest  # noqa: E402
from ml.evaluate import score_logits  # noqa: E402
from ml.inference import load_model, spec_of  # noqa: E402
from ml.train import augment_spec, config_from_dict  # noqa: E402

SPLITS = ("val", "internal_test", "external_test")
AVERAGED = {"mean_last5": 5, "mean_all": None}
WEIGHT_AVERAGED = {"swa_last5": 5, "swa_all": None}


def bce(labels, logits) -> float:
    t = torch.as_tensor(np.asarray(logits, np.float64))
    y = torch.as_tensor(np.asarray(labels, np.float64))
    return float(nn.functional.binary_cross_entropy_with_logits(t, y))


@torch.no_grad()
def recompute_batch_norm(model: nn.Module, ds: ClipDataset, batch_size: int) -> None:
    """Batch-norm running statistics as the cumulative mean over one pass of `ds`."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for start in range(0, len(ds), batch_size):
        model(torch.stack([torch.as_tensor(ds[i]["clip"])
                           for i in range(start, min(len(ds), start + batch_size))]))
    for m in norms:
        m.momentum = momenta[m]
    model.eval()


def average_weights(states: list[dict]) -> dict:
    out = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            out[k] = torch.stack([s[k] for s in states]).mean(0)
        else:
            out[k] = v.clone()  # e.g. batch norm's step counter: recomputed anyway
    return out


def auroc(labels, scores) -> float:
    return round(float(roc_auc_score(labels, scores)), 4)


def sweep_member(member: Path, datasets: dict, train_ds: ClipDataset) -> dict:
    model, config = load_model(member)
    cfg = config_from_dict(config["train"])
    paths = sorted((member / "snapshots").glob("epoch-*.safetensors"))
    if not paths:
        raise FileNotFoundError(f"{member} has no snapshots: train with --keep-snapshots")
    epochs = [int(p.stem.split("-")[1]) for p in paths]
    states = {e: load_file(str(p)) for e, p in zip(epochs, paths, strict=False)}
    logits: dict[int, dict[str, np.ndarray]] = {}
    for e in epochs:
        model.load_state_dict(states[e])
        logits[e] = {s: score_logits(model, ds) for s, ds in datasets.items()}
        print(f"{member.name} epoch {e}:",
              {s: auroc(ds.labels, logits[e][s]) for s, ds in datasets.items()}, flush=True)
    val = datasets["val"].labels
    by_val = sorted(epochs, key=lambda e: (-auroc(val, logits[e]["val"]),
                                           bce(val, logits[e]["val"]), e))
    rules: dict[str, dict[str, np.ndarray]] = {
        "best_val": logits[int(config["best_epoch"])],
        "last": logits[epochs[-1]],
        "top3_val": {s: np.mean([logits[e][s] for e in by_val[:3]], 0) for s in datasets},
    }
    for name, k in AVERAGED.items():
        chosen = epochs[-k:] if k else epochs
        rules[name] = {s: np.mean([logits[e][s] for e in chosen], 0) for s in datasets}
    for name, k in WEIGHT_AVERAGED.items():
        chosen = epochs[-k:] if k else epochs
        model.load_state_dict(average_weights([states[e] for e in chosen]))
        recompute_batch_norm(model, train_ds, cfg.batch_size)
        rules[name] = {s: score_logits(model, ds) for s, ds in datasets.items()}
    return {
        "best_epoch": int(config["best_epoch"]),
        "top3_epochs": by_val[:3],
        "epochs": {str(e): {s: auroc(ds.labels, logits[e][s]) for s, ds in datasets.items()}
                   for e in epochs},
        "rules": rules,
    }


def sweep(run: Path) -> dict:
    _, config = load_model(run)
    cfg = config_from_dict(config["train"])
    spec = spec_of(config)
    root = Path(config["data_root"])
    manifest = config["train"].get("manifest", "manifest.csv")
    records = read_manifest(root, manifest)
    datasets = {s: ClipDataset(root, s, spec, manifest=manifest, records=records)
                for s in SPLITS}
    datasets = {s: ds for s, ds in datasets.items() if len(ds)}
    members = sorted((run / "members").glob("seed-*")) or [run]
    out: dict = {"run": str(run), "members": {}, "rules": {}}
    per_member = {}
    for member in members:
        train_ds = ClipDataset(root, "train", spec, train=True, augment=augment_spec(cfg),
                               seed=int(member.name.split("-")[-1]) if member != run else 0,
                               manifest=manifest, records=records)
        per_member[member.name] = sweep_member(member, datasets, train_ds)
    for rule in next(iter(per_member.values()))["rules"]:
        block = {}
        for s, ds in datasets.items():
            member_logits = [m["rules"][rule][s] for m in per_member.values()]
            block[s] = {"ensemble": auroc(ds.labels, np.mean(member_logits, 0)),
                        "members": [auroc(ds.labels, v) for v in member_logits]}
        out["rules"][rule] = block
    for name, m in per_member.items():
        out["members"][name] = {k: v for k, v in m.items() if k != "rules"}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--out", type=Path, default=None, help="default RUN/snapshot_sweep.json")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        result = sweep(args.run)
    except FileNotFoundError as exc:  # not a run directory, no snapshots, or data moved
        p.error(str(exc))
    (args.out or args.run / "snapshot_sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'rule':<12}" + "".join(f"{s:>16}" for s in result["rules"]["best_val"]))
    for rule, block in result["rules"].items():
        print(f"{rule:<12}" + "".join(f"{b['ensemble']:>16.4f}" for b in block.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
