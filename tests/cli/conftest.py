"""The `fedge` command in-process: a runner in a scratch directory, and a finished run to read."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedge.cli import app
from fedge.compression.bundle import generate_keypair
from fedge.compression.export import ExportConfig, export_onnx
from fedge.simulations.runner import build_config, requested_settings

TINY = Path(__file__).resolve().parents[2] / "simulations" / "tiny.toml"
CACHES = ("home/.cache", "home/.config")  # libraries (matplotlib) cache there, not fedge


@pytest.fixture()
def cli(tmp_path, monkeypatch):
    """`fedge ARGS` in-process, in `tmp_path`, whose HOME (the default run directory) is inside."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def written(root: Path) -> list[str]:
    """Every file and directory under `root` but the libraries' caches in HOME."""
    paths = (p.relative_to(root).as_posix() for p in root.rglob("*"))
    return sorted(
        p for p in paths if p != "home" and not any(p == c or p.startswith(c) for c in CACHES)
    )


def one_line(text: str) -> str:
    """What a terminal shows, whatever the wrapping (rich wraps at 80 columns off a terminal)."""
    return " ".join(text.split())


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, teacher) -> Path:
    """What `fedge compress` and `fedge audit` read of a finished tiny run, without training one.

    The tiny scenario's config in results.json, a signing key pair, a teacher that passes the
    quality gate (trained centrally) and a bundle model (the teacher's, as a stand-in): enough
    for every check that comes before compression or the audit starts.
    """
    run = tmp_path_factory.mktemp("finished") / "run"
    cfg = build_config(requested_settings(TINY, None, [], {"out": str(run)}))
    generate_keypair(run / "keys")
    model = export_onnx(teacher, (1, 8, 8), ExportConfig())
    (run / "teacher.onnx").write_bytes(model)
    (run / "bundle").mkdir()
    (run / "bundle" / "model.onnx").write_bytes(model)  # loads: that much is checked up front
    results = {
        "config": cfg.to_run_config(),
        "teacher": {"params": 283786},
        "student": {"architecture": "deep-small"},
    }
    (run / "results.json").write_text(json.dumps(results))
    return run
