"""`python -m ml`: synthetic data, datasets, training, evaluation, heatmaps, statistics.

    python -m ml synth --out demo-data/synth
    python -m ml dataset --from-synth demo-data/synth --out demo-data/dataset --external C6
    python -m ml train --data demo-data/dataset --arch irv2_cam --config small --out runs/cam
    python -m ml evaluate --run runs/cam
    python -m ml compare runs/cam runs/irv2 runs/irv2_2d
    python -m ml gradcam --run runs/cam --clip clip.npy --out heat.npy
    python -m ml stats roc-ci --csv runs/cam/predictions.csv --truth label --score probability
    python -m ml bench ...

Results go to stdout (JSON or a table), logs and progress bars to stderr. A bad input exits
with status 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

# ml.gradcam.METHODS, default first, named here so that `--help` does not import torch
HEATMAP_METHODS = ("hirescam", "gradcam")

log = logging.getLogger("ml")


def _out(obj) -> None:
    sys.stdout.write((obj if isinstance(obj, str) else json.dumps(obj, indent=2)) + "\n")


def cmd_synth(args) -> int:
    from dataclasses import asdict, is_dataclass

    from ml.synthetic import generate

    report = generate(args.out, centres=args.centres, nodules=args.nodules, seed=args.seed)
    _out(asdict(report) if is_dataclass(report) else {"out": str(args.out)})
    return 0


def cmd_dataset(args) -> int:
    from dataclasses import asdict

    from ml.data import build_dataset_from_import_folder, write_loco_manifests

    report = build_dataset_from_import_folder(
        args.source, args.out, external=args.external or (), size=(args.size, args.size),
        seed=args.seed,
    )
    result = asdict(report)
    if args.loco:
        result["loco_manifests"] = [str(p) for p in write_loco_manifests(args.out, args.seed)]
    _out(result)
    return 0


def cmd_train(args) -> int:
    from ml.train import run_from_args

    return run_from_args(args)


def cmd_evaluate(args) -> int:
    from ml.evaluate import evaluate_run

    metrics = evaluate_run(args.run, args.data, localisation=not args.no_localisation,
                           device=args.device)
    _out(metrics)
    return 0


def cmd_compare(args) -> int:
    from ml.evaluate import compare

    result = compare(args.runs, split=args.split)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    _out(result["table"])
    return 0


def cmd_gradcam(args) -> int:
    import numpy as np

    from ml.inference import gradcam_layer_of, load_model, predict_with_heatmaps, spec_of

    model, config = load_model(args.run)
    clip = np.load(args.clip, mmap_mode="r")
    boxes = np.load(args.boxes) if args.boxes else None
    h = predict_with_heatmaps(model, clip, spec_of(config), boxes=boxes,
                              layer=gradcam_layer_of(model, config), method=args.method)
    np.save(args.out, h.gradcam)
    result = {"probability": h.probability, "threshold": config.get("threshold"),
              "gradcam": str(args.out), "method": args.method, "shape": list(h.gradcam.shape),
              "frame_indices": h.frame_indices.tolist(), "crop_box": list(h.crop_box)}
    if args.attention_out and h.attention:
        np.save(args.attention_out, np.stack(h.attention))
        result["attention"] = str(args.attention_out)
    _out(result)
    return 0


def cmd_stats(args) -> int:
    from ml import stats

    if args.stats_cmd == "roc-ci":
        _out(stats.roc_ci_from_csv(args.csv, args.truth, args.score, positive=args.positive))
    else:
        _out(stats.roc_test_from_csv(args.csv, args.truth, args.a, args.b,
                                     positive=args.positive))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ml.train import add_train_arguments

    p = argparse.ArgumentParser(prog="python -m ml", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="generate synthetic multi-centre sweeps")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--centres", type=int, default=6)
    s.add_argument("--nodules", type=int, default=60, help="per centre")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("dataset", help="build a dataset directory from an import folder")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-synth", dest="source", type=Path,
                     help="output of `python -m ml synth`")
    src.add_argument("--from-import", dest="source", type=Path,
                     help="any folder in the import_cases format")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--external", nargs="*", default=[], metavar="CENTRE",
                   help="centres held out whole as external_test")
    s.add_argument("--size", type=int, default=128, help="stored clip side in pixels")
    s.add_argument("--seed", type=int, default=0, help="split seed")
    s.add_argument("--loco", action="store_true",
                   help="also write leave-one-centre-out manifests in folds/")
    s.set_defaults(func=cmd_dataset)

    s = add_train_arguments(sub.add_parser("train", help="train a model"))
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="metrics.json and predictions.csv for a run")
    s.add_argument("--run", required=True, type=Path)
    s.add_argument("--data", type=Path, default=None, help="dataset, if moved since training")
    s.add_argument("--no-localisation", action="store_true", help="skip Grad-CAM scores")
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("compare", help="table and paired DeLong tests of several runs")
    s.add_argument("runs", nargs="+", type=Path)
    s.add_argument("--split", default="external_test")
    s.add_argument("--json", type=Path, default=None, help="also write the comparison here")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("gradcam", help="Grad-CAM of one stored clip, aligned to its frames")
    s.add_argument("--run", required=True, type=Path)
    s.add_argument("--clip", required=True, type=Path, help="(T, H, W) uint8 .npy")
    s.add_argument("--boxes", type=Path, default=None, help="(T, 4) nodule boxes .npy")
    s.add_argument("--out", required=True, type=Path, help="(T, H, W) float16 .npy")
    s.add_argument("--attention-out", type=Path, default=None,
                   help="(K, T, H, W) float16 .npy of the attention maps")
    s.add_argument("--method", choices=HEATMAP_METHODS, default=HEATMAP_METHODS[0],
                   help="heatmap: HiResCAM (default) or classic Grad-CAM (ml.gradcam)")
    s.set_defaults(func=cmd_gradcam)

    s = sub.add_parser("stats", help="DeLong AUROC CI and paired test on a CSV")
    ss = s.add_subparsers(dest="stats_cmd", required=True)
    r = ss.add_parser("roc-ci", help="AUROC with DeLong 95%% CI")
    r.add_argument("--score", required=True)
    t = ss.add_parser("roc-test", help="paired DeLong test of two score columns")
    t.add_argument("--a", required=True)
    t.add_argument("--b", required=True)
    for q in (r, t):
        q.add_argument("--csv", required=True, type=Path)
        q.add_argument("--truth", required=True)
        q.add_argument("--positive", default=None, help="truth level meaning malignant")
    s.set_defaults(func=cmd_stats)

    sub.add_parser("bench", help="benchmarks (ml.bench; see `python -m ml bench --help`)",
                   add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if {"-v", "--verbose"} & set(argv) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if argv and argv[0] == "bench":  # its own parser
        from ml.bench import main as bench_main

        return int(bench_main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    from ml.data import DataError

    errors: tuple[type[BaseException], ...] = (DataError, FileNotFoundError, ValueError)
    try:
        from ml.video import VideoError

        errors += (VideoError,)
    except ImportError:  # ml.video is optional for everything but `dataset`
        pass
    try:
        return args.func(args)
    except errors as e:
        log.error("%s", e)
        return 2
