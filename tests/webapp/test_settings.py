"""Configuration from the environment: production refuses unsafe settings, and
`check --deploy` is clean with production variables."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PRODUCTION_ENV = {
    "DJANGO_DEBUG": "false",
    "DJANGO_SECRET_KEY": "x" * 20 + "-production-secret-key-with-enough-entropy-9f8e7d6c5b4a",
    "ALLOWED_HOSTS": "thyrocine.example.org",
    "CSRF_TRUSTED_ORIGINS": "https://thyrocine.example.org",
}


def run_manage(*args: str, env: dict) -> subprocess.CompletedProcess:
    # DJANGO_ALLOW_ASYNC_UNSAFE is set for the browser tests in this process only.
    dropped = {*PRODUCTION_ENV, "DJANGO_ALLOW_ASYNC_UNSAFE"}
    base = {k: v for k, v in os.environ.items() if k not in dropped}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env={**base, **env},
        capture_output=True, text=True, timeout=120,
    )


def test_check_deploy_is_clean_with_production_variables():
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize("missing", ["DJANGO_SECRET_KEY", "ALLOWED_HOSTS"])
def test_production_refuses_to_start_without_required_variables(missing):
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != missing}
    result = run_manage("check", env=env)
    assert result.returncode != 0
    assert f"{missing} must be set" in result.stderr


def test_migrations_are_complete():
    result = run_manage("makemigrations", "--check", "--dry-run", env={})
    assert result.returncode == 0, result.stdout + result.stderr


def test_media_has_no_public_url(client, db):
    # Stored files are reachable only through permission-checked views.
    assert client.get("/media/videos/anything").status_code == 404
    assert client.get("/files/videos/1/original").status_code == 302  # to sign-in


def test_ml_package_does_not_import_django():
    code = "import ml, sys; assert 'django' not in sys.modules, 'ml imported django'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
