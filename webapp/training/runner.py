"""Running `python -m ml ...` as a supervised child process. No Django here: commands, paths
and processes.

The training process runs in its own session (process group), so that a cancel stops it and
every process it started (DataLoader workers, torchrun's ranks) at once, and it asks the
kernel for SIGTERM when its parent dies (Linux `PR_SET_PDEATHSIG`), so that a worker killed
with SIGKILL does not leave an orphan writing the run directory. An exclusive `flock` on
`RUN_DIR/.lock`, inherited by the child, tells any later attempt that the directory is still
being written.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: the heartbeat check still fails the run; the orphan runs to its end


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def train_command(
    *, data_dir: Path, run_dir: Path, arch: str, preset: str, hyperparameters: Mapping,
    gpus: int = 1, resume: bool = False, python: str = sys.executable,
) -> list[str]:
    """The `python -m ml train` command line (through torchrun for more than one GPU);
    `hyperparameters` are TrainConfig overrides (`hyperparameters.train_overrides`)."""
    args = ["train", "--data", str(data_dir), "--out", str(run_dir), "--arch", arch,
            "--config", preset]
    for name, value in sorted(hyperparameters.items()):
        if isinstance(value, dict):  # model_options, augment_options: JSON on the command line
            args += [flag(name), json.dumps(value, sort_keys=True)]
        elif isinstance(value, bool):
            args.append(flag(name) if value else "--no-" + name.replace("_", "-"))
        else:
            args += [flag(name), str(value)]
    if resume:
        args.append("--resume")
    if gpus > 1:
        return [python, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={gpus}", "-m", "ml", *args]
    return [python, "-m", "ml", *args]


def evaluate_command(*, run_dir: Path, device: str, python: str = sys.executable) -> list[str]:
    return [python, "-m", "ml", "evaluate", "--run", str(run_dir), "--device", device,
            "--no-localisation"]


class DirectoryBusy(Exception):
    """Another process (a previous attempt's trainer) still holds the run directory."""


class RunLock:
    """An exclusive, non-blocking `flock` on RUN_DIR/.lock, held for the whole attempt and
    inherited by the child processes (the lock lives as long as any of them keeps it)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DirectoryBusy(f"{self.path.parent} is still being written by another "
                                "process") from None
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def start(command: list[str], *, log_path: Path, cwd: Path, env: Mapping[str, str] | None = None,
          keep_fds: Iterable[int] = ()) -> subprocess.Popen:
    """Start `command` in its own session, stdout and stderr appended to `log_path`."""
    log = log_path.open("ab")
    try:
        return subprocess.Popen(
            command, cwd=cwd, env=dict(env) if env is not None else None, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent, pass_fds=tuple(keep_fds),
        )
    finally:
        log.close()  # the child has its own copy


def stop(proc: subprocess.Popen, grace: float) -> int:
    """SIGTERM to the child's whole process group, SIGKILL after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this id exists on this host (and is not a zombie)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def log_tail(path: Path, chars: int) -> str:
    """The last `chars` characters of a log, with progress-bar redraws (\\r) collapsed to their
    final state, as a terminal would show them."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            f.seek(max(0, size - 4 * chars))
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    lines = [line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r")
             for line in text.split("\n")]
    return "\n".join(lines)[-chars:]


def wait_poll(proc: subprocess.Popen, seconds: float) -> int | None:
    """Wait up to `seconds` for the child; its return code, or None while it runs."""
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


def monotonic() -> float:
    return time.monotonic()
