"""Aggregation benchmarks against the memory-bandwidth limit and Flower (SPEC §10).

    python -m benchmarks.aggregation                      # every case, table on stdout
    python -m benchmarks.aggregation --case fedavg --repeat 5
    python -m benchmarks.aggregation --quick --json       # 10x smaller; one JSON object per case

Every number is measured in this invocation, on the same in-memory arrays:

- the **read-only limit**: one pass that only reads the same bytes (``np.sum`` of every update),
  measured interleaved with the case's own runs; ``x limit`` = case time / limit time;
- **peak extra memory**: tracemalloc's peak during one separate, untimed call (numpy reports its
  buffers to tracemalloc), beyond what was allocated before the call, result included;
- **Flower** (``flwr``, the ``bench`` extra) on the same arrays, when it is importable.

Times are medians of ``--repeat`` runs. On a VM the first call that touches fresh memory also
pays for the host backing it (about 9 s per 4 GB on the development machine): Flower's
``aggregate`` needs K new weighted copies, so its first run is much slower than the next ones.

Results are checked (against a float64 computation for the FedAvg family, against Flower's
output for the robust strategies); a mismatch is reported and the exit status is 1. No Django.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks._measure import GB, free, peak_extra_bytes, progress, timed
from rounds.aggregation import Outcome, aggregate, fedavg

NAME = "w"  # the single tensor of every synthetic update
BYZANTINE = 10  # outlying updates in every data set (Krum's f)
SEED = 20240917


# --------------------------------------------------------------------------- data


@dataclass
class Data:
    """K updates of one float32 tensor, their example counts, and the current global weights."""

    merchants: int
    params: int
    arrays: list[np.ndarray]
    weights: list[int]
    current: np.ndarray
    _expected_mean: np.ndarray | None = field(default=None, repr=False)

    @property
    def dtype(self) -> np.dtype:
        return self.arrays[0].dtype

    @property
    def update_bytes(self) -> int:
        return self.arrays[0].nbytes

    @property
    def total_bytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    @property
    def updates(self) -> list[dict[str, np.ndarray]]:
        return [{NAME: a} for a in self.arrays]

    @property
    def flower_results(self) -> list[tuple[list[np.ndarray], int]]:
        return [([a], n) for a, n in zip(self.arrays, self.weights, strict=True)]

    def expected_mean(self) -> np.ndarray:
        """The example-weighted mean computed in float64, one update at a time (untimed)."""
        if self._expected_mean is None:
            total = float(sum(self.weights))
            acc = np.zeros(self.params, dtype=np.float64)
            for a, n in zip(self.arrays, self.weights, strict=True):
                acc += a * (n / total)
            self._expected_mean = acc
        return self._expected_mean


def make_data(merchants: int, params: int, seed: int) -> Data:
    """Honest updates scattered around a common model, plus ``BYZANTINE`` far-off ones."""
    rng = np.random.default_rng(seed)
    center = rng.standard_normal(params, dtype=np.float32)
    center *= np.float32(0.1)
    arrays = []
    for k in range(merchants):
        a = rng.standard_normal(params, dtype=np.float32)
        a *= np.float32(1.0 if k >= merchants - BYZANTINE else 0.01)
        a += center
        arrays.append(a)
    weights = [int(n) for n in rng.integers(50, 5_000, size=merchants)]
    current = center + rng.standard_normal(params, dtype=np.float32) * np.float32(0.01)
    return Data(merchants, params, arrays, weights, current)


def read_only_pass(data: Data) -> Callable[[], None]:
    """The memory-bandwidth reference: read every byte of every update once, write nothing."""

    def run() -> None:
        for a in data.arrays:
            np.sum(a)

    return run


# --------------------------------------------------------------------------- cases


@dataclass
class Row:
    case: str
    strategy: str
    merchants: int
    params: int
    dtype: str
    seconds: float
    gb_per_s: float
    reference_seconds: float
    ratio_to_limit: float
    peak_extra_bytes: int
    peak_extra_x_update: float
    flower_seconds: float | None
    speedup_vs_flower: float | None
    target: str | None
    met: bool | None
    # for the table only
    flower_note: str = ""
    flower_once: bool = False

    def as_json(self) -> dict[str, Any]:
        keys = (
            "case strategy merchants params dtype seconds gb_per_s reference_seconds "
            "ratio_to_limit peak_extra_bytes peak_extra_x_update flower_seconds "
            "speedup_vs_flower target met"
        ).split()
        return {key: getattr(self, key) for key in keys}


@dataclass(frozen=True)
class Target:
    text: str
    check: Callable[[Row], bool | None]


def _at_most_limit(ratio: float, memory_x: float) -> Target:
    return Target(
        f"<= {ratio:g}x limit, <= {memory_x:g}x update mem",
        lambda row: row.ratio_to_limit <= ratio and row.peak_extra_x_update <= memory_x,
    )


def _memory_at_most(memory_x: float) -> Target:
    return Target(f"<= {memory_x:g}x update mem", lambda row: row.peak_extra_x_update <= memory_x)


def _faster_than_flower(factor: float) -> Target:
    return Target(
        f">= {factor:g}x faster than Flower",
        lambda row: None if row.speedup_vs_flower is None else row.speedup_vs_flower >= factor,
    )


Runner = Callable[[Data, dict[str, np.ndarray]], Callable[[], Any]]
FlowerRunner = Callable[[Data, Any], Callable[[], Any]]


@dataclass(frozen=True)
class Case:
    name: str
    strategy: str
    dataset: str  # "large" (100 x 10M) or "small" (100 x 1M)
    run: Runner  # (data, server state) -> the call to time
    flower: FlowerRunner | None = None
    flower_once: bool = False  # too slow to repeat: one Flower run only
    target: Target | None = None
    check: str = "none"  # "mean": vs float64 FedAvg; "flower": vs Flower's output; "none"
    stateful: bool = False  # a server optimiser: time it with the state of a previous round


def _portal(strategy: str, params: dict[str, Any]) -> Runner:
    """The portal's own dispatcher, ``rounds.aggregation.aggregate``, on a list of updates."""

    def build(data: Data, state: dict[str, np.ndarray]) -> Callable[[], Any]:
        updates, current = data.updates, {NAME: data.current}
        return lambda: aggregate(
            strategy, params, updates=updates, weights=data.weights, current=current, state=state
        )

    return build


