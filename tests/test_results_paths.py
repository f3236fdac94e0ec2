"""Committed benchmark results name their files relative to the repo or the run, never by a machine's path."""

import re
from pathlib import Path

RESULTS = Path(__file__).parents[1] / "benchmarks" / "results"


def test_no_committed_result_holds_an_absolute_path():
    found = {
        f.name: hits
        for f in sorted(RESULTS.glob("*.json"))
        if (hits := re.findall(r'"(/(?:work|tmp|root|home|usr|opt)/[^"]*)"', f.read_text()))
    }
    assert not found
