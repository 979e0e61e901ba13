"""`make demo`'s script really serves the platform on embedded defaults: a separate web
server and worker, the printed logins work, and a probe reaches the worker."""

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def demo_stack(tmp_path):
    port = free_port()
    dropped = {"DATABASE_URL", "REDIS_URL", "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(THYROCINE_VAR_DIR=str(tmp_path / "var"), DEMO_PORT=str(port),
               DJANGO_SETTINGS_MODULE="webapp.settings")
    log = tmp_path / "demo.log"
    proc = subprocess.Popen(["bash", "scripts/demo.sh"], cwd=REPO, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while "is running at" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGTERM)
            pytest.fail("demo did not start:\n" + log.read_text()[-3000:])
        time.sleep(1)
    url = re.search(r"running at (http://\S+?)/? ", log.read_text()).group(1)
    yield url, log.read_text()
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def test_demo_serves_printed_logins_and_a_live_worker(demo_stack, browser_page):
    url, output = demo_stack
    logins = re.findall(r"^\s+(\w+)\s+(Platform administrator|ML engineer|.+ at C\d)$",
                        output, flags=re.M)
    assert {name for name, _ in logins} >= {"admin", "mlengineer", "c1annotator", "c2annotator"}
    password = re.search(r"password for all: (\S+)\)", output).group(1)

    page = browser_page
    page.goto(f"{url}/")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Platform administration").wait_for()
    page.goto(f"{url}/system/")
    page.get_by_role("button", name="Probe workers").click()
    # The page polls (no Redis here) until the separate worker process has answered.
    page.locator('tr[data-queue="gpu"] .badge.ready').wait_for(timeout=60000)
    page.locator('tr[data-queue="cpu"] .badge.ready').wait_for(timeout=60000)
