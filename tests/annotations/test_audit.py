"""The audit log: who viewed, created, changed, exported or deleted which case object."""

import pytest
from django.db import DatabaseError, transaction
from rest_framework.test import APIClient

from annotations.models import AuditEvent
from annotations.services import audit_record
from tests.conftest import make_user


def test_viewing_a_patient_through_the_api_is_audited(centre_a, case_tree):
    tree = case_tree(centre_a)
    user = make_user("annotator", centre_a)
    client = APIClient()
    client.force_authenticate(user)
    assert client.get(f"/api/patients/{tree['patient'].pk}/").status_code == 200
    event = AuditEvent.objects.get()
    assert (event.username, event.action, event.centre_code) == (user.username, "view", "CA")
    assert event.object_type == "annotations.Patient"
    assert event.object_id == str(tree["patient"].pk)


def test_membership_change_is_audited_and_survives_the_user(centre_a, client):
    admin = make_user("centre_admin", centre_a)
    member = make_user("annotator", centre_a)
    membership = member.memberships.get()
    client.force_login(admin)
    response = client.post(f"/centres/CA/members/{membership.pk}/remove/")
    assert response.status_code == 302
    event = AuditEvent.objects.get(action="delete")
    assert event.detail == {"member": member.username, "role": "annotator"}
    admin.delete()
    event = AuditEvent.objects.get(pk=event.pk)
    assert event.username == admin.username  # the name outlives the account


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("statement", ["update", "delete"])
def test_audit_rows_cannot_be_changed_or_deleted(statement):
    from django.db import connection

    if statement == "delete" and connection.vendor != "postgresql":
        pytest.skip("deletes are refused on PostgreSQL only (see migration 0002)")
    event = audit_record(user=None, action="export", object_type="dataset")
    with pytest.raises(DatabaseError, match="append-only"):
        with transaction.atomic():
            if statement == "update":
                AuditEvent.objects.filter(pk=event.pk).update(action="view")
            else:
                AuditEvent.objects.filter(pk=event.pk).delete()
    assert AuditEvent.objects.get(pk=event.pk).action == "export"


def test_audit_page_filters_by_centre_and_user(centre_a, centre_b, case_tree, client):
    tree_a, tree_b = case_tree(centre_a), case_tree(centre_b)
    reader_a = make_user("reader", centre_a)
    reader_b = make_user("reader", centre_b)
    audit_record(user=reader_a, action="view", obj=tree_a["patient"])
    audit_record(user=reader_b, action="view", obj=tree_b["patient"])
    client.force_login(make_user("platform_admin", centre_a))

    def rows_by(query: str) -> set[str]:
        page = client.get(f"/audit/{query}").content.decode()
        return {u.username for u in (reader_a, reader_b) if f"<td>{u.username}</td>" in page}

    assert rows_by("") == {reader_a.username, reader_b.username}
    assert rows_by(f"?centre={centre_b.pk}") == {reader_b.username}
    assert rows_by(f"?user={reader_a.pk}") == {reader_a.username}
