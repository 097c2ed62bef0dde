"""The Flower deployment path of `scl federated`: `flwr run flower-app` on a local SuperLink and SuperNodes.

Everything runs on loopback (127.0.0.1) with free ports, offline
(``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``, SuperNodes without
``--allow-runtime-dependency-installation``), with a private ``FLWR_HOME`` holding the SuperLink
connection; every process the test starts is killed (with its process group) in ``finally``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "flower-app"
BIN = Path(sys.executable).parent
EXECUTABLES = ("flwr", "flower-superlink", "flower-supernode")
CLIENTS = 2
# a small run: two SuperNodes, shares 5% and 10%, one FedAvg round per variant
SETTINGS = (
    f"federated.clients={CLIENTS} federated.max_share=0.1 federated.rounds=1 federated.min_steps=4 "
    "federated.target_accuracy=1.0 network.epochs=1 stage1.epochs=1"
)
TIMEOUT = 420.0


def _executable(name: str) -> str | None:
    path = BIN / name
    return str(path) if path.exists() else shutil.which(name)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def _descendants(pid: int) -> list[int]:
    """The ids of every live descendant of ``pid`` (from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stop(process: subprocess.Popen) -> None:
    """Kill a process the test started, its process group, and its descendants in other groups.

    The SuperLink starts its SuperExec in a new session, so killing its group alone would miss it.
    """
    descendants = _descendants(process.pid)
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    for pid in descendants:
        try:  # only a Flower process: the id may have been reused since
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"flwr" in cmdline or b"flower" in cmdline:
                os.kill(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


@pytest.mark.slow
def test_flwr_run_on_a_local_superlink_with_supernodes(tmp_path: Path) -> None:
    pytest.importorskip("flwr", reason="Flower is not installed: pip install 'scl[federated]'")
    found = {name: _executable(name) for name in EXECUTABLES}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        pytest.skip(f"Flower executables not found: {missing} (pip install 'scl[federated]')")
    if not hasattr(os, "killpg"):
        pytest.skip("needs POSIX process groups to clean up the SuperLink and SuperNodes")

    home = tmp_path / "flwr-home"
    home.mkdir()
    link = _free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local-deployment"\n\n'
        f'[superlink.local-deployment]\naddress = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    env = dict(os.environ)
    env.update(
        {
            "FLWR_HOME": str(home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "OMP_NUM_THREADS": "1",
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # SuperLink/SuperNode spawn flower-superexec
        }
    )
    out = tmp_path / "run"
    processes: list[subprocess.Popen] = []
    logs = []

    def start(name: str, *args: str) -> subprocess.Popen:
        log = (tmp_path / f"{name}-{len(processes)}.log").open("w")
        logs.append(log)
        process = subprocess.Popen(
            [found[name], *args], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        processes.append(process)
        return process

    def tails() -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.glob("*.log")))

    deadline = time.monotonic() + TIMEOUT
    try:
        start("flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link))
        _wait_for_port(link, time.monotonic() + 60)
        for k in range(CLIENTS):
            start(
                "flower-supernode",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{link}",
                "--host",
                "127.0.0.1",
                "--port",
                str(_free_port()),
                "--node-config",
                f"partition-id={k} num-partitions={CLIENTS}",
            )
        run_config = f'quick=true out="{out}" set="{SETTINGS}"'
        started = subprocess.run(
            [found["flwr"], "run", str(APP), "local-deployment", "--run-config", run_config, "--format", "json"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert started.returncode == 0, started.stdout + started.stderr
        assert json.loads(started.stdout)["success"], started.stdout
        metrics_file = out / "metrics.json"
        while not metrics_file.exists():
            assert time.monotonic() < deadline, f"no run folder after {TIMEOUT} s\n{tails()}"
            assert all(p.poll() is None for p in processes), f"a Flower process exited\n{tails()}"
            time.sleep(2)
    finally:
        for process in reversed(processes):
            _stop(process)
        for log in logs:
            log.close()
    assert all(p.poll() is not None for p in processes)

    metrics = json.loads(metrics_file.read_text())
    assert metrics["engine"] == "flower" and metrics["runtime"] == "deployment"
    assert metrics["clients"] == CLIENTS
    assert [s["p"] for s in metrics["stages"]] == [0.05, 0.1]
    assert metrics["failures"] == 0
    assert metrics["rounds"] == 2 * 2  # two shares, one round each for screening and no screening
    assert (out / "checkpoints").is_dir() and (out / "report.html").exists()
