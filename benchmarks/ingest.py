"""Ingestion benchmark: how the whole processing of a video compares with the time OpenCV
needs just to decode it, and the memory the web and worker processes need for a 2 GB upload.

    .venv/bin/python benchmarks/ingest.py                 # 60 s, 30 fps, 1280x720 MP4
    .venv/bin/python benchmarks/ingest.py --big-gb 2      # and a 2 GB upload, received and
                                                          # processed in separate processes

1. Writes a 60-second, 30 fps, 1280x720 MP4 (MPEG-4 Part 2, what OpenCV writes): a synthetic
   sweep (`ml.synthetic`: speckle, nodule, burned-in overlay) played forth and back, upscaled,
   with per-frame noise.
2. The decode floor: `cv2.VideoCapture.read()` over every frame, nothing else.
3. The whole processing, as the worker runs it (`annotations.services.video_process`): SHA-256,
   duplicate check, magic bytes, de-identification, one decoding pass with region detection,
   blanking, the JPEG frame store, thumbnail, training clip and the blanked kept source that
   replaces the upload in storage, and the row update.
   Floor and processing alternate `--repeats` times (3); the minima are compared.
4. With --big-gb: a Motion-JPEG AVI of that size (noise frames) is streamed into a resumable
   upload session (`services.upload_append`, 64 MiB per PATCH as the tus endpoint receives it)
   by one process and processed by another; each reports its peak resident memory (ru_maxrss).

Everything runs in a temporary folder with its own SQLite database; results go to stdout and
to --out as JSON. Record the figures in docs/benchmarks.md with the machine and command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent


def sweep_source(n: int = 60, seed: int = 0) -> np.ndarray:
    """A synthetic sweep from `ml.synthetic` (speckle, a nodule, calcifications, the centre's
    burned-in overlay) at its native size, (n, H, W, 3) RGB."""
    from ml.synthetic import generate_one

    return generate_one(seed, 0, frames=n).frames


def write_big(path: Path, *, fps: float, size: tuple[int, int], max_bytes: int) -> int:
    """A Motion-JPEG AVI of at least `max_bytes`: full-range noise frames (about 2.7 MB each
    at 1280x720), cycled, so the file grows quickly; the content does not matter for memory."""
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 100)
    rng = np.random.default_rng(2)
    pool = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(16)]
    n = 0
    try:
        while n % 50 or path.stat().st_size < max_bytes:
            writer.write(pool[n % len(pool)])
            n += 1
    finally:
        writer.release()
    return n


def write_sweep(path: Path, *, frames: int, fps: float, size: tuple[int, int],
                fourcc: str) -> int:
    """Write a sweep of `frames` frames at `size`: the synthetic sweep played forth and back,
    upscaled, with fresh noise in every frame (so no two frames are identical)."""
    width, height = size
    source = sweep_source()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise SystemExit(f"OpenCV cannot write {fourcc} to {path}")
    rng = np.random.default_rng(1)
    period = 2 * len(source) - 2
    try:
        for n in range(frames):
            k = n % period
            rgb = source[k if k < len(source) else period - k]
            frame = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), (width, height),
                               interpolation=cv2.INTER_LINEAR)
            noise = rng.integers(-3, 4, frame.shape[:2], dtype=np.int16)[..., None]
            writer.write(np.clip(frame + noise, 0, 255).astype(np.uint8))
    finally:
        writer.release()
    return frames


def decode_floor(path: Path) -> tuple[float, int]:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    t0 = time.perf_counter()
    n = 0
    ok, frame = cap.read()
    while ok:
        n += 1
        ok, frame = cap.read(frame)
    seconds = time.perf_counter() - t0
    cap.release()
    return seconds, n


def django_setup(var: Path) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    os.environ["THYROCINE_VAR_DIR"] = str(var)
    os.environ["MEDIA_ROOT"] = str(var / "media")
    os.environ["DATABASE_URL"] = f"sqlite:///{var / 'bench.sqlite3'}"
    os.environ.pop("REDIS_URL", None)
    os.environ["LOG_LEVEL"] = "WARNING"
    sys.path.insert(0, str(REPO))
    import django

    django.setup()


def make_nodule():
    from annotations.models import Centre, Nodule, Patient

    centre, _ = Centre.objects.get_or_create(code="BENCH", defaults={"name": "Benchmark"})
    patient = Patient.objects.create(centre=centre, code=f"B-{time.time_ns()}")
    return Nodule.objects.create(patient=patient, code="N1")


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss
    over an exec, so a child would report its parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# --- child processes for the memory measurement ---------------------------------------------


def child_receive(var: Path, source: Path) -> dict:
    """The web side: stream `source` into an upload session, 64 MiB per PATCH."""
    django_setup(var)
    from annotations import services
    from annotations.models import User

    user, _ = User.objects.get_or_create(username="bench", platform_role="platform_admin")
    nodule = make_nodule()
    size = source.stat().st_size
    upload = services.upload_create(user=user, nodule=nodule, length=size, filename=source.name)
    patch = 64 * 1024 * 1024
    t0 = time.perf_counter()
    with source.open("rb") as stream:
        offset = 0
        while offset < size:
            upload = services.upload_append(upload=upload, offset=offset, stream=stream,
                                            max_bytes=patch)
            offset = upload.offset
    upload.refresh_from_db()
    return {"video": upload.video_id, "seconds": time.perf_counter() - t0,
            "peak_rss_mb": peak_rss_mb(), "bytes": size}


def child_process(var: Path, video_id: int) -> dict:
    """The worker side: process the uploaded video."""
    django_setup(var)
    from annotations import services
    from annotations.models import Video

    video = Video.objects.get(pk=video_id)
    t0 = time.perf_counter()
    services.video_process(video=video)
    video.refresh_from_db()
    return {"status": video.status, "reason": video.failure_reason,
            "frames": video.frame_count, "seconds": time.perf_counter() - t0,
            "peak_rss_mb": peak_rss_mb(), "kept_source_bytes": kept_source_bytes(video)}


def kept_source_bytes(video) -> int:
    """Size of what storage keeps instead of the upload (blanked, annotations.kept_source)."""
    from django.core.files.storage import default_storage

    return default_storage.size(video.file.name)


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True,
                         text=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- main -----------------------------------------------------------------------------------


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "opencv": cv2.__version__, "load_average": os.getloadavg()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--big-gb", type=float, default=0.0,
                        help="also measure memory with an upload of this many GB")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/ingest.json")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        mode, var, arg = args.child
        result = (child_receive(Path(var), Path(arg)) if mode == "receive"
                  else child_process(Path(var), int(arg)))
        print(json.dumps(result))
        return

    width, height = (int(v) for v in args.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="thyrocine-bench-"))
    report: dict = {"machine": machine(), "command": " ".join(["benchmarks/ingest.py",
                                                               *(argv or sys.argv[1:])])}
    try:
        var = tmp / "var"
        django_setup(var)
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        from annotations import services
        from annotations.conf import incoming_dir

        video_path = tmp / "sweep.mp4"
        t0 = time.perf_counter()
        n = write_sweep(video_path, frames=round(args.seconds * args.fps), fps=args.fps,
                        size=(width, height), fourcc="mp4v")
        print(f"wrote {n} frames, {video_path.stat().st_size / 1e6:.1f} MB in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)

        # Interleaved repeats, because other work shares the machine: the floor and the
        # processing are each measured `--repeats` times, alternately, and the minima compared.
        floors, totals, stores, kept = [], [], [], []
        for i in range(args.repeats):
            seconds, frames = decode_floor(video_path)
            floors.append(seconds)
            print(f"decode floor: {seconds:.2f} s for {frames} frames", flush=True)
            # A distinct file each time (an empty 'free' box appended), or it is a duplicate.
            incoming = incoming_dir() / f"bench-{i}.upload"
            shutil.copyfile(video_path, incoming)
            with incoming.open("ab") as f:
                f.write(b"\x00\x00\x00\x08free" * (i + 1))
            video = services.video_register(nodule=make_nodule(), incoming=incoming,
                                            filename="sweep.mp4", enqueue=False)
            t0 = time.perf_counter()
            services.video_process(video=video)
            totals.append(time.perf_counter() - t0)
            video.refresh_from_db()
            assert video.status == "ready", video.failure_reason
            assert video.frame_count == frames
            stores.append(video.processing_seconds)
            kept.append(kept_source_bytes(video))
            print(f"whole processing: {totals[-1]:.2f} s", flush=True)
        floor, total = min(floors), min(totals)
        report["video"] = {"frames": frames, "size": args.size, "fps": args.fps,
                           "bytes": video_path.stat().st_size}
        report["decode_floor_s"] = [round(v, 2) for v in floors]
        report["processing_s"] = [round(v, 2) for v in totals]
        report["decode_and_store_s"] = stores
        report["kept_source_bytes"] = kept[-1]
        report["ratio_of_minima"] = round(total / floor, 2)
        report["ratio_of_medians"] = round(float(np.median(totals) / np.median(floors)), 2)
        print(f"whole processing {total:.2f} s = {total / floor:.2f} x the decode floor "
              f"({floor:.2f} s), minima of {args.repeats} interleaved runs", flush=True)

        if args.big_gb:
            big = tmp / "big.avi"
            t0 = time.perf_counter()
            n = write_big(big, fps=args.fps, size=(width, height),
                          max_bytes=int(args.big_gb * 1e9))
            print(f"wrote {big.stat().st_size / 1e9:.2f} GB ({n} frames) in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
            received = run_child("--child", "receive", str(var), str(big))
            print(f"received in {received['seconds']:.0f} s, web peak "
                  f"{received['peak_rss_mb']:.0f} MB", flush=True)
            processed = run_child("--child", "process", str(var), str(received["video"]))
            print(f"processed {processed['frames']} frames in {processed['seconds']:.0f} s "
                  f"({processed['status']} {processed['reason']}), worker peak "
                  f"{processed['peak_rss_mb']:.0f} MB", flush=True)
            report["big_upload"] = {"bytes": received["bytes"], "frames": processed["frames"],
                                    "receive": received, "process": processed}
        report["bench_process_peak_rss_mb"] = round(peak_rss_mb(), 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
