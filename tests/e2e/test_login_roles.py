"""Browser: each demo login signs in and lands on the home page its role should see."""

import pytest

from annotations.demo import DEMO_ACCOUNTS, DEMO_PASSWORD, demo_accounts_seed

pytestmark = pytest.mark.e2e

# What a person of each role sees first (text on the page).
EXPECTED_HOME = {
    "admin": ["Platform administration", "All centres", "Audit log", "System status"],
    "mlengineer": ["ML engineering", "All centres"],
    "c1admin": ["Centre administrator at C1"],
    "c1annotator": ["Annotator at C1"],
    "c1reader": ["Reader at C1"],
    "c2annotator": ["Annotator at C2"],
    "c2admin": ["Centre administrator at C2"],
}
NOT_EXPECTED = {
    "c1annotator": ["Audit log", "Platform administration", "C2"],
    "c2annotator": ["Audit log", "Riverside"],
    "c1reader": ["System status"],
    "mlengineer": ["Audit log", "System status"],
}


def sign_in(page, base_url: str, username: str, password: str = DEMO_PASSWORD) -> None:
    page.goto(f"{base_url}/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("account", DEMO_ACCOUNTS, ids=lambda a: a.username)
def test_demo_login_lands_on_role_home(live_server, browser_page, account):
    demo_accounts_seed()
    page = browser_page
    sign_in(page, live_server.url, account.username)
    page.wait_for_url(f"{live_server.url}/")
    assert page.get_by_test_id("signed-in-as").inner_text() == account.username
    body = page.locator("main").inner_text()
    for text in EXPECTED_HOME[account.username]:
        assert text in page.locator("body").inner_text(), f"{text!r} missing for {account}"
    for text in NOT_EXPECTED.get(account.username, []):
        assert text not in body, f"{text!r} shown to {account.username}"


@pytest.mark.django_db(transaction=True)
def test_wrong_password_shows_an_error_and_sign_out_works(live_server, browser_page):
    demo_accounts_seed()
    page = browser_page
    sign_in(page, live_server.url, "c1annotator", "not-the-password")
    assert "Please enter a correct username and password" in page.locator("main").inner_text()
    sign_in(page, live_server.url, "c1annotator")
    page.get_by_role("button", name="Sign out").click()
    page.goto(f"{live_server.url}/")
    assert page.get_by_role("heading", name="Sign in to ThyroCine").is_visible()
