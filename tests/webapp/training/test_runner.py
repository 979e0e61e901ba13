"""The child-process side of a run: command lines, tailing metrics and logs, the directory
lock, stopping a process group, and a child that dies with its killed parent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ml.jsonl import JsonlTail
from tests.conftest import REPO, wait_for
from webapp.training import runner


def test_train_command_passes_only_the_chosen_hyperparameters(tmp_path):
    command = runner.train_command(
        data_dir=tmp_path / "data", run_dir=tmp_path / "run", arch="irv2_cam", preset="small",
        hyperparameters={"epochs": 3, "lr": 0.001, "augment": False}, python="py")
    assert command[:3] == ["py", "-m", "ml"]
    args = command[3:]
    assert args[:2] == ["train", "--data"]
    assert ["--arch", "irv2_cam"] == args[args.index("--arch"):args.index("--arch") + 2]
    assert "--no-augment" in args and "--resume" not in args
    assert args[args.index("--epochs") + 1] == "3" and args[args.index("--lr") + 1] == "0.001"

    resumed = runner.train_command(data_dir=tmp_path, run_dir=tmp_path, arch="irv2",
                                   preset="paper", hyperparameters={}, gpus=4, resume=True,
                                   python="py")
    assert resumed[:5] == ["py", "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=4"]
    assert resumed[5:8] == ["-m", "ml", "train"] and resumed[-1] == "--resume"


def test_train_command_is_what_ml_train_parses(tmp_path):
    from ml.cli import build_parser

    command = runner.train_command(
        data_dir=tmp_path, run_dir=tmp_path / "run", arch="x3d_s", preset="small",
        hyperparameters={"epochs": 3, "lr": 0.001, "augment": False, "size": 48})
    args = build_parser().parse_args(command[3:])
    assert (args.arch, args.epochs, args.lr, args.augment, args.size) == (
        "x3d_s", 3, 0.001, False, 48)


def test_jsonl_tail_returns_each_complete_line_once(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = JsonlTail(path)
    assert tail.read() == []  # not written yet
    with path.open("w") as f:
        f.write(json.dumps({"event": "start"}) + "\n" + '{"event": "st')
    assert tail.read() == [{"event": "start"}]
    with path.open("a") as f:
        f.write('ep"}\n{torn line from a killed writer\n' + json.dumps({"event": "done"}) + "\n")
    assert tail.read() == [{"event": "step"}, {"event": "done"}]
    assert tail.read() == []


def test_log_tail_shows_progress_bars_as_a_terminal_does(tmp_path):
    path = tmp_path / "train.log"
    path.write_text("starting\nepoch 1:  10%\repoch 1:  50%\repoch 1: 100%\ndone\n")
    assert runner.log_tail(path, 1000) == "starting\nepoch 1: 100%\ndone\n"
    assert runner.log_tail(path, 5) == "done\n"
    assert runner.log_tail(tmp_path / "missing.log", 100) == ""


def test_run_lock_is_exclusive_and_outlives_its_holder_in_a_child(tmp_path):
    with runner.RunLock(tmp_path) as lock:
        with pytest.raises(runner.DirectoryBusy):
            runner.RunLock(tmp_path).__enter__()
        child = runner.start(["sleep", "30"], log_path=tmp_path / "log", cwd=tmp_path,
                             keep_fds=[lock.fd])
    try:
        # The parent let go, but the child still holds the lock: the directory stays busy.
        with pytest.raises(runner.DirectoryBusy):
            runner.RunLock(tmp_path).__enter__()
    finally:
        runner.stop(child, grace=5)
    with runner.RunLock(tmp_path):
        pass


def test_stop_ends_the_whole_process_group(tmp_path):
    script = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    proc = runner.start([sys.executable, "-c", script], log_path=tmp_path / "log",
                        cwd=tmp_path)
    time.sleep(1.0)
    group = [int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == proc.pid]
    assert len(group) >= 2  # the child and the grandchild it started
    code = runner.stop(proc, grace=5)
    assert code == -signal.SIGTERM
    wait_for(lambda: not any(runner.pid_alive(p) for p in group), timeout=10)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_child_dies_when_its_parent_is_killed(tmp_path):
    """A worker killed with SIGKILL leaves no orphan training process behind."""
    pid_file = tmp_path / "child.pid"
    parent_code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from webapp.training import runner
        child = runner.start(["sleep", "60"], log_path=Path({str(tmp_path / 'log')!r}),
                             cwd=Path({str(tmp_path)!r}))
        Path({str(pid_file)!r}).write_text(str(child.pid))
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=REPO)
    child_pid = int(wait_for(lambda: pid_file.is_file() and pid_file.read_text(), timeout=30))
    assert runner.pid_alive(child_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    wait_for(lambda: not runner.pid_alive(child_pid), timeout=10)


def test_pid_alive(tmp_path):
    proc = subprocess.Popen(["sleep", "30"])
    assert runner.pid_alive(proc.pid)
    proc.kill()
    proc.wait()
    assert not runner.pid_alive(proc.pid)
    assert not runner.pid_alive(None)
    assert Path("/proc/1").exists() and runner.pid_alive(1)
