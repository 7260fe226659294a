"""The ceiling: the least a correct Twilio webhook handler must do, and nothing else.

Parse the form, check `X-Twilio-Signature` with twilio's RequestValidator, store the message
durably (one INSERT … ON CONFLICT DO NOTHING and its commit) and answer empty TwiML. No ORM,
no logging, no metrics, no background work: the thinnest drivers (asyncpg; aiosqlite with
the same WAL/synchronous=NORMAL settings rightsdesk uses).

    python -m bench.bare_server --database sqlite:///path.db|postgresql://... --port N
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiosqlite
import asyncpg
from aiohttp import web
from twilio.request_validator import RequestValidator

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS bare_inbound (
    id bigserial PRIMARY KEY,
    provider_id varchar(64) NOT NULL UNIQUE,
    sender varchar(64) NOT NULL,
    payload json NOT NULL,
    received_at timestamptz NOT NULL
)"""
SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS bare_inbound (
    id INTEGER PRIMARY KEY,
    provider_id VARCHAR(64) NOT NULL UNIQUE,
    sender VARCHAR(64) NOT NULL,
    payload JSON NOT NULL,
    received_at TIMESTAMP NOT NULL
)"""
STORE = web.AppKey("store", Any)


class PgStore:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def open(self) -> None:
        self.pool = await asyncpg.create_pool(self.dsn, min_size=4, max_size=10)
        await self.pool.execute(PG_SCHEMA)

    async def store(self, sid: str, sender: str, payload: str) -> None:
        await self.pool.execute(  # autocommit: the INSERT is its own committed transaction
            "INSERT INTO bare_inbound (provider_id, sender, payload, received_at) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (provider_id) DO NOTHING",
            sid,
            sender,
            payload,
            datetime.now(UTC),
        )

    async def close(self) -> None:
        await self.pool.close()


class SqliteStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = asyncio.Lock()

    async def open(self) -> None:
        self.db = await aiosqlite.connect(self.path, timeout=30, isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
            await self.db.execute(f"PRAGMA {pragma}")
        await self.db.execute(SQLITE_SCHEMA)

    async def store(self, sid: str, sender: str, payload: str) -> None:
        async with self.lock:  # one writer at a time, as SQLite has it anyway
            await self.db.execute("BEGIN IMMEDIATE")
            await self.db.execute(
                "INSERT INTO bare_inbound (provider_id, sender, payload, received_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (provider_id) DO NOTHING",
                (sid, sender, payload, datetime.now(UTC).isoformat()),
            )
            await self.db.execute("COMMIT")

    async def close(self) -> None:
        await self.db.close()


def make_app(database: str, auth_token: str, public: str) -> web.Application:
    validator = RequestValidator(auth_token)

    async def receive(request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        signature = request.headers.get("X-Twilio-Signature", "")
        if not validator.validate(public + request.path_qs, form, signature):
            return web.Response(status=403, text="invalid signature")
        sid = form.get("MessageSid", "")
        if not sid:
            return web.Response(status=400, text="MessageSid missing")
        await request.app[STORE].store(sid, form.get("From", ""), json.dumps(form))
        return web.Response(text=EMPTY_TWIML, content_type="text/xml")

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        store: PgStore | SqliteStore
        if database.startswith("sqlite:///"):
            store = SqliteStore(database.removeprefix("sqlite:///"))
        else:
            store = PgStore(database)
        await store.open()
        app[STORE] = store
        yield
        await store.close()

    app = web.Application()
    app.add_routes([web.post("/webhooks/whatsapp", receive), web.get("/healthz", healthz)])
    app.cleanup_ctx.append(lifetime)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--auth-token", required=True)
    parser.add_argument("--public", required=True)
    args = parser.parse_args()
    app = make_app(args.database, args.auth_token, args.public)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
