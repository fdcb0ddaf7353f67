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


# -- benchmarks.secagg ---------------------------------------------------------------------


def run_secagg(*args: str) -> list[dict]:
    command = [sys.executable, "-m", "benchmarks.secagg", "--json", "--params", "10000"]
    done = subprocess.run(
        [*command, "--repeat", "1", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert rows, done.stderr
    assert "Client masking" in done.stderr  # the table goes to stderr with --json
    return rows


def test_secagg_smoke_run_masks_and_unmasks_correctly_with_both_implementations() -> None:
    rows = run_secagg("--neighbours", "4", "8", "--members", "10", "--dropped", "0", "1", "3")
    kinds = [row["kind"] for row in rows]
    assert kinds.count("prg") == 1
    assert kinds.count("client") == 2
    assert kinds.count("unmask") == 6  # 2 k x 3 d

    checks = [row for row in rows if row["kind"] == "check"]
    implementations = {"flportal", "flower"} if FLOWER else {"flportal"}
    assert {(c["implementation"], c["neighbours"]) for c in checks} == {
        (impl, k) for impl in implementations for k in (4, 8)
    }
    for check in checks:  # error of the unmasked weighted mean vs the plain one
        assert check["ok"] is True
        assert 0 <= check["max_abs_error"] <= check["bound"] < 1e-4
        assert check["members"] == check["neighbours"] + 1

    for row in (r for r in rows if r["kind"] == "client"):
        assert row["params"] == 10_000
        assert row["flportal_seconds"] > 0
        assert row["share_flportal_seconds"] > 0
        # one uint32 word per parameter, the weight word and a small safetensors header
        assert 4.0 < row["flportal_bytes_per_param"] < 4.05
        if FLOWER:
            assert row["flower_seconds"] > 0
            assert row["share_flower_seconds"] > 0
            assert row["ratio"] == row["flportal_seconds"] / row["flower_seconds"]
            assert row["flower_dtype"] == "int64"
            assert 8.0 < row["flower_bytes_per_param"] < 8.1
            assert isinstance(row["met"], bool)
        else:
            assert row["flower_seconds"] is None and row["met"] is None

    prg = next(r for r in rows if r["kind"] == "prg")
    assert prg["flportal_seconds"] > 0
    if FLOWER:  # its 32-bit seed fold, shown by two different seeds giving one mask
        assert prg["flower_seed_fold_collision"] is True

    for row in (r for r in rows if r["kind"] == "unmask"):
        assert row["exact"] is True  # the unmasked total is the survivors' encodings' sum
        assert row["members"] == 10
        assert row["fixed_seconds"] >= row["sum_seconds"] > 0
        if row["dropped"]:
            assert row["per_dropped_seconds"] == row["dropped_seconds"] / row["dropped"] > 0
        else:
            assert row["per_dropped_seconds"] is None


def test_secagg_benchmark_without_flower() -> None:
    rows = run_secagg("--neighbours", "2", "--no-flower", "--no-unmask")
    assert {row["kind"] for row in rows} == {"prg", "check", "client"}
    client = next(r for r in rows if r["kind"] == "client")
    assert client["flower_seconds"] is None and client["ratio"] is None


def test_secagg_round_trip_recovers_the_sum_and_detects_tampering() -> None:
    import numpy as np

    from benchmarks import secagg as bench
    from clients.sdk import secagg as sa

    deltas, weights = bench.make_inputs(6, 500, seed=7)
    weighted, weight, _, _ = bench.flportal_round_trip(deltas, weights, 4)
    expected = sum(
        np.clip(d.astype(np.float64), -1, 1) * w for d, w in zip(deltas, weights, strict=True)
    )
    scale = sa.Quantizer(clip_range=1.0, max_weight=bench.MAX_WEIGHT, participants=6).scale
    assert weight == sum(weights)
    assert np.max(np.abs(weighted - expected)) <= 6 * 0.5 / scale

    # with drop-outs: survivors' masks towards the dropped ones are removed exactly
    group = bench.flportal_group(10, 4)
    deltas, weights = bench.make_inputs(10, 300, seed=8)
    masked = bench.flportal_mask_all(group, deltas, weights)
    dropped = bench.choose_dropped(group, 2, seed=1)
    assert dropped is not None and len(dropped) == 2
    shares = bench.flportal_reveal(group, dropped)
    survivors = [u for u in group.sessions if u not in dropped]
    plain = [group.quantizer.encode(deltas[u - 1], weight=weights[u - 1]) for u in survivors]
    total = bench.flportal_unmask(group, masked, shares, dropped).total
    assert np.array_equal(total, np.sum(plain, axis=0, dtype=np.uint32))
    assert not np.array_equal(masked[survivors[0]], plain[0])  # what travels is masked

    masked[survivors[0]] = masked[survivors[0]].copy()
    masked[survivors[0]][3:4] += np.uint32(1)  # one word changed in transit (array op: wraps)
    total = bench.flportal_unmask(group, masked, shares, dropped).total
    assert not np.array_equal(total, np.sum(plain, axis=0, dtype=np.uint32))


def test_secagg_benchmark_does_not_import_django() -> None:
    code = "import sys, benchmarks.secagg; sys.exit('django' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr or "benchmarks.secagg imported Django"
