"""Case pages: the per-centre case list (filters, counts, pagination), the new-case form that
creates patient and nodule, the pathology form's validation, and the audit of views."""

from __future__ import annotations

import pytest

from annotations.models import AuditEvent, Nodule, Pathology, Patient, VideoStatus
from tests.conftest import make_user
from tests.factories import NoduleFactory, PathologyFactory, PatientFactory, VideoFactory


@pytest.fixture
def cases(db, centre_a, centre_b):
    rows = []
    for i in range(30):
        nodule = NoduleFactory(patient=PatientFactory(centre=centre_a, code=f"A{i:03d}"),
                               code="N1")
        if i % 3 == 0:
            PathologyFactory(nodule=nodule)  # malignant histology
        elif i % 3 == 1:
            PathologyFactory(nodule=nodule, outcome="benign", source="fna", bethesda="II",
                             diagnosis="")
        VideoFactory(nodule=nodule, status=VideoStatus.FAILED if i == 4 else VideoStatus.READY)
        rows.append(nodule)
    NoduleFactory(patient=PatientFactory(centre=centre_b, code="B-HIDDEN"))
    return rows


def test_case_list_filters_counts_and_pages(cases, client, centre_a):
    client.force_login(make_user("reader", centre_a))
    page = client.get("/centres/CA/cases/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Page 1 of 2 · 30 cases" in html and "B-HIDDEN" not in html
    counts = page.context["counts"]
    assert counts["labels"] == {"malignant": 10, "benign": 10, "missing": 10}
    assert counts["statuses"] == {"ready": 29, "failed": 1}

    failed = client.get("/centres/CA/cases/?status=failed")
    assert [n.patient.code for n in failed.context["page"]] == ["A004"]
    benign = client.get("/centres/CA/cases/?label=benign")
    assert benign.context["page"].paginator.count == 10
    assert all(n.label == "benign" for n in benign.context["page"])
    search = client.get("/centres/CA/cases/?q=A02")
    assert search.context["page"].paginator.count == 10
    second = client.get("/centres/CA/cases/?page=2")
    assert len(second.context["page"]) == 5


def test_new_case_form_creates_patient_and_nodule(db, client, centre_a):
    client.force_login(make_user("annotator", centre_a))
    form = {"patient_code": "CA-NEW-1", "sex": "F", "age_at_exam": "51", "nodule_code": "N2",
            "location": "left", "max_diameter_mm": "8.5", "scan_plane": "sweep"}
    response = client.post("/centres/CA/cases/new/", form, HTTP_ACCEPT="application/json")
    assert response.status_code == 201
    nodule = Nodule.objects.get(pk=response.json()["nodule"])
    assert (nodule.patient.code, nodule.code, str(nodule.max_diameter_mm)) == \
        ("CA-NEW-1", "N2", "8.5")
    again = client.post("/centres/CA/cases/new/", form, HTTP_ACCEPT="application/json")
    assert again.status_code == 400
    assert "Nodule N2 already exists for patient CA-NEW-1" in again.content.decode()
    # Without JavaScript: a redirect to the nodule page, where videos are dropped.
    form["nodule_code"] = "N3"
    plain = client.post("/centres/CA/cases/new/", form)
    assert plain.status_code == 302 and plain["Location"].startswith("/nodules/")
    assert Patient.objects.filter(code="CA-NEW-1").count() == 1
    assert AuditEvent.objects.filter(action="create", object_type="annotations.Nodule").count() \
        == 2


PATHOLOGY_FORMS = [
    ({"outcome": "benign", "source": "surgery", "bethesda": "II",
      "diagnosis": "follicular_adenoma"},
     "A Bethesda category is recorded only when the source is FNA cytology."),
    ({"outcome": "benign", "source": "fna"}, "FNA cytology needs its Bethesda category"),
    ({"outcome": "benign", "source": "fna", "bethesda": "VI"},
     "Bethesda VI cytology means the outcome is malignant."),
    ({"outcome": "benign", "source": "surgery", "diagnosis": "papillary_carcinoma"},
     "Papillary thyroid carcinoma is malignant: the outcome must be malignant."),
    ({"outcome": "malignant", "source": "surgery", "diagnosis": "niftp"},
     "NIFTP is a low-risk neoplasm, not malignant."),
    ({"outcome": "malignant", "source": "surgery"}, "Surgical histology needs a diagnosis"),
    ({"outcome": "benign", "source": "fna", "bethesda": "II", "date": "2999-01-01"},
     "The pathology date is in the future."),
]


@pytest.mark.parametrize("data,message", PATHOLOGY_FORMS)
def test_pathology_form_refuses_inconsistent_results(db, client, centre_a, data, message):
    nodule = NoduleFactory(patient=PatientFactory(centre=centre_a))
    client.force_login(make_user("annotator", centre_a))
    response = client.post(f"/nodules/{nodule.pk}/pathology/", data)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Pathology.objects.exists()


def test_pathology_form_saves_and_the_nodule_page_shows_the_label(db, client, centre_a):
    nodule = NoduleFactory(patient=PatientFactory(centre=centre_a))
    client.force_login(make_user("annotator", centre_a))
    response = client.post(f"/nodules/{nodule.pk}/pathology/",
                           {"outcome": "malignant", "source": "fna", "bethesda": "VI"})
    assert response.status_code == 302
    page = client.get(f"/nodules/{nodule.pk}/").content.decode()
    assert 'data-testid="training-label">malignant<' in page
    assert AuditEvent.objects.filter(action="view", object_type="annotations.Nodule").exists()
    assert AuditEvent.objects.filter(action="create",
                                     object_type="annotations.Pathology").exists()


def test_api_creates_cases_through_the_same_rules(db, centre_a, centre_b):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(make_user("annotator", centre_a))
    patient = client.post("/api/patients/", {"centre": centre_a.pk, "code": "API-1",
                                             "sex": "M"}, format="json")
    assert patient.status_code == 201, patient.content
    assert client.post("/api/patients/", {"centre": centre_b.pk, "code": "X"},
                       format="json").status_code == 404
    nodule = client.post("/api/nodules/", {"patient": patient.json()["id"], "code": "N1"},
                         format="json")
    assert nodule.status_code == 201
    bad = client.post("/api/pathology/", {"nodule": nodule.json()["id"], "outcome": "benign",
                                          "source": "surgery", "bethesda": "II"},
                      format="json")
    assert bad.status_code == 400 and "only when the source is FNA" in bad.json()["detail"]
    good = client.post("/api/pathology/", {"nodule": nodule.json()["id"],
                                           "outcome": "malignant", "source": "fna",
                                           "bethesda": "VI"}, format="json")
    assert good.status_code == 201 and good.json()["training_label"] == 1


@pytest.mark.parametrize("role,status", [("platform_admin", 200), ("centre_admin", 302)])
def test_centre_masks_are_administered_on_the_admin_site(db, client, centre_a, role, status):
    from annotations.models import CentreMask

    CentreMask.objects.create(centre=centre_a, label="GE banner", x=0, y=0, w=640, h=100)
    client.force_login(make_user(role, centre_a))
    response = client.get("/admin/annotations/centremask/")
    assert response.status_code == status
    assert (b"GE banner" in response.content) is (status == 200)


def test_case_list_filters_by_annotation_progress(cases, client, centre_a):
    from annotations.models import Annotation

    annotator = make_user("annotator", centre_a)
    started, accepted = cases[0].videos.get(), cases[1].videos.get()
    Annotation.objects.create(video=started, annotator=annotator, state="draft")
    Annotation.objects.create(video=accepted, annotator=annotator, state="submitted")
    Annotation.objects.create(video=accepted, is_consensus=True, state="accepted")
    client.force_login(make_user("reader", centre_a))

    def codes(progress):
        page = client.get(f"/centres/CA/cases/?progress={progress}").context["page"]
        return {n.patient.code for n in page.paginator.object_list}

    assert codes("in_progress") == {"A000"}
    assert codes("accepted") == {"A001"}
    assert len(codes("none")) == 28 and "A000" not in codes("none")
    html = client.get("/centres/CA/cases/?q=A001").content.decode()
    assert "consensus accepted" in html
