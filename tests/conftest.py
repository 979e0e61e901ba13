"""Shared fixtures: users of every role at two centres, a case tree per centre, a real Celery
worker subprocess, and real Chromium for browser tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.factories import (
    CentreFactory,
    MembershipFactory,
    NoduleFactory,
    PathologyFactory,
    PatientFactory,
    UserFactory,
    VideoFactory,
)

REPO = Path(__file__).resolve().parent.parent

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session", autouse=True)
def no_persistent_connections():
    # Consumers reach the database from executor threads; persistent connections there would
    # outlive the test and block dropping the test database.
    from django.conf import settings

    settings.DATABASES["default"]["CONN_MAX_AGE"] = 0


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    # PBKDF2's deliberate slowness protects real passwords; tests only need them to work.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def centre_a(db):
    return CentreFactory(code="CA", name="Centre A hospital")


@pytest.fixture
def centre_b(db):
    return CentreFactory(code="CB", name="Centre B hospital")


def make_user(role: str, centre) -> object:
    """A user by role name: a centre role (member of `centre`) or a platform role."""
    from annotations.models import CentreRole, PlatformRole

    user = UserFactory(username=f"{role}-{centre.code}".lower())
    if role in CentreRole.values:
        MembershipFactory(user=user, centre=centre, role=role)
    elif role in PlatformRole.values:
        user.platform_role = role
        user.save()
    return user


@pytest.fixture
def case_tree(db):
    """A patient with a nodule, pathology and a ready video, at a given centre."""

    def build(centre):
        patient = PatientFactory(centre=centre)
        nodule = NoduleFactory(patient=patient)
        return {
            "centre": centre,
            "patient": patient,
            "nodule": nodule,
            "pathology": PathologyFactory(nodule=nodule),
            "video": VideoFactory(nodule=nodule),
        }

    return build


# --- A real Celery worker -------------------------------------------------------------------


def _database_url_for_subprocess() -> str:
    """The URL of the test database this process is using (pytest-django renamed it)."""
    from django.db import connection

    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


@pytest.fixture
def celery_worker_process(transactional_db, tmp_path, settings):
    """A real `celery worker` subprocess on both queues, sharing this test's database.

    With REDIS_URL set (CI) it goes through Redis; otherwise through a filesystem broker in a
    temporary folder, so that a demo worker running on this machine cannot steal the tasks.
    """
    from webapp.celery import app

    env = dict(os.environ, DATABASE_URL=_database_url_for_subprocess(), PYTHONUNBUFFERED="1")
    # Celery reads the namespaced Django setting first, so edit that dict in place.
    options = app.conf.broker_transport_options
    saved = dict(options)
    if not settings.REDIS_URL:
        broker = tmp_path / "broker"
        env["CELERY_FILESYSTEM_BROKER_DIR"] = str(broker)
        for sub in ("queue", "control"):
            (broker / sub).mkdir(parents=True)
        options.update(
            data_folder_in=str(broker / "queue"),
            data_folder_out=str(broker / "queue"),
            control_folder=str(broker / "control"),
        )
    log = open(tmp_path / "worker.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "webapp", "worker", "-Q", "cpu,gpu",
         "--pool=solo", "--concurrency=1", "--without-gossip", "--without-mingle",
         "--loglevel=INFO"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        options.clear()
        options.update(saved)
        if not settings.REDIS_URL:
            # Pooled filesystem connections remember the temporary folders: start afresh.
            app.pool.force_close_all()
            app._pool = None


def run_coroutine(coroutine):
    """Run an async test scenario to completion. In its own thread, because Playwright's sync
    API may already run an event loop in this one."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def websocket_for(user, path: str):
    """A Channels test communicator for `path`, signed in as `user` through a real session
    cookie, so that consumers authorise exactly as they do for a browser."""
    from channels.testing import WebsocketCommunicator
    from django.test import Client

    from webapp.asgi import application

    client = Client()
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    return WebsocketCommunicator(
        application, path, headers=[(b"cookie", cookie), (b"origin", b"http://localhost")]
    )


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.25):
    """Poll `predicate` until it returns something truthy; fail with a clear message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"condition not met within {timeout:.0f} s")


# --- Real Chromium through Playwright -------------------------------------------------------

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="session")
def chromium_browser():
    executable = shutil.which("chromium")
    if executable is None:
        if IN_CI:
            pytest.fail("Debian's chromium is missing in CI: browser tests must run, not skip")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    # Playwright's sync API runs an event loop in this thread; the ORM calls made by the
    # tests themselves are still synchronous and safe.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def browser_page(chromium_browser):
    context = chromium_browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15000)
    yield page
    context.close()
