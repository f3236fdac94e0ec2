"""Real deployment on loopback: TLS SuperLink with SuperNode authentication, real SuperNodes."""

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedge.client.runtime.store import ModelStore
from fedge.client.runtime.verify import load_public_key, read_bundle_dir, verify_bundle

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CONN = "fedge-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


PR_SET_PDEATHSIG = 1  # linux/prctl.h
# looked up here, not in the forked child, where loading a library could deadlock
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """In the child: SIGKILL when pytest dies, even by SIGKILL, when no `finally` runs (Linux)."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)


class Processes:
    """Starts commands in their own process groups; stop() kills every group by pid."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs, self.started = env, logs, []
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115  (closed with the process)
        proc = subprocess.Popen(
            args,
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.started.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # SIGTERM ignored: end it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop every group, even if one of them resists: SIGTERM to all at once, then SIGKILL
        to each group whose leader has not ended 10 s later."""
        for proc in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.started:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:  # SIGTERM ignored: end it
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)


def _flwr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BIN / "flwr", *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.e2e
def test_tls_superlink_with_node_auth_three_supernodes_and_a_killed_node(tmp_path):
    env = {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    certs, data = tmp_path / "certs", tmp_path / "data"
    subprocess.run(
        [sys.executable, ROOT / "deploy/gen_certs.py", "--out", certs, "--nodes", "4"],
        check=True,
        env=env,
    )
    subprocess.run(
        [sys.executable, ROOT / "deploy/make_node_data.py", "--out", data, "--nodes", "3"],
        check=True,
        env=env,
    )
    procs = Processes(env, tmp_path / "logs")
    port = _free_port()

    def supernode(name: str, key: str | None, pid: int) -> subprocess.Popen:
        auth = (
            [
                "--root-certificates",
                str(certs / "ca.crt"),
                "--auth-supernode-private-key",
                str(certs / key),
            ]
            if key
            else ["--insecure"]
        )
        config = (
            f"partition-id={pid} num-partitions=3 data-file='{data}/node-{pid}.npz' "
            f"model-store='{tmp_path}/stores/node-{pid}' trusted-key='{certs}/signing.pub'"
        )
        return procs.start(
            name,
            str(BIN / "flower-supernode"),
            *auth,
            "--superlink",
            f"127.0.0.1:{port}",
            "--port",
            str(_free_port()),
            "--node-config",
            config,
        )

    try:
        procs.start(
            "superlink",
            str(BIN / "flower-superlink"),
            "--ssl-ca-certfile",
            str(certs / "ca.crt"),
            "--ssl-certfile",
            str(certs / "superlink.crt"),
            "--ssl-keyfile",
            str(certs / "superlink.key"),
            "--enable-supernode-auth",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        )
        (tmp_path / "flwr-home").mkdir(exist_ok=True)
        (tmp_path / "flwr-home" / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONN}"\n\n[superlink.{CONN}]\naddress = "127.0.0.1:{port}"\n'
            f'root-certificates = "{certs / "ca.crt"}"\n'
        )
        _wait_for(
            lambda: _flwr(env, "supernode", "list", CONN).returncode == 0, 60, "the SuperLink"
        )
        for i in range(3):
            assert (
                _flwr(
                    env, "supernode", "register", str(certs / f"supernode-{i}.pub"), CONN
                ).returncode
                == 0
            )

        # An unregistered key is refused: the node gives up. A node without TLS cannot talk to
        # the TLS SuperLink. (Both at once: neither gets far enough to touch its store.)
        unregistered = supernode("unregistered", "supernode-3", 2)
        plain = supernode("plain", None, 2)
        assert unregistered.wait(timeout=90) != 0
        assert "Failed to activate SuperNode" in procs.log("unregistered")
        _wait_for(
            lambda: "Connection attempt failed" in procs.log("plain"),
            30,
            "the plain node to be refused",
        )
        procs.kill(plain)
        assert "online" not in _flwr(env, "supernode", "list", CONN).stdout

        nodes = [supernode(f"node-{i}", f"supernode-{i}", i) for i in range(3)]
        out = tmp_path / "run"
        procs.start(
            "flwr-run",
            str(BIN / "flwr"),
            "run",
            ".",
            CONN,
            "--stream",
            "--run-config",
            # two rounds: all three nodes, then one killed mid-round, which costs the round its
            # whole round-timeout. The SuperLink marks a dead node offline only 30-40 s after
            # it dies: with a shorter timeout the federated evaluation that follows round 2
            # would wait a whole timeout for it too, so 40 s is the cheapest here.
            f"clients=3 rounds=2 partition='iid' out='{out}' private-key='{certs}/signing.key' "
            "round-timeout=40.0 kd-epochs=5 finetune-epochs=1 local-epochs=2 "
            # federated distillation over the same TLS links, kept short
            "auto-students='deep-small' student-rounds=1 student-epochs=1 qat-epochs=2 "
            # a student of 5 epochs: the deployment is tested, not the student's quality
            "student-max-drop=100.0",
        )
        _wait_for(
            lambda: procs.log("flwr-run").count("configure_train") >= 2, 300, "round 2 to start"
        )
        procs.kill(nodes[2])  # SIGKILL mid-round: a device losing power
        _wait_for(lambda: (out / "results.json").is_file(), 420, "the run to finish")
    finally:
        procs.stop()

    results = json.loads((out / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    assert results["rounds"][0]["clients_ok"] == 3
    killed = results["rounds"][1]["clients_failed"]
    assert [f["partition_id"] for f in killed] == [2], killed  # the dead node, and only it
    assert results["rounds"][1]["clients_ok"] == 2
    # The run went on with the two live nodes: the student's round ran on them, over the same
    # authenticated TLS links.
    assert [r["clients_ok"] for r in results["student_rounds"]["rounds"]] == [2]
    installed = {c["partition_id"]: c["installed"] for c in results["clients"]}
    assert installed == {0: True, 1: True, 2: False}
    key = load_public_key(certs / "signing.pub")
    bundle = verify_bundle(read_bundle_dir(out / "bundle"), key)
    for i in (0, 1):
        assert (
            ModelStore(tmp_path / "stores" / f"node-{i}").load(key).model_bytes
            == bundle.model_bytes
        )
    assert not (tmp_path / "stores" / "node-2" / "CURRENT").exists()
