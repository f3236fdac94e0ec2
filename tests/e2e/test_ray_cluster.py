"""`fedge simulate --ray-address`: a real two-node Ray cluster on loopback runs the clients."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
SIMULATION = Path(__file__).parents[2] / "simulations" / "tiny.toml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process (Linux /proc)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                stat = (entry / "stat").read_text()
                out[int(entry.name)] = (int(stat[stat.rindex(")") + 2 :].split()[1]), cmd)
            except (OSError, ValueError, IndexError):
                continue
    return out


def _cluster_pids(port: int, temp: str) -> list[int]:
    """The cluster's processes: they name its address or temp dir; workers descend from them."""
    procs = _processes()
    mine = {p for p, (_, cmd) in procs.items() if temp in cmd} | {
        p for p, (_, cmd) in procs.items() if f"127.0.0.1:{port}" in cmd or f"port={port}" in cmd
    }
    mine.discard(os.getpid())
    grown = True
    while grown:
        more = {p for p, (parent, _) in procs.items() if parent in mine} - mine
        mine |= more
        grown = bool(more)
    return sorted(mine)


def test_a_simulation_spreads_its_clients_over_both_nodes_of_a_ray_cluster(tmp_path):
    port = _free_port()
    # Ray puts Unix sockets under its temp dir: pytest's paths are too long for them.
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    common = ["--num-cpus=1", "--disable-usage-stats", f"--temp-dir={temp}"]
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    try:
        subprocess.run(
            [
                RAY,
                "start",
                "--head",
                f"--port={port}",
                "--node-ip-address=127.0.0.1",
                "--include-dashboard=false",
                *common,
            ],
            check=True,
            capture_output=True,
            timeout=120,
            env=env,
        )
        subprocess.run(
            [RAY, "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", *common],
            check=True,
            capture_output=True,
            timeout=120,
            env=env,
        )
        status, waited = "", time.monotonic() + 60
        while status.count("node_") < 2 and time.monotonic() < waited:  # the worker registers
            status = subprocess.run(
                [RAY, "status", f"--address=127.0.0.1:{port}"],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            ).stdout
        assert status.count("node_") >= 2, status  # Ray's node list: head and worker
        out = tmp_path / "run"
        cmd = [
            *(sys.executable, "-m", "fedge", "simulate", "--scenario", str(SIMULATION)),
            *("--ray-address", f"127.0.0.1:{port}", "--out", str(out)),
            # one round and a short public distillation: what is tested is where the actors ran
            *("--rounds", "1", "--student", "deep-tiny", "--kd-source", "public", "--qat", "off"),
            *("--kd-epochs", "2", "--finetune-epochs", "0"),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        raylets, deadline = set(), time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            procs = _processes()
            ours = {p for p, (_, c) in procs.items() if "raylet" in c.split(" ")[0] and temp in c}
            for _, (parent, cmd_line) in procs.items():
                if cmd_line.startswith("ray::ClientAppActor") and parent in ours:
                    raylets.add(parent)  # each node's raylet starts that node's workers
            time.sleep(0.3)
        output = proc.communicate(timeout=60)[0].decode(errors="replace")
        assert proc.returncode == 0, output[-3000:]
        assert (out / "results.json").is_file()
        assert len(raylets) == 2, f"actors ran under raylets {raylets}"
    finally:
        for pid in _cluster_pids(port, temp):  # stopped by pid, even when the test failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
