"""docker-compose.yml describes the whole stack with one image and one environment."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_stack_has_every_service(compose):
    assert {"postgres", "redis", "web", "worker-cpu", "worker-gpu"} <= set(compose["services"])
    assert "pgdata" in compose["volumes"]
    assert "healthcheck" in compose["services"]["postgres"]


def test_web_and_workers_share_image_and_environment(compose):
    services = compose["services"]
    app = ("web", "worker-cpu", "worker-gpu")
    assert len({services[s]["image"] for s in app}) == 1
    envs = [services[s]["environment"] for s in app]
    assert all(env == envs[0] for env in envs)
    assert envs[0]["REDIS_URL"].startswith("redis://redis")
    assert envs[0]["DATABASE_URL"].startswith("postgres://")


def test_gpu_worker_reserves_a_gpu_and_runs_one_job_at_a_time(compose):
    worker = compose["services"]["worker-gpu"]
    command = " ".join(worker["command"])
    assert "-Q gpu" in command and "--concurrency=1" in command
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "-Q cpu" in " ".join(compose["services"]["worker-cpu"]["command"])


def test_compose_file_validates():
    if not shutil.which("docker-compose"):
        if os.environ.get("CI"):  # .ci/run installs it: a skip there would hide a broken file
            pytest.fail("docker-compose is not installed")
        pytest.skip("docker-compose is not installed")
    result = subprocess.run(
        ["docker-compose", "config", "-q"], cwd=REPO, capture_output=True, text=True,
        env={"DJANGO_SECRET_KEY": "x" * 50, "PATH": "/usr/bin:/bin:/usr/local/bin"},
    )
    assert result.returncode == 0, result.stderr
