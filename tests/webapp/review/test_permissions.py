"""Who sees what, as a table: role x page -> status. Platform administrators set up studies
and see results and the export; a reader sees the studies they read in and their own reading
pages; everyone else gets 404. Reading pages never show pathology."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from annotations.models import PlatformRole
from tests.conftest import make_user
from webapp.review import services
from webapp.review.models import Design, ReaderStudy

ROLES = ["annotator", "reader", "centre_admin", PlatformRole.ML_ENGINEER,
         PlatformRole.PLATFORM_ADMIN, "study_reader", "other_study_reader"]

# page -> roles that get 200 (everyone else: 404; the list page answers 200 to everyone,
# and shows only the studies they may see).
ALLOWED = {
    "review-study-new": {"platform_admin"},
    "review-study": {"platform_admin", "study_reader"},
    "review-read": {"study_reader"},
    "review-results": {"platform_admin"},
    "review-export": {"platform_admin"},
}


@pytest.fixture
def setup(world, centre_a, centre_b):
    study = services.study_create(user=world["admin"], name="Blinded study",
                                  design=Design.SEQUENTIAL, videos=world["videos"],
                                  readers=world["readers"])
    other = services.study_create(user=world["admin"], name="Other study",
                                  design=Design.SEQUENTIAL, videos=world["videos"],
                                  readers=[(make_user("annotator", centre_b), "junior"),
                                           (world["senior"], "senior")])
    users = {role: make_user(role, centre_a) for role in ROLES[:4]}
    users["platform_admin"] = world["admin"]
    users["study_reader"] = world["junior"]
    users["other_study_reader"] = other.readers.get(user__username="annotator-cb").user
    return study, other, users


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("page", list(ALLOWED))
def test_page_permissions(setup, role, page):
    study, _, users = setup
    client = Client()
    client.force_login(users[role])
    url = reverse(page) if page == "review-study-new" else reverse(page, args=[study.pk])
    expected = 200 if role in ALLOWED[page] else 404
    assert client.get(url).status_code == expected


@pytest.mark.parametrize("role, visible", [
    ("platform_admin", {"Blinded study", "Other study"}),
    ("study_reader", {"Blinded study"}),
    ("other_study_reader", {"Other study"}),
    ("reader", set()),
    (PlatformRole.ML_ENGINEER, set()),
])
def test_study_list_shows_only_studies_the_user_may_see(setup, role, visible):
    _, _, users = setup
    client = Client()
    client.force_login(users[role])
    page = client.get(reverse("review-studies")).content.decode()
    for name in {"Blinded study", "Other study"}:
        assert (name in page) is (name in visible)


def test_only_platform_admins_create_studies_through_the_form(world, centre_a):
    data = {"name": "Posted", "design": "sequential", "washout_days": 0, "seed": 0,
            "videos": [str(v.pk) for v in world["videos"]],
            "juniors": [str(world["junior"].pk)], "seniors": [str(world["senior"].pk)]}
    client = Client()
    client.force_login(make_user("centre_admin", centre_a))
    assert client.post(reverse("review-study-new"), data).status_code == 404
    assert not ReaderStudy.objects.exists()
    client.force_login(world["admin"])
    response = client.post(reverse("review-study-new"), data)
    study = ReaderStudy.objects.get(name="Posted")
    assert response.status_code == 302 and study.readers.count() == 2
    # A rule broken: the service's message on the form, nothing created.
    response = client.post(reverse("review-study-new"), {**data, "name": "Short",
                                                         "videos": data["videos"][:2]})
    assert "at least 1 malignant and 1 benign" in response.content.decode()
    assert not ReaderStudy.objects.filter(name="Short").exists()


def test_reading_pages_are_blinded(setup, world):
    study, _, users = setup
    client = Client()
    client.force_login(users["study_reader"])
    pages = []
    for _ in range(2):  # the unaided and the aided read of the first case
        page = client.get(reverse("review-read", args=[study.pk]))
        pages.append(page.content.decode())
        read = page.context["read"]
        client.post(reverse("review-read-submit", args=[study.pk, read.pk]),
                    {"likelihood": 70, "call": "malignant", "tirads_level": 4})
    video = read.case.video
    pathology = video.nodule.pathology
    for html in pages:
        for secret in (pathology.get_diagnosis_display(), "Papillary", video.nodule.code,
                       video.nodule.patient.code):
            assert secret not in html
    assert "Model" not in pages[0] and "model-probability" in pages[1]


def test_chunks_only_for_the_reader_of_the_read(setup):
    study, _, users = setup
    read = study.readers.get(user=users["study_reader"]).reads.first()
    url = reverse("review-case-chunk", args=[study.pk, read.pk, 0])
    for role in ("platform_admin", "other_study_reader", "senior"):
        client = Client()
        client.force_login(users.get(role) or study.readers.get(experience="senior").user)
        assert client.get(url).status_code == 404


def test_washout_page_refuses_the_aided_session_with_its_date(world):
    study = services.study_create(user=world["admin"], name="Washout", design=Design.WASHOUT,
                                  washout_days=28, videos=world["videos"],
                                  readers=world["readers"])
    client = Client()
    client.force_login(world["junior"])
    for _ in range(4):
        read = client.get(reverse("review-read", args=[study.pk])).context["read"]
        assert read.modality == "unaided"
        client.post(reverse("review-read-submit", args=[study.pk, read.pk]),
                    {"likelihood": 20, "call": "benign", "tirads_level": 2})
    response = client.get(reverse("review-read", args=[study.pk]))
    assert response.status_code == 409
    assert "aided session opens on" in response.content.decode()
    assert "washout of 28 days" in response.content.decode()


def test_heatmap_only_in_the_aided_read_of_its_reader(world, settings, tmp_path):
    import io

    import numpy as np
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from webapp.dashboards.heatmaps import decode

    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(tmp_path / "media")}}}
    gradcam = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, gradcam=gradcam)
    name = default_storage.save("heatmaps/test.npz", ContentFile(buffer.getvalue()))
    world["version"].predictions.update(heatmaps=name, region=[0, 0, 4, 3])
    study = services.study_create(user=world["admin"], name="Heat", design=Design.SEQUENTIAL,
                                  videos=world["videos"], readers=world["readers"])
    reader = study.readers.get(user=world["junior"])
    client = Client()
    client.force_login(world["junior"])
    unaided = client.get(reverse("review-read", args=[study.pk])).context["read"]
    url = reverse("review-case-heatmaps", args=[study.pk, unaided.pk])
    assert client.get(url).status_code == 404  # the unaided read stays unaided
    client.post(reverse("review-read-submit", args=[study.pk, unaided.pk]),
                {"likelihood": 70, "call": "malignant", "tirads_level": 4})
    page = client.get(reverse("review-read", args=[study.pk]))
    aided = page.context["read"]
    assert aided.modality == "aided" and 'data-testid="show-heatmap"' in page.content.decode()
    url = reverse("review-case-heatmaps", args=[study.pk, aided.pk])
    response = client.get(url)
    assert response.status_code == 200
    assert np.array_equal(decode(response.content)[0], gradcam)
    client.force_login(world["senior"])
    assert client.get(url).status_code == 404
    assert reader.reads.filter(modality="aided", started_at__isnull=False).count() == 1


def test_a_resubmitted_read_changes_nothing_and_moves_on(world):
    study = services.study_create(user=world["admin"], name="Twice", design=Design.SEQUENTIAL,
                                  videos=world["videos"], readers=world["readers"])
    client = Client()
    client.force_login(world["junior"])
    read = client.get(reverse("review-read", args=[study.pk])).context["read"]
    url = reverse("review-read-submit", args=[study.pk, read.pk])
    client.post(url, {"likelihood": 70, "call": "malignant", "tirads_level": 4})
    again = client.post(url, {"likelihood": 10, "call": "benign", "tirads_level": 1},
                        follow=True)
    assert again.context["read"].pk != read.pk
    read.refresh_from_db()
    assert (read.likelihood, read.call) == (70, "malignant")
