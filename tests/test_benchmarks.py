"""The aggregation benchmark runs without Django and prints one JSON object per case."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = {
    "case",
    "strategy",
    "merchants",
    "params",
    "dtype",
    "seconds",
    "gb_per_s",
    "reference_seconds",
    "ratio_to_limit",
    "peak_extra_bytes",
    "peak_extra_x_update",
    "flower_seconds",
    "speedup_vs_flower",
    "target",
    "met",
}
FLOWER = importlib.util.find_spec("flwr") is not None


def run_bench(*args: str) -> list[dict]:
    command = [sys.executable, "-m", "benchmarks.aggregation", "--quick", "--json", "--repeat", "1"]
    # Our own module with the test's interpreter: no shell, no untrusted input (S603 is off here).
    done = subprocess.run(
        [*command, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines, done.stderr
    rows = [json.loads(line) for line in lines]  # every stdout line is one JSON object
    for row in rows:
        assert set(row) == KEYS
        assert row["seconds"] > 0
        assert row["reference_seconds"] > 0
        assert row["gb_per_s"] > 0
        assert row["peak_extra_bytes"] > 0
        assert row["merchants"] == 100
        assert row["dtype"] == "float32"
        assert row["met"] in (True, False, None)
    return rows


def test_quick_run_reports_every_case_with_flower_when_installed() -> None:
    rows = run_bench("--case", "fedavg", "--case", "median")
    assert [row["case"] for row in rows] == ["fedavg", "median"]
    assert rows[0]["params"] == 1_000_000  # 10x smaller than the real case
    assert rows[1]["params"] == 100_000
    for row in rows:
        if FLOWER:
            assert row["flower_seconds"] > 0
            assert row["speedup_vs_flower"] > 0
            assert isinstance(row["met"], bool)
        else:
            assert row["flower_seconds"] is None
    assert isinstance(rows[0]["met"], bool)  # FedAvg's target needs no Flower


def test_no_flower_reports_it_unavailable() -> None:
    rows = run_bench("--case", "median", "--no-flower")
    assert [row["case"] for row in rows] == ["median"]
    assert rows[0]["flower_seconds"] is None
    assert rows[0]["speedup_vs_flower"] is None
    assert rows[0]["met"] is None  # cannot be judged without Flower


def test_benchmark_does_not_import_django() -> None:
    code = "import sys, benchmarks.aggregation; sys.exit('django' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr or "benchmarks.aggregation imported Django"