def _streaming(data: Data, state: dict[str, np.ndarray]) -> Callable[[], Any]:
    """FedAvg over a one-shot generator: the path for updates produced one at a time."""
    updates = data.updates
    return lambda: fedavg((u for u in updates), data.weights)


def _one_thread(data: Data, state: dict[str, np.ndarray]) -> Callable[[], Any]:
    """FedAvg confined to one core (the portal's default spreads large work over all cores)."""
    updates = data.updates
    return lambda: fedavg(updates, data.weights, threads=1)


def _naive(data: Data, state: dict[str, np.ndarray]) -> Callable[[], Any]:
    """What one would write first: ``sum(u * w for ...)`` (a temporary per update)."""
    total = float(sum(data.weights))
    coefficients = [n / total for n in data.weights]
    return lambda: sum(u * c for u, c in zip(data.arrays, coefficients, strict=True))


def _flower(function: str, **kwargs: Any) -> FlowerRunner:
    def build(data: Data, fl: Any) -> Callable[[], Any]:
        results = data.flower_results
        return lambda: getattr(fl, function)(results, **kwargs)

    return build


CASES: dict[str, Case] = {
    case.name: case
    for case in [
        Case(
            "fedavg",
            "fedavg",
            "large",
            _portal("fedavg", {}),
            flower=_flower("aggregate"),
            target=_at_most_limit(1.5, 2.0),
            check="mean",
        ),
        Case(
            "fedavg-stream",
            "fedavg (one-shot generator)",
            "large",
            _streaming,
            target=_memory_at_most(2.0),
            check="mean",
        ),
        Case("fedavg-1thread", "fedavg on one core", "large", _one_thread, check="mean"),
        Case("fedavg-naive", "naive numpy loop", "large", _naive, check="mean"),
        Case(
            "median",
            "median",
            "small",
            _portal("median", {}),
            flower=_flower("aggregate_median"),
            target=_faster_than_flower(5),
            check="flower",
        ),
        Case(
            "trimmed_mean",
            "trimmed_mean (beta=0.1)",
            "small",
            _portal("trimmed_mean", {"beta": 0.1}),
            flower=_flower("aggregate_trimmed_avg", proportiontocut=0.1),
            target=_faster_than_flower(5),
            check="flower",
        ),
        Case(
            "krum",
            f"krum (f={BYZANTINE})",
            "small",
            _portal("krum", {"f": BYZANTINE}),
            flower=_flower("aggregate_krum", num_malicious=BYZANTINE, to_keep=0),
            flower_once=True,
            target=_faster_than_flower(10),
            check="flower",
        ),
        Case(
            "multi_krum",
            f"multi_krum (f={BYZANTINE}, m=10)",
            "small",
            _portal("multi_krum", {"f": BYZANTINE, "m": 10}),
            flower=_flower("aggregate_krum", num_malicious=BYZANTINE, to_keep=10),
            flower_once=True,
            target=_faster_than_flower(10),
            check="flower",
        ),
        Case("fedadam", "fedadam", "small", _portal("fedadam", {}), stateful=True),
        Case("fedyogi", "fedyogi", "small", _portal("fedyogi", {}), stateful=True),
        Case("fedavgm", "fedavgm", "small", _portal("fedavgm", {}), stateful=True),
    ]
}
SIZES = {"large": 10_000_000, "small": 1_000_000}


