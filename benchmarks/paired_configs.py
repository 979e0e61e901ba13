"""Two configurations, seed for seed: the same seeds trained with configuration A and with B
(two `benchmarks/member_combinations.py` read-outs), compared as the ensembles a user gets.

    .venv/bin/python benchmarks/paired_configs.py A.json B.json --data DATASET [--out FILE]

Only members both read-outs have (by seed) count. For every k-member ensemble of those seeds
(the mean of the members' logits, as `--members k` trains them) it compares B with A on each
split: the mean AUROC of each, the mean and range of B - A over the combinations, and the share
where B is better; for the seed pairs that were trained as runs (seeds 0+1, 2+3, ...), the
paired DeLong test of B against A. Labels come from the dataset's manifest, in the order
`ClipDataset` reads a split, which is the order the read-outs' logits are in. A diagnostic, not
a test: it needs two read-outs of one dataset.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's ml package
from ml.data import read_manifest  # noqa: E402
from ml.stats import delong_roc_test  # noqa: E402

SPLITS = ("val", "internal_test", "external_test")


def split_labels(data: Path, manifest: str = "manifest.csv") -> dict[str, np.ndarray]:
    records = read_manifest(data, manifest)
    return {s: np.array([r.label for r in records if r.split == s]) for s in SPLITS}


def ensemble(members: dict, seeds: tuple[str, ...], split: str) -> np.ndarray:
    return np.mean([members[s][split]["logits"] for s in seeds], axis=0)


def compare(a: dict, b: dict, labels: dict[str, np.ndarray], k: int) -> dict:
    shared = [s for s in a["members"] if s in b["members"]]
    if len(shared) < k:
        raise ValueError(f"the read-outs share {len(shared)} seeds; {k} are needed")
    out: dict = {"seeds": shared, "k": k, "splits": {}, "trained_pairs": {}}
    for split, y in labels.items():
        for members in (a["members"], b["members"]):
            n = len(next(iter(members.values()))[split]["logits"])
            if n != len(y):
                raise ValueError(f"{split}: {n} logits for {len(y)} cases: another dataset")
        rows = []
        for combo in itertools.combinations(shared, k):
            auc_a = roc_auc_score(y, ensemble(a["members"], combo, split))
            auc_b = roc_auc_score(y, ensemble(b["members"], combo, split))
            rows.append((auc_a, auc_b))
        auc = np.array(rows)
        diff = auc[:, 1] - auc[:, 0]
        out["splits"][split] = {
            "n_combinations": len(rows), "a_mean": round(float(auc[:, 0].mean()), 4),
            "b_mean": round(float(auc[:, 1].mean()), 4),
            "b_minus_a_mean": round(float(diff.mean()), 4),
            "b_minus_a_range": [round(float(diff.min()), 4), round(float(diff.max()), 4)],
            "b_better_share": round(float((diff > 0).mean()), 3),
            "a_at_or_above_0.90": round(float((auc[:, 0] >= 0.90).mean()), 3),
            "b_at_or_above_0.90": round(float((auc[:, 1] >= 0.90).mean()), 3),
        }
    # the runs as trained: consecutive seeds, seed-0 + seed-1, seed-2 + seed-3, ...
    for first in range(0, len(shared) - 1, 2):
        pair = (shared[first], shared[first + 1])
        tests = {}
        for split, y in labels.items():
            score_a, score_b = (ensemble(c["members"], pair, split) for c in (a, b))
            if min(int(y.sum()), int((1 - y).sum())) < 2:  # too few for DeLong's variance
                auc_a, auc_b = roc_auc_score(y, score_a), roc_auc_score(y, score_b)
                tests[split] = {"a": round(auc_a, 4), "b": round(auc_b, 4),
                                "b_minus_a": round(auc_b - auc_a, 4), "p": None}
                continue
            t = delong_roc_test(y, score_b, score_a)
            tests[split] = {"a": round(t.auc_b, 4), "b": round(t.auc_a, 4),
                            "b_minus_a": round(t.difference, 4), "p": round(t.p_value, 3)}
        out["trained_pairs"]["+".join(pair)] = tests
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path, help="configuration A's member_combinations JSON")
    p.add_argument("b", type=Path, help="configuration B's member_combinations JSON")
    p.add_argument("--data", type=Path, required=True, help="the dataset both were scored on")
    p.add_argument("--manifest", default="manifest.csv")
    p.add_argument("-k", type=int, default=2, help="members per ensemble (default 2)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        a, b = (json.loads(path.read_text()) for path in (args.a, args.b))
        result = compare(a, b, split_labels(args.data, args.manifest), args.k)
    except (OSError, ValueError) as exc:
        p.error(str(exc))
    result.update(a=str(args.a), b=str(args.b))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.k}-member ensembles of seeds {', '.join(result['seeds'])}: A {args.a.name}, "
          f"B {args.b.name}")
    print(f"{'split':<15}{'n':>4}{'A mean':>9}{'B mean':>9}{'B-A mean (range)':>26}"
          f"{'B better':>10}{'A>=.90':>8}{'B>=.90':>8}")
    for split, s in result["splits"].items():
        lo, hi = s["b_minus_a_range"]
        print(f"{split:<15}{s['n_combinations']:>4}{s['a_mean']:>9.4f}{s['b_mean']:>9.4f}"
              f"{s['b_minus_a_mean']:>+10.4f} ({lo:+.3f} to {hi:+.3f}){s['b_better_share']:>10.2f}"
              f"{s['a_at_or_above_0.90']:>8.2f}{s['b_at_or_above_0.90']:>8.2f}")
    for pair, tests in result["trained_pairs"].items():
        cells = "; ".join(
            f"{split} {t['a']:.3f} -> {t['b']:.3f} "
            + ("(p n/a: < 2 cases of a class)" if t["p"] is None else f"(p = {t['p']:.2f})")
            for split, t in tests.items())
        print(f"{pair}: {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
