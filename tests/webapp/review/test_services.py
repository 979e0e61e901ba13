"""Setting up a study, and a reader's session: order, washout, resume."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from annotations.models import PathologyOutcome, PathologySource, VideoStatus
from tests.conftest import make_user
from tests.factories import NoduleFactory, PathologyFactory, PatientFactory, VideoFactory
from tests.webapp.review.conftest import labelled_video
from webapp.review import services
from webapp.review.models import Design, Modality, Read, StudyStatus


def create(world, **kw):
    args = {"user": world["admin"], "name": "Study", "design": Design.SEQUENTIAL,
            "videos": world["videos"], "readers": world["readers"]}
    args.update(kw)
    return services.study_create(**args)


def submit(read, likelihood=50, call="malignant", level=3, now=None):
    return services.read_submit(read=read, likelihood=likelihood, call=call,
                                tirads_level=level, now=now)


def test_setup_records_truth_model_and_every_read(world):
    study = create(world)
    assert study.model_version == world["version"]
    assert sorted(study.cases.values_list("truth", flat=True)) == [0, 0, 1, 1]
    # 2 readers x 4 cases x 2 modalities, each reader's order 0..7
    assert Read.objects.filter(reader__study=study).count() == 16
    for reader in study.readers.all():
        assert sorted(reader.reads.values_list("order", flat=True)) == list(range(8))


def _bad_videos(world, centre_a):
    indeterminate = NoduleFactory(patient=PatientFactory(centre=centre_a))
    PathologyFactory(nodule=indeterminate, outcome=PathologyOutcome.INDETERMINATE,
                     diagnosis="", source=PathologySource.FNA, bethesda="III")
    return {
        "not_ready": world["videos"] + [labelled_video(centre_a, True,
                                                       status=VideoStatus.PROCESSING)],
        "no_label": world["videos"] + [VideoFactory(nodule=indeterminate)],
        "no_benign": world["videos"][:2],
    }


@pytest.mark.parametrize("change, message", [
    ({"name": "  "}, "needs a name"),
    ({"design": "parallel"}, "Unknown design"),
    ({"design": Design.WASHOUT, "washout_days": 0}, "at least one day"),
    ({"videos": "not_ready"}, "not ready"),
    ({"videos": "no_label"}, "no known label"),
    ({"videos": "no_benign"}, "at least 1 malignant and 1 benign"),
    ({"readers": "one"}, "at least 2 readers"),
    ({"readers": "twice"}, "listed twice"),
    ({"readers": "bad_experience"}, "junior or senior"),
])
def test_setup_validation(world, centre_a, change, message):
    key, value = next(iter(change.items()))
    if key == "videos":
        change = {"videos": _bad_videos(world, centre_a)[value]}
    if key == "readers":
        junior = world["junior"]
        change = {"readers": {"one": [(junior, "junior")],
                              "twice": [(junior, "junior"), (junior, "senior")],
                              "bad_experience": [(junior, "junior"),
                                                 (world["senior"], "expert")]}[value]}
    with pytest.raises(services.ValidationError, match=message):
        create(world, **change)
    assert not Read.objects.exists()


def test_only_platform_admins_set_up_studies(world, centre_a):
    with pytest.raises(services.PermissionDenied):
        create(world, user=make_user("centre_admin", centre_a))


def test_sequential_session_reads_each_case_unaided_then_aided(world):
    study = create(world)
    reader = study.readers.get(user=world["junior"])
    seen = []
    while (read := services.read_start_next(reader=reader)) is not None:
        seen.append((read.case_id, read.modality))
        if read.modality == Modality.AIDED:
            expected = dict(zip([v.pk for v in world["videos"]], world["probabilities"],
                                strict=True))[read.case.video_id]
            assert read.model_probability == pytest.approx(expected)
        else:
            assert read.model_probability is None
        submit(read)
    assert [m for _, m in seen] == ["unaided", "aided"] * 4
    assert [c for c, _ in seen[::2]] == [c for c, _ in seen[1::2]]
    study.refresh_from_db()
    assert study.status == StudyStatus.OPEN  # the senior has not read yet


def test_washout_refuses_the_aided_session_until_it_has_passed(world):
    study = create(world, design=Design.WASHOUT, washout_days=28)
    reader = study.readers.get(user=world["senior"])
    t0 = timezone.now()
    unaided_order = []
    for i in range(4):
        read = services.read_start_next(reader=reader, now=t0)
        assert read.modality == Modality.UNAIDED
        unaided_order.append(read.case_id)
        submit(read, now=t0 + timedelta(minutes=i + 1))
    last = t0 + timedelta(minutes=4)
    with pytest.raises(services.WashoutNotOver, match="washout of 28 days") as exc:
        services.read_start_next(reader=reader, now=last + timedelta(days=27))
    assert exc.value.opens_at == last + timedelta(days=28)
    read = services.read_start_next(reader=reader, now=last + timedelta(days=28, seconds=1))
    assert read.modality == Modality.AIDED
    aided_order = list(reader.reads.filter(modality="aided").order_by("order")
                       .values_list("case_id", flat=True))
    assert sorted(aided_order) == sorted(unaided_order)


def test_reload_resumes_the_same_read_with_its_clock(world):
    study = create(world)
    reader = study.readers.get(user=world["junior"])
    t0 = timezone.now()
    first = services.read_start_next(reader=reader, now=t0)
    again = services.read_start_next(reader=reader, now=t0 + timedelta(seconds=30))
    assert again.pk == first.pk and again.started_at == t0
    done = submit(again, now=t0 + timedelta(seconds=42))
    assert done.seconds == pytest.approx(42)
    assert services.read_start_next(reader=reader).pk != first.pk


@pytest.mark.parametrize("kwargs, message", [
    ({"likelihood": 101}, "0 to 100"),
    ({"call": "maybe"}, "benign or malignant"),
    ({"tirads_level": None}, "TI-RADS level"),
    ({"tirads_level": None, "tirads_features": {"composition": "solid"}}, "TI-RADS features"),
    ({"tirads_level": 2, "tirads_features": {
        "composition": "solid", "echogenicity": "very_hypo", "shape": "taller",
        "margin": "smooth", "echogenic_foci": ["punctate"]}}, "score TR5, not TR2"),
])
def test_read_validation(world, kwargs, message):
    study = create(world)
    read = services.read_start_next(reader=study.readers.first())
    args = {"read": read, "likelihood": 60, "call": "malignant", "tirads_level": 4}
    args.update(kwargs)
    with pytest.raises(services.ValidationError, match=message):
        services.read_submit(**args)


def test_tirads_from_features_and_no_rereading(world):
    study = create(world)
    read = services.read_start_next(reader=study.readers.first())
    done = services.read_submit(read=read, likelihood=80, call="malignant", tirads_features={
        "composition": "solid", "echogenicity": "very_hypo", "shape": "taller",
        "margin": "smooth", "echogenic_foci": ["punctate"]})
    assert done.tirads_level == 5 and done.tirads_features["points"] == 2 + 3 + 3 + 0 + 3
    with pytest.raises(services.ValidationError, match="already been read"):
        submit(done)


def test_out_of_order_read_is_refused(world):
    study = create(world)
    reader = study.readers.first()
    later = reader.reads.get(order=3)
    later.started_at = timezone.now()
    later.save()
    with pytest.raises(services.ValidationError, match="order given"):
        submit(later)