# --------------------------------------------------------------------------- running


def tensor_of(result: Any) -> np.ndarray:
    """The single output tensor of our functions (Outcome / dict) or Flower's (list)."""
    if isinstance(result, Outcome):
        result = result.weights
    if isinstance(result, dict):
        result = result[NAME]
    if isinstance(result, list):
        result = result[0]
    return np.asarray(result)


def agree(actual: np.ndarray, expected: np.ndarray) -> tuple[bool, float]:
    """float32 results against a reference: equal within float32 rounding of the sums."""
    actual, expected = actual.reshape(-1), expected.reshape(-1)
    if actual.shape != expected.shape:
        return False, math.inf
    diff = float(np.max(np.abs(actual.astype(np.float64) - expected)))
    scale = max(1.0, float(np.max(np.abs(expected))))
    return diff <= 1e-4 * scale, diff


def load_flower(disabled: bool) -> tuple[Any, str]:
    """Flower's aggregation module and its version, or None and why not."""
    if disabled:
        return None, "disabled (--no-flower)"
    try:
        import flwr  # optional extra: imported only when measured
        from flwr.server.strategy import aggregate as fl
    except ImportError as exc:
        return None, f"not installed ({exc})"
    return fl, f"flwr {flwr.__version__}"


@dataclass
class Bench:
    repeat: int
    flower: Any
    problems: list[str] = field(default_factory=list)

    def measure(self, case: Case, data: Data) -> Row:
        tag = f"[{case.name}]"
        state: dict[str, np.ndarray] = {}
        if case.stateful:  # the state a previous round left (moments/momentum), untimed
            state = case.run(data, {})().state
        call = case.run(data, state)

        # 1. peak extra memory, in a separate untimed (traced) call; its result is checked
        peak, result = peak_extra_bytes(call)
        ours = tensor_of(result) if case.check != "none" else None
        del result
        if case.check == "mean":
            self._check(tag, "float64 FedAvg", ours, data.expected_mean())

        # 2. timed runs, each next to a read-only pass over the same bytes
        reference = read_only_pass(data)
        times: list[float] = []
        references: list[float] = []
        for i in range(self.repeat):
            ref_seconds, _ = timed(reference)
            seconds, result = timed(call)
            del result
            free()
            times.append(seconds)
            references.append(ref_seconds)
            progress(
                f"{tag} run {i + 1}/{self.repeat}: {seconds:.3f} s "
                f"(read-only pass {ref_seconds:.3f} s)"
            )
        seconds = float(np.median(times))
        ref_seconds = float(np.median(references))

        # 3. Flower on the same arrays
        flower_seconds, note = self._flower(case, data, ours, tag)
        del ours
        free()

        row = Row(
            case=case.name,
            strategy=case.strategy,
            merchants=data.merchants,
            params=data.params,
            dtype=data.dtype.name,
            seconds=seconds,
            gb_per_s=data.total_bytes / GB / seconds,
            reference_seconds=ref_seconds,
            ratio_to_limit=seconds / ref_seconds,
            peak_extra_bytes=int(peak),
            peak_extra_x_update=peak / data.update_bytes,
            flower_seconds=flower_seconds,
            speedup_vs_flower=None if flower_seconds is None else flower_seconds / seconds,
            target=case.target.text if case.target else None,
            met=None,
            flower_note=note,
            flower_once=case.flower_once and flower_seconds is not None,
        )
        row.met = case.target.check(row) if case.target else None
        return row

    def _flower(
        self, case: Case, data: Data, ours: np.ndarray | None, tag: str
    ) -> tuple[float | None, str]:
        if case.flower is None:
            return None, "n/a"
        if self.flower is None:
            return None, "unavailable"
        runs = 1 if case.flower_once else self.repeat
        call = case.flower(data, self.flower)
        times = []
        for i in range(runs):
            try:
                seconds, result = timed(call)
            except Exception as exc:  # report it and keep benchmarking (e.g. MemoryError)
                progress(f"{tag} Flower failed: {exc!r}")
                return None, "unavailable"
            times.append(seconds)
            once = " (run once: O(K^2 d) Python loops)" if case.flower_once else ""
            progress(f"{tag} Flower run {i + 1}/{runs}: {seconds:.3f} s{once}")
            if i == runs - 1 and case.check == "flower" and ours is not None:
                self._check(tag, "Flower's result", ours, tensor_of(result))
            del result
            free()
        return float(np.median(times)), ""

    def _check(self, tag: str, what: str, actual: np.ndarray, expected: np.ndarray) -> None:
        ok, diff = agree(actual, expected)
        if ok:
            progress(f"{tag} result agrees with {what} (max abs diff {diff:.2e})")
        else:
            message = f"{tag} result DIFFERS from {what} (max abs diff {diff:.3g})"
            progress(message)
            self.problems.append(message)


