"""The benchmark still runs end to end (tiny sizes, one repetition; no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "run.py"


def test_the_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    table = out.read_text(encoding="utf-8")
    for scenario in ("funnel GETs", "changes from a generator", "update_many", "max_rate=200"):
        assert scenario in table
    assert "token requests" in table
    assert "grouped by contact / interleaved" in table
