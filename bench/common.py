"""What the benchmark scripts share: databases, percentiles, the result table, process stats.

Every script runs from the repository root (`.venv/bin/python -m bench.<script>`), talks to
loopback addresses only, and bounds every loop by a count and a deadline.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_DSN = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
RESULTS = ROOT / "bench" / "results"
LOAD_AT_START = os.getloadavg()  # other work on the machine skews every figure
STARTED_AT = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- databases ---------------------------------------------------------------------------


def pg_dsn(database: str) -> str:
    """A libpq DSN for `database` on the benchmark server."""
    return PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + database


def pg_url(database: str) -> str:
    """The SQLAlchemy async URL rightsdesk takes in DATABASE_URL."""
    return pg_dsn(database).replace("postgresql://", "postgresql+asyncpg://", 1)


async def pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def pg_available() -> bool:
    try:
        await pg_admin("SELECT 1")
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    return True


async def create_pg_database(prefix: str) -> str:
    """A fresh, empty database; its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    await pg_admin(f'CREATE DATABASE "{name}"')
    return name


async def drop_pg_database(name: str) -> None:
    await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def rightsdesk_migrate(database_url: str, *, timeout: float = 120) -> None:
    """`rightsdesk migrate` against `database_url`, as the release phase runs it."""
    env = dict(os.environ, DATABASE_URL=database_url)
    subprocess.run(
        [sys.executable, "-m", "bot.cli", "migrate"],
        env=env,
        cwd=ROOT,
        check=True,
        timeout=timeout,
        capture_output=True,
    )


# --- numbers -----------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (nearest rank, p in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def summary_ms(values: Sequence[float]) -> dict[str, Any]:
    """n, p50, p95, p99 and max of durations given in seconds, in milliseconds."""
    return {
        "n": len(values),
        "p50_ms": ms(percentile(values, 50)),
        "p95_ms": ms(percentile(values, 95)),
        "p99_ms": ms(percentile(values, 99)),
        "max_ms": ms(max(values)) if values else None,
    }


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


@contextmanager
def timed(into: list[float]) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        into.append(time.perf_counter() - started)


# --- processes ---------------------------------------------------------------------------


@contextmanager
def collector_paused() -> Iterator[None]:
    """The driver's own cyclic garbage collector off while a phase is measured (a collection
    before and after): its pauses (up to 0.24 s with the fakes' records, session 13) count in
    every latency measured across them. pyperf and timeit turn it off the same way."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        gc.collect()


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process (VmRSS in /proc/<pid>/status), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def hwm_mb(pid: int) -> float | None:
    """Peak resident memory (VmHWM), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def self_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


# --- output ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "started_utc": STARTED_AT,
        "loadavg_at_start": [round(x, 2) for x in LOAD_AT_START],
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain-text table, numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [
        max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h))
        for i, h in enumerate(headers)
    ]
    lines = [
        "  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    for row in cells:
        lines.append(
            "  ".join(
                v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(row, widths, strict=True)
            )
        )
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _numeric(text: str) -> bool:
    return text.replace(",", "").replace(".", "").replace("-", "").replace("%", "").isdigit()


def write_json(name: str, result: dict[str, Any], json_path: str | None) -> str:
    """Keep the JSON under bench/results/<name>.json (or `json_path`); the text written."""
    result = {"benchmark": name, "machine": machine(), **result}
    encoded = json.dumps(result, indent=2, default=str)
    path = Path(json_path) if json_path else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(encoded + "\n")
    return encoded


def emit(name: str, result: dict[str, Any], text: str, json_path: str | None) -> None:
    """Print the table, then the JSON; keep the JSON under bench/results/ (or `json_path`)."""
    encoded = write_json(name, result, json_path)
    print(text)
    print()
    print(encoded)


async def wait_until(check: Any, *, within: float, every: float = 0.05) -> bool:
    """Poll `check()` until truthy or `within` seconds pass; whether it became truthy."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(every)
    return bool(check())


# --- profiling ---------------------------------------------------------------------------

PY_SPY_CANDIDATES = (
    os.environ.get("PY_SPY", ""),
    "/tmp/bench-tools/bin/py-spy",  # noqa: S108 (where bench/README.md installs it)
    "py-spy",
)


def py_spy() -> str | None:
    """The py-spy executable, if one is installed (it is not a project dependency)."""
    for candidate in PY_SPY_CANDIDATES:
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def start_profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """Sample `pid` with py-spy for `seconds` into a collapsed-stack file; None without it."""
    exe = py_spy()
    if exe is None:
        return None
    return subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            "200",
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarize_profile(
    path: Path, *, top: int = 25, prefixes: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Inclusive share of samples per function (`name (file)`) from py-spy's collapsed
    stacks, and the share of samples whose stack passes through each of `prefixes`."""
    if not path.exists():
        return {}
    inclusive: dict[str, int] = {}
    leaf: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_name(f) for f in stack.split(";") if f]
        for name in set(frames):
            inclusive[name] = inclusive.get(name, 0) + count
        if frames:
            leaf[frames[-1]] = leaf.get(frames[-1], 0) + count
    if not total:
        return {"samples": 0}

    def share(table_: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(table_.items(), key=lambda kv: -kv[1])[:top]
        return [(name, round(100 * n / total, 1)) for name, n in ranked]

    return {"samples": total, "inclusive_pct": share(inclusive), "self_pct": share(leaf)}


def _frame_name(frame: str) -> str:
    """`func (path/to/file.py:12)` -> `func (file.py)`; shortened site-packages paths."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})"
