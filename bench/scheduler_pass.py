"""One scheduler pass (`bot.reminders.ReminderPass.run`) in a process of its own, so that
the benchmark can stop a pass that runs too long by ending the process (its open batch
rolls back; the batches it committed stay done) and read the progress from the database.

    python -m bench.scheduler_pass DATABASE_URL   # prints one JSON line per pass
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time

from bot.reminders import ReminderPass
from bot.settings import Settings
from bot.tenants import load_tenants
from storage import crypto
from storage.db import create_engine, session_factory


async def main_async(database_url: str) -> None:
    settings = Settings(_env_file=None)
    crypto.configure(settings.keyring())  # histories are sealed, as in `serve`
    tenants = load_tenants(settings.tenants_dir)
    engine = create_engine(database_url)
    try:
        job = ReminderPass(session_factory(engine), tenants)
        for name in ("cold", "warm"):
            started = time.perf_counter()
            report = await job.run()
            line = {
                "pass": name,
                "seconds": round(time.perf_counter() - started, 3),
                "looked_at": report.looked_at,
                "sent": report.sent,
                "already_sent": report.already_sent,
                "failed": report.failed,
                "by_kind": {str(k): v for k, v in report.by_kind.items()},
            }
            print(json.dumps(line), flush=True)
    finally:
        await engine.dispose()


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main_async(sys.argv[1]))


if __name__ == "__main__":
    main()
