"""`rightsdesk serve` with one proposed change applied at start-up, to measure a proposal
before anyone edits project code. The variants (BENCH_VARIANT, comma-separated):

- `sqlite-one-connection`: the SQLite engine keeps a single pooled connection, so writers
  queue on the pool (an await, first come first served) instead of in SQLite's busy
  handler, which sleeps 1, 2, 5 … up to 100 ms between tries;
- `pg-no-pre-ping`: no `pool_pre_ping` on PostgreSQL, saving a round trip per checkout;
- `uvloop`: the event loop of uvloop (libuv) instead of asyncio's own;
- `gc-threshold`: the collector's thresholds from BENCH_GC_THRESHOLD ("20000,10,10");
- `gc-log`: every garbage collection that pauses the process for 5 ms or more is printed
  to the service log (`gc pause <generation> <ms> ms`), to see what the tails are made of,
  and every tenth full collection the kinds of object it walks (`gc gen2 …`);
- `gc-refreeze`: `gc.freeze()` again at the seconds after start in BENCH_GC_REFREEZE
  ("15,30,60");
- `no-journal`: on SQLite, webhooks store into the main database file as before session 7
  (no `x.inbox.db` journal), for an A/B of the journal;
- `journal-move`: the journal moves at most BENCH_JOURNAL_MOVE rows per claim (default
  `storage.inbound.Journal.MOVE`);
- `turns-log`: on SQLite, every write turn (`storage.db.WriteTurns`) held for 10 ms or
  more, or waited for 10 ms or more, is printed with the code that took it
  (`turn held|waited <ms> ms <file:function>`).

    BENCH_VARIANT=sqlite-one-connection DATABASE_URL=... python -m bench.serve_variant
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import storage.db

ROOT = Path(__file__).resolve().parent.parent


def _patched_create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    variants = {v.strip() for v in os.environ.get("BENCH_VARIANT", "").split(",") if v.strip()}
    if url.startswith("sqlite") and "sqlite-one-connection" in variants:
        storage.db._ensure_sqlite_dir(url)
        engine = create_async_engine(
            url, connect_args={"timeout": 30}, pool_size=1, max_overflow=0, pool_timeout=60
        )
        storage.db._tune_sqlite(engine)
        return engine
    if url.startswith("postgresql") and "pg-no-pre-ping" in variants:
        return create_async_engine(
            url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800
        )
    return _original(url, pool_size=pool_size)


_original: Any = storage.db.create_engine


def _log_gc_pauses() -> None:
    import gc
    import sys
    import threading
    import time
    from collections import Counter

    started: list[float] = []
    full = [0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter(), time.thread_time()]
        elif started:
            ms = (time.perf_counter() - started[0]) * 1000
            if ms >= 5:
                cpu = (time.thread_time() - started[1]) * 1000
                thread = threading.current_thread().name
                print(
                    f"gc pause {info['generation']} {ms:.1f} ms ({cpu:.1f} ms on the CPU, "
                    f"thread {thread}, {info['collected']} collected)",
                    file=sys.stderr,
                    flush=True,
                )
            if info["generation"] == 2:
                full[0] += 1
                if full[0] % 10 == 0:  # what the full collections walk through, now and then
                    objects = gc.get_objects(2)
                    kinds = Counter(type(o).__name__ for o in objects)
                    top = ", ".join(f"{name} {n}" for name, n in kinds.most_common(12))
                    print(f"gc gen2 {sum(kinds.values())} objects: {top}", file=sys.stderr)
                    sized = [o for o in objects if isinstance(o, dict | list | set | tuple)]
                    big = sorted(sized, key=len, reverse=True)[:8]
                    print(
                        "gc gen2 largest: "
                        + ", ".join(f"{type(o).__name__} {len(o)} {_sample(o)}" for o in big),
                        file=sys.stderr,
                    )

    gc.callbacks.append(callback)


def _sample(container: Any) -> str:
    """One item of a container, its types only (never its values: they may be personal)."""
    for item in container.items() if isinstance(container, dict) else container:
        return repr(
            type(item).__name__
            if not isinstance(item, tuple)
            else tuple(type(x).__name__ for x in item)
        )
    return "-"


def _log_write_turns() -> None:
    import asyncio
    import sys
    import time
    import traceback

    held: dict[object, tuple[float, str]] = {}
    acquire, release = storage.db.WriteTurns.acquire, storage.db.WriteTurns.release

    def caller() -> str:
        for frame in reversed(traceback.extract_stack(limit=25)):
            ours = str(ROOT) in frame.filename and "/.venv/" not in frame.filename
            if ours and not frame.filename.endswith(("storage/db.py", "serve_variant.py")):
                return f"{frame.filename.rsplit('/', 2)[-1]}:{frame.name}"
        return "?"

    async def timed_acquire(self: Any, *, urgent: bool = False) -> None:
        started = time.perf_counter()
        await acquire(self, urgent=urgent)
        now, where = time.perf_counter(), caller()
        if now - started >= 0.010:
            print(f"turn waited {(now - started) * 1000:.1f} ms {where}", file=sys.stderr)
        held[asyncio.current_task()] = (now, where)

    def timed_release(self: Any) -> None:
        taken = held.pop(asyncio.current_task(), None)
        if taken is not None and time.perf_counter() - taken[0] >= 0.010:
            ms = (time.perf_counter() - taken[0]) * 1000
            print(f"turn held {ms:.1f} ms {taken[1]}", file=sys.stderr)
        release(self)

    storage.db.WriteTurns.acquire = timed_acquire  # type: ignore[method-assign]
    storage.db.WriteTurns.release = timed_release  # type: ignore[method-assign]


def _refreeze() -> None:
    """`gc.freeze()` again at each of BENCH_GC_REFREEZE's seconds after start ("15,30,60"):
    what the service built while warming up leaves the collections' walk too."""
    import gc
    import sys
    import threading
    import time

    def run() -> None:
        started = time.monotonic()
        for at in map(float, os.environ.get("BENCH_GC_REFREEZE", "15,30,60").split(",")):
            time.sleep(max(0.0, started + at - time.monotonic()))
            gc.freeze()
            print(f"gc frozen: {gc.get_freeze_count()} objects", file=sys.stderr, flush=True)

    threading.Thread(target=run, name="bench-refreeze", daemon=True).start()


