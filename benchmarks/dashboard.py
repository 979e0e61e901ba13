"""Dashboard benchmark: server time and query count of the performance dashboard, its CSV
export, the case worklist, the case review page and the heatmap download, with 1,000 and then
10,000 videos that carry predictions of four model versions, across six centres.

    .venv/bin/python benchmarks/dashboard.py                     # throwaway SQLite
    .venv/bin/python benchmarks/dashboard.py --configured-db     # the DATABASE_URL database
                                                                 # (an empty, migrated one)

Seeds with bulk_create: centres C1-C6 (C1-C4 development, split 60/20/20 into train, val and
internal test; C5-C6 held out as the external test), one nodule and one ready video per
patient, surgical pathology (40% malignant), a frozen snapshot, four registered versions (the
study model in production, its ablation, a 3D and a 2D baseline) and a prediction of every
version for every video (40,000 at 10,000 videos). Requests go through Django's test client,
signed in as an ML engineer (all centres) and as a reader of C1; each URL is requested once to
warm up, then --repeats times; the minimum and median wall times and the query count of the
last request are reported. The dashboard's numbers are cached until a prediction or label
changes: "dashboard" is the usual request (cache filled by the warm-up), "dashboard, cold
cache" the first one after a change (cache emptied before each request). Results go to
stdout and to --out as JSON; record them in docs/benchmarks.md with the machine and command.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CENTRES = ["C1", "C2", "C3", "C4", "C5", "C6"]
EXTERNAL = {"C5", "C6"}
ARCHS = [("irv2_cam", "production"), ("irv2", "candidate"), ("r3d_18", "candidate"),
         ("irv2_2d", "candidate")]


def django_setup(var: Path, configured_db: bool) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    os.environ["THYROCINE_VAR_DIR"] = str(var)
    os.environ["MEDIA_ROOT"] = str(var / "media")
    if not configured_db:
        os.environ["DATABASE_URL"] = f"sqlite:///{var / 'bench.sqlite3'}"
        os.environ.pop("REDIS_URL", None)
    os.environ["LOG_LEVEL"] = "WARNING"
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.core.management import call_command
    from django.test.utils import setup_test_environment

    setup_test_environment()
    call_command("migrate", verbosity=0)


def seed_registry():
    from annotations.models import Centre
    from webapp.training.models import DatasetSnapshot, ModelVersion, TrainingRun

    Centre.objects.bulk_create([Centre(code=c, name=f"Hospital {c}") for c in CENTRES])
    snapshot = DatasetSnapshot.objects.create(
        name="benchmark", centres=[c for c in CENTRES if c not in EXTERNAL],
        external_centres=sorted(EXTERNAL))
    versions = []
    for number, (arch, state) in enumerate(ARCHS, start=1):
        run = TrainingRun.objects.create(snapshot=snapshot, arch=arch, preset="paper",
                                         run_dir=f"bench/run{number}", status="succeeded")
        versions.append(ModelVersion.objects.create(
            number=number, run=run, snapshot=snapshot, arch=arch, preset="paper",
            threshold=0.5, weights=f"models/v{number}/model.safetensors",
            checksum="0" * 64, state=state))
    return snapshot, versions


def seed_cases(snapshot, versions, start: int, stop: int, rng) -> None:
    """Cases start..stop-1 (one patient, nodule, pathology, video, snapshot case and four
    predictions each)."""
    from annotations.models import (
        Centre,
        Nodule,
        Pathology,
        PathologyOutcome,
        PathologySource,
        Patient,
        Video,
        VideoStatus,
    )
    from webapp.training.models import PredictedLabel, Prediction, SnapshotCase

    centres = {c.code: c for c in Centre.objects.filter(code__in=CENTRES)}
    idx = np.arange(start, stop)
    codes = [CENTRES[i % len(CENTRES)] for i in idx]
    labels = (rng.random(idx.size) < 0.4).astype(int)
    patients = Patient.objects.bulk_create(
        [Patient(centre=centres[c], code=f"P{i:06d}") for i, c in zip(idx, codes, strict=True)],
        batch_size=2000)
    nodules = Nodule.objects.bulk_create([Nodule(patient=p, code="N1") for p in patients],
                                         batch_size=2000)
    Pathology.objects.bulk_create([
        Pathology(nodule=n, source=PathologySource.SURGERY,
                  outcome=PathologyOutcome.MALIGNANT if y else PathologyOutcome.BENIGN)
        for n, y in zip(nodules, labels, strict=True)], batch_size=2000)
    videos = Video.objects.bulk_create([
        Video(nodule=n, sha256=f"bench-{i}", status=VideoStatus.READY, frame_count=120,
              frames_version=1, frames_chunk_size=32, frames_prefix=f"frames/{i}", width=640,
              height=480, fps=25.0)
        for i, n in zip(idx, nodules, strict=True)], batch_size=2000)
    splits = []
    for i, c in zip(idx, codes, strict=True):
        if c in EXTERNAL:
            splits.append("external_test")
        else:
            splits.append(("train", "train", "train", "val", "internal_test")[i % 5])
    SnapshotCase.objects.bulk_create([
        SnapshotCase(snapshot=snapshot, video=v, case_id=f"{c}-{i}", centre_code=c,
                     patient_code=f"P{i:06d}", nodule_code="N1", label=int(y), split=s,
                     clip=f"clips/{i}.npy")
        for i, v, c, y, s in zip(idx, videos, codes, labels, splits, strict=True)],
        batch_size=2000)
    for k, version in enumerate(versions):
        signal = 1.6 / (1 + k)  # the study model separates best, the 2D baseline least
        logits = signal * (2 * labels - 1) + rng.normal(0, 1.0, idx.size)
        probs = 1 / (1 + np.exp(-logits))
        Prediction.objects.bulk_create([
            Prediction(video=v, model_version=version, probability=float(p), threshold=0.5,
                       predicted_label=(PredictedLabel.MALIGNANT if p >= 0.5
                                        else PredictedLabel.BENIGN),
                       heatmaps="", frames_version=1, clip_shape=[120, 64, 64],
                       region=[0, 0, 640, 480])
            for v, p in zip(videos, probs, strict=True)], batch_size=2000)


def attach_heatmaps(prediction) -> None:
    """A real heatmaps.npz (120 frames, 64x64, two attention maps) for the reviewed case."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    maps = rng.integers(0, 256, (3, 120, 16, 16), dtype=np.uint8).repeat(4, 2).repeat(4, 3)
    np.savez_compressed(buf, gradcam=maps[0], attention=maps[1:])
    prediction.heatmaps = default_storage.save(f"predictions/bench/{prediction.pk}.npz",
                                               ContentFile(buf.getvalue()))
    prediction.save(update_fields=["heatmaps"])


