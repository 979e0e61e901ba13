"""The model registry: register a finished run as an immutable model version, promote and
roll back (audited), and load a version's weights safely for inference."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path

from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import Max, Q
from django.utils import timezone

from annotations.models import AuditAction, User
from annotations.services import audit_record
from webapp.training.conf import training_dir
from webapp.training.models import ModelState, ModelVersion, TrainingRun
from webapp.training.selectors import headline
from webapp.training.services.common import ValidationError, require_promote

logger = logging.getLogger(__name__)

WEIGHTS_FORMATS = ("safetensors",)


class ModelLoadError(Exception):
    """A model version's weights cannot be loaded safely (missing, altered, wrong format)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(4 * 1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def model_version_register(*, run: TrainingRun, run_dir: Path) -> ModelVersion:
    """Store a finished run's best weights (safetensors), configuration and metrics as the
    next model version, a candidate. Runs inside the caller's transaction."""
    from ml.inference import load_model

    run_dir = Path(run_dir)
    weights = run_dir / "model.safetensors"
    config = json.loads((run_dir / "config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if config.get("threshold") is None:
        raise ValueError(f"{run_dir} has no frozen threshold")
    # Proves that the weights fit the architecture before anyone can promote them.
    load_model((weights, config), device="cpu")
    checksum = sha256_file(weights)
    for _ in range(5):  # two runs finishing at once may draw the same number: draw again
        number = (ModelVersion.objects.aggregate(n=Max("number"))["n"] or 0) + 1
        prefix = f"models/v{number}-{checksum[:12]}"
        with weights.open("rb") as f:
            stored = default_storage.save(f"{prefix}/model.safetensors", File(f))
        try:
            with transaction.atomic():
                version = ModelVersion.objects.create(
                    number=number, run=run, snapshot_id=run.snapshot_id, arch=run.arch,
                    preset=run.preset, config=config, threshold=float(config["threshold"]),
                    metrics=metrics, weights=stored, weights_format="safetensors",
                    checksum=checksum, code_version=str(config.get("code_version", ""))[:64],
                )
            break
        except IntegrityError:
            default_storage.delete(stored)
            if ModelVersion.objects.filter(run=run).exists():
                raise
    else:  # pragma: no cover - five collisions in a row
        raise RuntimeError("could not allocate a model version number")
    for name in ("config.json", "metrics.json", "predictions.csv"):
        if (run_dir / name).is_file():
            default_storage.save(f"{prefix}/{name}", ContentFile((run_dir / name).read_bytes()))
    audit_record(user=None, action=AuditAction.CREATE, obj=version,
                 detail={"run": run.pk, "launched_by": run.created_by.get_username()
                         if run.created_by else "", "checksum": checksum,
                         "auroc": headline(version)})
    return version


@transaction.atomic
def model_promote(*, user: User, version: ModelVersion, ip_address: str | None = None
                  ) -> ModelVersion:
    """Put `version` in production and retire the current one; promoting a retired version
    is a rollback. Audited; every ready video is then scored by the new production model."""
    from webapp.training.services.predictions import predictions_enqueue_for_version

    require_promote(user)
    locked = list(ModelVersion.objects.select_for_update().filter(
        Q(pk=version.pk) | Q(state=ModelState.PRODUCTION)))
    version = next(v for v in locked if v.pk == version.pk)
    if version.state == ModelState.PRODUCTION:
        raise ValidationError(f"Model v{version.number} is already in production.")
    previous = next((v for v in locked if v.state == ModelState.PRODUCTION), None)
    kind = "rollback" if version.state == ModelState.RETIRED else "promote"
    now = timezone.now()
    if previous is not None:
        previous.state, previous.retired_at = ModelState.RETIRED, now
        previous.save(update_fields=["state", "retired_at"])
    version.state, version.promoted_at, version.retired_at = ModelState.PRODUCTION, now, None
    version.save(update_fields=["state", "promoted_at", "retired_at"])
    audit_record(user=user, action=AuditAction.CHANGE, obj=version, ip_address=ip_address,
                 detail={"kind": kind, "to": version.number,
                         "from": previous.number if previous else None,
                         "auroc": headline(version),
                         "previous_auroc": headline(previous) if previous else None})
    transaction.on_commit(lambda: predictions_enqueue_for_version(version_id=version.pk))
    return version


# --- Loading for inference ------------------------------------------------------------------

_cache: dict[int, tuple[str, object, dict, str]] = {}
_cache_lock = threading.Lock()


def _local_weights(version: ModelVersion) -> Path:
    """The version's weights on this host, verified against the registered SHA-256."""
    if version.weights_format not in WEIGHTS_FORMATS:
        raise ModelLoadError(f"model v{version.number}: weights format "
                             f"{version.weights_format!r} is not loadable")
    folder = training_dir() / "models"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{version.checksum}.safetensors"
    if not path.is_file():
        tmp = path.with_suffix(".part")
        try:
            with default_storage.open(version.weights, "rb") as src, tmp.open("wb") as dst:
                while block := src.read(4 * 1024 * 1024):
                    dst.write(block)
        except (FileNotFoundError, OSError) as exc:
            raise ModelLoadError(f"model v{version.number}: weights missing from storage "
                                 f"({version.weights})") from exc
        tmp.replace(path)
    if sha256_file(path) != version.checksum:
        path.unlink(missing_ok=True)
        raise ModelLoadError(f"model v{version.number}: the weights' checksum does not match "
                             "the registry; refusing to load them")
    return path


def model_load(*, version: ModelVersion, device: str = "cpu"):
    """(model in eval mode, config) for a version; kept in memory for the next call. Weights
    load from safetensors, which holds tensors only: nothing is ever unpickled."""
    from ml.inference import load_model

    with _cache_lock:
        hit = _cache.get(version.pk)
        if hit is not None and hit[0] == version.checksum and hit[3] == device:
            return hit[1], hit[2]
        model, config = load_model((_local_weights(version), version.config), device=device)
        _cache.clear()  # one model at a time: the production one
        _cache[version.pk] = (version.checksum, model, config, device)
        return model, config
