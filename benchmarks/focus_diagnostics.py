"""How well a run's punctate-focus head finds the foci, case by case and cell by cell.

    .venv/bin/python benchmarks/focus_diagnostics.py RUN [RUN ...] [--cases external_test]

For each split of the run's dataset (`val`, `internal_test`, `external_test`), scored as
evaluation scores it (the run's temporal views, every member of a seed ensemble):

- `auroc`: the model's own score (mean logit over views and members);
- `evidence_logit_auroc` and `trunk_auroc` (models with `focus_logit` only): the evidence's
  own logit and the rest of the score (the trunk's logit) on their own;
- `evidence_auroc`: each focus feature on its own (`peak`, `soft` maximum, `count`, the
  features `ml.models.inception_resnet.focus_evidence` gives the classifier, averaged over views
  and members), against the label;
- `true_count_auroc`: the number of punctate foci (3D connected components of the punctate
  marks) in the frames the model sees, against the label: what a perfect detector would give;
- `spearman_count`: rank correlation of the `count` feature with that true number;
- `cell_auroc`: the first member's focus logits against the punctate marks max-pooled to its
  grid, over every cell of the marked clips (many easy negatives: read with the peaks below);
- `peak_logit`: median strongest focus logit of malignant clips with punctate marks and of
  benign clips without any, i.e. how confident the detector is where it should be.

`--cases SPLIT` also prints one line per case of that split, strongest focus first.

Writes RUN/focus_diagnostics.json and prints it. The ml package's docs/ml-results.md quotes
the figures ("Fifth round", "Sixth round"). A diagnostic, not a test: it needs a trained run with
`focus_head` and its dataset.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's ml package
from ml.data import ClipDataset  # noqa: E402
from ml.inference import load_model, spec_of, temporal_views  # noqa: E402
from ml.models.attention import PUNCTATE_CODES  # noqa: E402
from ml.models.ensemble import members_of  # noqa: E402
from ml.models.inception_resnet import focus_evidence  # noqa: E402

SPLITS = ("val", "internal_test", "external_test")
FEATURES = ("peak", "soft", "count")


@torch.no_grad()
def score_case(model, item: dict, views: int) -> tuple[dict, np.ndarray | None, np.ndarray | None]:
    """(row, first member's focus logits, their max-pooled punctate target) of one case."""
    members = members_of(model)
    x = item["clip"][None]
    punctate = np.isin(item["mask"].numpy(), PUNCTATE_CODES)
    logit, evidence_logit, evidence, cells, targets = 0.0, 0.0, [], [], []
    for v, clip in enumerate(temporal_views(x, views)):
        for k, member in enumerate(members):
            logit += float(member(clip)[0, 0])
            if getattr(member, "evidence_logits", None) is not None:
                evidence_logit += float(member.evidence_logits[0, 0])
            focus = member.focus_logits
            if focus is None:
                raise SystemExit("this run's model has no focus head")
            evidence.append(focus_evidence(focus, count=True)[0].float().numpy())
            if k == 0 and bool(item["has_mask"]):
                frames = punctate[v::views] if views > 1 else punctate
                target = torch.from_numpy(frames.astype(np.float32))[None, None]
                targets.append(F.adaptive_max_pool3d(target, focus.shape[2:]).flatten().numpy())
                cells.append(focus.flatten().float().numpy())
    n = views * len(members)
    mean = np.mean(evidence, axis=0)
    row = {"case_id": item["case_id"], "label": int(item["label"]), "logit": logit / n,
           "evidence_logit": evidence_logit / n, "trunk_logit": (logit - evidence_logit) / n,
           **{f: float(mean[i]) for i, f in enumerate(FEATURES)},
           "true_count": int(ndimage.label(punctate)[1]) if bool(item["has_mask"]) else None}
    if not cells:
        return row, None, None
    return row, np.concatenate(cells), np.concatenate(targets)


def summarise(rows: list[dict], cells: list[np.ndarray], targets: list[np.ndarray]) -> dict:
    labels = [r["label"] for r in rows]
    marked = [r for r in rows if r["true_count"] is not None]
    out = {
        "n": len(rows),
        "auroc": round(roc_auc_score(labels, [r["logit"] for r in rows]), 3),
        "evidence_auroc": {f: round(roc_auc_score(labels, [r[f] for r in rows]), 3)
                           for f in FEATURES},
        "true_count_auroc": round(roc_auc_score([r["label"] for r in marked],
                                                [r["true_count"] for r in marked]), 3),
        "spearman_count": round(float(spearmanr([r["count"] for r in marked],
                                                [r["true_count"] for r in marked])[0]), 3),
    }
    if any(r["evidence_logit"] != 0.0 for r in rows):  # a model with `focus_logit`
        for key, part in (("evidence_logit_auroc", "evidence_logit"),
                          ("trunk_auroc", "trunk_logit")):
            out[key] = round(roc_auc_score(labels, [r[part] for r in rows]), 3)
    if cells:
        out["cell_auroc"] = round(roc_auc_score(np.concatenate(targets) > 0.5,
                                                np.concatenate(cells)), 3)
    with_foci = [r["peak"] for r in marked if r["label"] == 1 and r["true_count"] > 0]
    without = [r["peak"] for r in marked if r["label"] == 0 and r["true_count"] == 0]
    out["peak_logit"] = {
        "malignant_with_foci": round(statistics.median(with_foci), 2) if with_foci else None,
        "benign_without_foci": round(statistics.median(without), 2) if without else None,
    }
    return out


def diagnose(run: Path, print_cases: str | None = None) -> dict:
    model, config = load_model(run)
    spec = spec_of(config)
    root = Path(config["data_root"])
    result = {}
    for split in SPLITS:
        ds = ClipDataset(root, split, spec, manifest=config["train"].get("manifest",
                                                                         "manifest.csv"))
        rows, cells, targets = [], [], []
        for i in range(len(ds)):
            row, c, t = score_case(model, ds[i], spec.temporal_views)
            rows.append(row)
            if c is not None:
                cells.append(c)
                targets.append(t)
        result[split] = summarise(rows, cells, targets)
        if split == print_cases:
            for r in sorted(rows, key=lambda r: -r["peak"]):
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                  for k, v in r.items()}))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--cases", choices=SPLITS, default=None,
                        help="print one line per case of this split")
    args = parser.parse_args()
    for run in args.runs:
        result = diagnose(run, args.cases)
        (run / "focus_diagnostics.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({"run": str(run), **result}, indent=2))


if __name__ == "__main__":
    main()
