"""The model registry: immutable versions, exactly one in production, audited promotion and
rollback with the production model's metrics shown first, and loading that never unpickles."""

from __future__ import annotations

import pytest
import torch
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import DatabaseError, IntegrityError, transaction
from django.test import Client

from annotations.models import AuditEvent
from tests.conftest import make_user
from tests.webapp.training.conftest import frozen_snapshot, make_version
from webapp.training import services
from webapp.training.models import ModelState, ModelVersion, RunStatus, TrainingRun


def metrics(auroc: float, centres: dict[str, float]) -> dict:
    return {split: {"n": 10, "n_malignant": 5, "auroc": auroc, "auroc_ci": [0.5, 0.9],
                    "sensitivity": 0.8, "specificity": 0.7,
                    "centres": {c: {"n": 5, "n_malignant": 2, "auroc": a}
                                for c, a in centres.items()}}
            for split in ("val", "internal_test", "external_test")}


@pytest.fixture
def engineer(centre_a):
    return make_user("ml_engineer", centre_a)


@pytest.fixture
def versions(cohort, engineer):
    snapshot = frozen_snapshot(engineer, cohort)
    made = []
    for i, auroc in enumerate((0.71, 0.83), start=1):
        run = TrainingRun.objects.create(snapshot=snapshot, arch="irv2_cam", preset="small",
                                         status=RunStatus.SUCCEEDED, run_dir=f"runs/r{i}")
        made.append(make_version(run, number=i, metrics=metrics(auroc, {"CA": auroc,
                                                                        "CB": auroc - 0.1})))
    return made


@pytest.fixture
def promote(django_capture_on_commit_callbacks):
    def run(user, version):
        # As a request: the predictions are queued once the promotion is committed.
        with django_capture_on_commit_callbacks(execute=True):
            return services.model_promote(user=user, version=version)

    return run


def test_promotion_retires_the_previous_model_and_rollback_restores_it(
        versions, engineer, monkeypatch, promote):
    queued = []
    monkeypatch.setattr("webapp.training.tasks.predict_all.delay", queued.append)
    v1, v2 = versions
    promote(engineer, v1)
    promote(engineer, v2)
    v1.refresh_from_db()
    v2.refresh_from_db()
    assert (v1.state, v2.state) == (ModelState.RETIRED, ModelState.PRODUCTION)
    assert ModelVersion.objects.filter(state=ModelState.PRODUCTION).count() == 1
    promote(engineer, v1)  # rollback
    v1.refresh_from_db()
    v2.refresh_from_db()
    assert (v1.state, v2.state) == (ModelState.PRODUCTION, ModelState.RETIRED)
    events = list(AuditEvent.objects.filter(object_type="training.ModelVersion",
                                            action="change").order_by("id"))
    assert [(e.detail["kind"], e.detail["from"], e.detail["to"]) for e in events] == [
        ("promote", None, 1), ("promote", 1, 2), ("rollback", 2, 1)]
    assert all(e.username == engineer.username for e in events)
    assert events[1].detail["auroc"]["external_test"] == 0.83
    # Every promotion scores the ready videos with the new production model.
    assert queued == [v1.pk, v2.pk, v1.pk]
    with pytest.raises(services.ValidationError, match="already in production"):
        promote(engineer, v1)


def test_only_one_model_can_be_in_production(versions):
    v1, v2 = versions
    ModelVersion.objects.filter(pk=v1.pk).update(state=ModelState.PRODUCTION)
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.filter(pk=v2.pk).update(state=ModelState.PRODUCTION)


def test_a_model_version_cannot_be_altered(versions):
    v1, _ = versions
    for change in ({"checksum": "0" * 64}, {"threshold": 0.1}, {"metrics": {}},
                   {"weights": "elsewhere"}):
        with pytest.raises(DatabaseError), transaction.atomic():
            ModelVersion.objects.filter(pk=v1.pk).update(**change)
    v1.threshold = 0.2
    with pytest.raises(DatabaseError), transaction.atomic():
        v1.save()  # a full save sets every column: refused
    v1.refresh_from_db()
    assert v1.threshold == 0.5


def test_comparison_shows_production_first_with_per_centre_rows(versions, engineer,
                                                                monkeypatch, promote):
    monkeypatch.setattr("webapp.training.tasks.predict_all.delay", lambda *a: None)
    v1, v2 = versions
    promote(engineer, v1)
    client = Client()
    client.force_login(engineer)
    page = client.get(f"/training/models/{v2.pk}/").content.decode()
    table = page[page.index('data-testid="metrics-table"'):]
    assert table.index("v1 (production)") < table.index("v2 (this version)")
    assert "0.710" in table and "0.830" in table  # split rows, both models
    assert "0.610" in table and "0.730" in table  # centre CB rows, both models
    assert "Promote to production" in page
    promote(engineer, v2)
    page = client.get(f"/training/models/{v1.pk}/").content.decode()
    assert "Roll back to v1" in page


def test_loading_verifies_the_checksum_and_never_unpickles(versions, tmp_path):
    from ml.inference import load_model

    v1, _ = versions
    model, config = services.model_load(version=v1)
    assert config["threshold"] == 0.5 and not model.training
    # Weights that do not match the registered checksum are refused.
    tampered = ModelVersion.objects.get(pk=v1.pk)
    with default_storage.open(tampered.weights, "rb") as f:
        data = bytearray(f.read())
    data[-1] ^= 0xFF
    default_storage.delete(tampered.weights)
    default_storage.save(tampered.weights, ContentFile(bytes(data)))
    tampered.checksum = "f" * 64  # a different version whose file does not match
    tampered.pk = None
    with pytest.raises(services.ModelLoadError, match="checksum does not match"):
        services.model_load(version=tampered)
    tampered.weights_format = "pickle"
    with pytest.raises(services.ModelLoadError, match="not loadable"):
        services.model_load(version=tampered)

    # A torch checkpoint holding an arbitrary object is refused by ml's weights_only load.
    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    evil = tmp_path / "model.pt"
    torch.save({"model": Payload()}, evil)
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        load_model((evil, v1.config))
