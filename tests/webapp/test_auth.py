"""Sign-in, sign-out, password change and failed-login throttling."""

import pytest

from annotations.models import AuditEvent
from tests.factories import UserFactory


@pytest.fixture
def person(db):
    return UserFactory(username="radiologist")


def test_pages_need_sign_in(client, db):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_sign_in_and_out(client, person):
    response = client.post(
        "/accounts/login/", {"username": "radiologist", "password": "pw-test-123"}
    )
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200
    client.post("/accounts/logout/")
    assert client.get("/").status_code == 302


def test_repeated_failures_lock_the_account(client, person, settings):
    settings.AXES_FAILURE_LIMIT = 3
    for _ in range(3):
        client.post("/accounts/login/", {"username": "radiologist", "password": "wrong"})
    # Even the right password is refused now, with a message a person understands.
    response = client.post(
        "/accounts/login/", {"username": "radiologist", "password": "pw-test-123"}
    )
    assert response.status_code == 429
    assert b"Too many failed sign-in attempts" in response.content
    assert client.get("/").status_code == 302


def test_password_change(client, person):
    client.force_login(person)
    response = client.post(
        "/accounts/password/",
        {"old_password": "pw-test-123", "new_password1": "a-Much-longer-one-42",
         "new_password2": "a-Much-longer-one-42"},
    )
    assert response.status_code == 302
    person.refresh_from_db()
    assert person.check_password("a-Much-longer-one-42")


def test_api_token_auth(client, person):
    response = client.post(
        "/api/auth/token/", {"username": "radiologist", "password": "pw-test-123"}
    )
    token = response.json()["token"]
    response = client.get("/api/centres/", HTTP_AUTHORIZATION=f"Token {token}")
    assert response.status_code == 200
    assert client.get("/api/centres/", HTTP_AUTHORIZATION="Token nonsense").status_code == 401
    assert not AuditEvent.objects.exists()


def test_openapi_schema_and_docs_are_served_without_a_cdn(client, person):
    client.force_login(person)
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    assert b"/api/patients/" in schema.content
    docs = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in docs and "cdn" not in docs.lower()