def _journal_variants(variants: str) -> None:
    from storage.inbound import Journal

    if "no-journal" in variants:
        Journal.beside = classmethod(lambda _cls, _url: None)  # type: ignore[assignment]
    if "journal-move" in variants:
        Journal.MOVE = int(os.environ.get("BENCH_JOURNAL_MOVE", str(Journal.MOVE)))


def main() -> None:
    _journal_variants(os.environ.get("BENCH_VARIANT", ""))
    if "gc-refreeze" in os.environ.get("BENCH_VARIANT", ""):
        _refreeze()
    if "turns-log" in os.environ.get("BENCH_VARIANT", ""):
        _log_write_turns()
    if "gc-log" in os.environ.get("BENCH_VARIANT", ""):
        _log_gc_pauses()
    if "gc-threshold" in os.environ.get("BENCH_VARIANT", ""):
        import gc

        gc.set_threshold(*map(int, os.environ["BENCH_GC_THRESHOLD"].split(",")))
    if "uvloop" in os.environ.get("BENCH_VARIANT", ""):
        import asyncio

        import uvloop  # not a project dependency: `pip install uvloop` to try it

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    storage.db.create_engine = _patched_create_engine  # type: ignore[assignment]
    import bot.app
    import bot.cli

    bot.app.create_engine = _patched_create_engine  # type: ignore[attr-defined]
    bot.cli.main(["serve"])


if __name__ == "__main__":
    main()