def measure(client, url: str, repeats: int, cold: bool = False) -> dict:
    """`cold`: the cache is emptied before every request (outside the timing), so the
    dashboard computes its numbers afresh, as the first request after a new prediction or
    label does."""
    from django.core.cache import cache
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    response = client.get(url)  # warm-up
    assert response.status_code == 200, (url, response.status_code)
    times = []
    for _ in range(repeats):
        if cold:
            cache.clear()
        with CaptureQueriesContext(connection) as queries:
            t0 = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    return {"min_ms": round(min(times), 1), "median_ms": round(statistics.median(times), 1),
            "queries": len(queries)}


def run_scale(users, version, review_id: int, repeats: int) -> dict:
    from django.test import Client

    q = f"model={version.pk}&split=test"
    urls = {
        "dashboard": f"/dashboards/?{q}",
        "dashboard, cold cache": f"/dashboards/?{q}",
        "dashboard CSV (comparison)": f"/dashboards/export/comparison.csv?{q}",
        "case list (external FN)": f"/dashboards/cases/?model={version.pk}"
                                   "&split=external_test&worklist=fn",
        "case review": f"/dashboards/cases/{review_id}/?{q}&worklist=all",
        "heatmaps": f"/files/predictions/{review_id}/heatmaps.bin",
    }
    out = {}
    for who, user in users.items():
        client = Client()
        client.force_login(user)
        for name, url in urls.items():
            if who == "reader C1" and name == "case review":
                continue  # the reviewed case is at C5: 404 for this reader, as it should be
            if who == "reader C1" and name == "heatmaps":
                continue
            out[f"{who}: {name}"] = measure(client, url, repeats, cold="cold" in name)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1000,10000",
                        help="cumulative numbers of videos to measure at")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configured-db", action="store_true",
                        help="use DATABASE_URL instead of a throwaway SQLite file")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/dashboard.json")
    args = parser.parse_args(argv)
    scales = [int(s) for s in args.scales.split(",")]

    with tempfile.TemporaryDirectory(prefix="thyrocine-dash-bench-") as tmp:
        django_setup(Path(tmp), args.configured_db)
        from django.conf import settings
        from django.db import connection

        from annotations.models import Centre, CentreRole, Membership, PlatformRole, User
        from webapp.training.models import Prediction

        rng = np.random.default_rng(0)
        snapshot, versions = seed_registry()
        engineer = User.objects.create_user("bench-ml", platform_role=PlatformRole.ML_ENGINEER)
        reader = User.objects.create_user("bench-reader")
        Membership.objects.create(user=reader, centre=Centre.objects.get(code="C1"),
                                  role=CentreRole.READER)
        users = {"ML engineer": engineer, "reader C1": reader}
        results = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                               "platform": platform.platform(),
                               "database": connection.vendor,
                               "cache": settings.CACHES["default"]["BACKEND"]},
                   "scales": {}}
        done = 0
        for scale in scales:
            t0 = time.perf_counter()
            seed_cases(snapshot, versions, done, scale, rng)
            done = scale
            seeded = time.perf_counter() - t0
            review = Prediction.objects.filter(
                model_version=versions[0], video__nodule__patient__centre__code="C5",
            ).order_by("pk")[scale // 20]
            attach_heatmaps(review)
            rows = run_scale(users, versions[0], review.pk, args.repeats)
            results["scales"][str(scale)] = {
                "videos": scale, "predictions": Prediction.objects.count(),
                "seed_seconds": round(seeded, 1), "requests": rows}
            print(f"\n{scale} videos ({Prediction.objects.count()} predictions, "
                  f"seeded in {seeded:.1f} s)")
            for name, r in rows.items():
                print(f"  {name:42s} min {r['min_ms']:7.1f} ms  median {r['median_ms']:7.1f} ms"
                      f"  {r['queries']:3d} queries")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
