"""What a run's TI-RADS head reads: for each member, split and TI-RADS feature, how well the
head's output ranks the cases the reader called suspicious for that feature.

    .venv/bin/python benchmarks/tirads_head_readout.py RUN [--out FILE]

A run trained with `--model-options '{"tirads_head": true}'` (a seed ensemble or one model).
Each case is scored as evaluation scores it (the run's temporal views, the head's logits
averaged over them). Per feature the reader's call is made binary at the chart's suspicious
options: composition solid (2 points), echogenicity hypo- or very hypoechoic (>= 2), shape
taller-than-wide (3), margin lobulated or irregular (>= 2); the AUROC of the head's logit
against that call is reported with the number of suspicious cases. Cases the reader did not
read are left out. A diagnostic, not a test: it needs a trained run and its dataset.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's ml package
from ml.data import ClipDataset, read_manifest  # noqa: E402
from ml.inference import load_model, spec_of, temporal_views  # noqa: E402
from ml.tirads import FEATURES  # noqa: E402

SPLITS = ("train", "val", "internal_test", "external_test")
SUSPICIOUS_FROM = {"composition": 2, "echogenicity": 2, "shape": 3, "margin": 2}  # points


@torch.no_grad()
def head_outputs(model, ds: ClipDataset) -> np.ndarray:
    """(cases, features) TI-RADS logits, averaged over the spec's temporal views."""
    if getattr(model, "tirads_fc", None) is None:
        raise ValueError("the run's model has no TI-RADS head (model_options.tirads_head)")
    out = []
    for batch in DataLoader(ds, batch_size=8):
        views = temporal_views(batch["clip"], ds.spec.temporal_views)
        total = 0
        for v in views:
            model(v)
            total = total + model.tirads_logits.float()
        out.append(total / len(views))
    return torch.cat(out).numpy()


def readout(run: Path) -> dict:
    if not (run / "config.json").is_file():
        raise FileNotFoundError(f"{run} is not a run directory (no config.json)")
    result: dict = {"run": str(run), "suspicious_from_points": SUSPICIOUS_FROM, "members": {}}
    for member in sorted((run / "members").glob("seed-*")) or [run]:
        model, config = load_model(member)
        spec = spec_of(config)
        root = Path(config["data_root"])
        manifest = config["train"].get("manifest", "manifest.csv")
        records = read_manifest(root, manifest)
        block = {}
        for split in SPLITS:
            ds = ClipDataset(root, split, spec, manifest=manifest, records=records)
            if not len(ds):
                continue
            logits = head_outputs(model, ds)
            rows = {}
            for j, name in enumerate(FEATURES):
                points = [r.tirads_points[name] for r in ds.records]
                read = np.array([p is not None for p in points])
                calls = np.array([p is not None and p >= SUSPICIOUS_FROM[name] for p in points])
                n_susp, n_read = int(calls[read].sum()), int(read.sum())
                auroc = (round(float(roc_auc_score(calls[read], logits[read, j])), 4)
                         if 0 < n_susp < n_read else None)
                rows[name] = {"auroc": auroc, "suspicious": n_susp, "read": n_read}
            block[split] = rows
        result["members"][member.name] = block
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        result = readout(args.run)
    except (FileNotFoundError, ValueError) as exc:
        p.error(str(exc))
    out = args.out or args.run / "tirads_head_readout.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'member':<8}{'split':<15}" + "".join(f"{f:>18}" for f in FEATURES))
    for member, block in result["members"].items():
        for split, rows in block.items():
            cells = "".join(
                f"{'-' if r['auroc'] is None else format(r['auroc'], '.3f'):>9} "
                f"({r['suspicious']:>3}/{r['read']:<3})" for r in rows.values())
            print(f"{member:<8}{split:<15}{cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
