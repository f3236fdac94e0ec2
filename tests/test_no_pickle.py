"""Nothing read from disk or network is unpickled: a source scan guards it."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = [
    r"\bimport pickle\b",
    r"\bfrom pickle\b",
    r"\bcloudpickle\b",
    r"\bdill\b",
    r"allow_pickle\s*=\s*True",
    r"weights_only\s*=\s*False",
    r"\btorch\.load\(",
    r"\bjoblib\.load\(",
]


def test_no_source_file_unpickles():
    offenders = []
    for folder in ("fedge", "benchmarks", "deploy", "simulations"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            offenders += [f"{path.relative_to(ROOT)}: {p}" for p in FORBIDDEN if re.search(p, text)]
    assert offenders == []


def test_every_np_load_forbids_pickle():
    for path in (ROOT / "fedge").rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"np\.load\(", text):
            call = text[match.start() : text.find("\n", match.start())]
            assert "allow_pickle=False" in call, f"{path}: {call}"
