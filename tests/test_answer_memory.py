"""benchmarks/answer_memory.py at tiny scale: a row per wrapper, memory type and length, each answered in its own
process, with a finite peak-memory ratio (a smoke test of the script, not a measurement)."""
import math
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import answer_memory  # noqa: E402  (a script folder, not a package)


@pytest.mark.slow
def test_the_benchmark_gives_a_finite_ratio_per_row(tmp_path):
    settings = [("encoder", "tokens"), ("decoder", "associative")]
    rows = answer_memory.measure(tmp_path, segments=(3, 1), settings=settings, input_size=64, tiny=True)
    assert [(r["wrapper"], r["memory_type"], r["segments"]) for r in rows] == [
        ("encoder", "tokens", 1), ("encoder", "tokens", 3), ("decoder", "associative", 1),
        ("decoder", "associative", 3)]  # the contexts read over the segments asked for
    for row in rows:
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0 and row["peak_rss_mib"] > 100  # torch alone is more
        assert row["tokens_per_second"] > 0
    assert [row["ratio"] for row in rows[::2]] == [1.0, 1.0]  # each setting against its own shortest context