# --------------------------------------------------------------------------- output


def human_count(n: int) -> str:
    for unit, size in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size and n % (size // 10) == 0:
            return f"{n / size:g}{unit}"
    return str(n)


def human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def table(rows: Sequence[Row], flower_info: str) -> str:
    header = [
        "case",
        "merchants",
        "params",
        "median s",
        "limit s",
        "GB/s",
        "x limit",
        "peak extra (x update)",
        "Flower s",
        "vs Flower",
        "target",
        "met?",
    ]
    lines = [header]
    once = False
    for row in rows:
        if row.flower_seconds is None:
            flower = row.flower_note
        else:
            flower = f"{row.flower_seconds:.3f}" + ("*" if row.flower_once else "")
            once = once or row.flower_once
        lines.append(
            [
                row.case,
                str(row.merchants),
                human_count(row.params),
                f"{row.seconds:.3f}",
                f"{row.reference_seconds:.3f}",
                f"{row.gb_per_s:.2f}",
                f"{row.ratio_to_limit:.2f}x",
                f"{human_bytes(row.peak_extra_bytes)} ({row.peak_extra_x_update:.2f}x)",
                flower,
                "-" if row.speedup_vs_flower is None else f"{row.speedup_vs_flower:.1f}x",
                row.target or "-",
                {True: "yes", False: "NO", None: "-"}[row.met],
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    numeric = {1, 2, 3, 4, 5, 6, 7, 8, 9}
    text = []
    for n, line in enumerate(lines):
        cells = [
            cell.rjust(w) if i in numeric and n else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        text.append("  ".join(cells).rstrip())
        if n == 0:
            text.append("  ".join("-" * w for w in widths))
    text.append("")
    text.append(
        "limit s: one read-only pass over the same bytes (np.sum of every update), measured "
        "next to each run; x limit = median s / limit s; GB/s = bytes of all updates / median s."
    )
    text.append(
        "peak extra: tracemalloc peak during one separate untimed call, result included; "
        "x update = / one update's size."
    )
    text.append(f"Flower: {flower_info}; vs Flower = Flower s / median s; n/a = no equivalent.")
    if once:
        text.append(
            "* Flower's Krum is O(K^2 d) with Python loops over pairs: run once, not a median."
        )
    return "\n".join(text)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.aggregation",
        description="Aggregation benchmarks against the memory-bandwidth limit and Flower.",
    )
    parser.add_argument(
        "--case",
        action="append",
        choices=list(CASES),
        help="run only this case (repeatable); default: all",
    )
    parser.add_argument("--quick", action="store_true", help="10x smaller models (smoke run)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per case (median)")
    parser.add_argument("--json", action="store_true", help="one JSON object per case on stdout")
    parser.add_argument("--no-flower", action="store_true", help="do not measure Flower")
    parser.add_argument("--merchants", type=int, default=100, help="updates per case")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the synthetic updates")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.merchants < 2 * BYZANTINE + 3:
        parser.error(f"--merchants must be at least {2 * BYZANTINE + 3} (Krum with f=10)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = [name for name in CASES if not args.case or name in args.case]
    flower, flower_info = load_flower(args.no_flower)
    divisor = 10 if args.quick else 1
    progress(
        f"numpy {np.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()}; Flower: {flower_info}; repeat {args.repeat}"
    )
    bench = Bench(args.repeat, flower)
    rows: list[Row] = []
    for dataset, params in SIZES.items():
        names = [name for name in chosen if CASES[name].dataset == dataset]
        if not names:
            continue
        params //= divisor
        size = args.merchants * params * 4
        progress(
            f"generating {args.merchants} x {human_count(params)} float32 "
            f"({human_bytes(size)}), seed {args.seed}…"
        )
        data = make_data(args.merchants, params, args.seed)
        for name in names:
            progress(f"[{name}] measuring…")
            row = bench.measure(CASES[name], data)
            rows.append(row)
            if args.json:
                print(json.dumps(row.as_json()), flush=True)
            free()
        del data
        free()
    output = table(rows, flower_info)
    print(output, file=sys.stderr if args.json else sys.stdout, flush=True)
    for problem in bench.problems:
        progress(f"ERROR: {problem}")
    return 1 if bench.problems else 0


if __name__ == "__main__":
    sys.exit(main())
