"""The admin ticket list and the JSON API over HTTP, when a running `serve` has them.

Detects rather than assumes: `/api/v1/tickets` is timed with a bearer token made by
`rightsdesk token create`; `/admin/tickets` after signing in through the form at
`/admin/login` as a user made by `rightsdesk admin create`. Whatever is missing is
reported as missing, not failed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import uuid
from typing import Any

import aiohttp

from bench.common import ROOT, summary_ms

PAGE = 50
_INPUT = re.compile(r"<input[^>]*>", re.IGNORECASE)
_ATTR = re.compile(r'(\w+)="([^"]*)"')


def _cli(env: dict[str, str], *argv: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", *argv],
        env={**os.environ, **env},
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def api_auth(env: dict[str, str]) -> dict[str, str]:
    """The header of a new API token, made with `rightsdesk token create` (the database of
    `env` needs no running `serve`)."""
    printed = _cli(env, "token", "create", f"bench-{uuid.uuid4().hex[:8]}")
    return {"Authorization": f"Bearer {printed.strip().splitlines()[-1].split()[-1]}"}


async def _series_until_stdin_closes(url: str, auth: dict[str, str]) -> list[float]:
    loop = asyncio.get_running_loop()
    closed = loop.run_in_executor(None, sys.stdin.read)
    durations: list[float] = []
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession() as http:
        while not closed.done():
            started = time.perf_counter()
            async with http.get(url, headers=auth, timeout=timeout) as response:
                await response.read()
                if response.status != 200:
                    break
            durations.append(time.perf_counter() - started)
    await closed
    return durations


class ApiSeries:
    """GETs of one API URL, one after another, from a process of their own (so that the
    fakes answering `serve` in the bench's process do not delay the client), from `start()`
    until `stop()`, which returns each one's duration in seconds."""

    def __init__(self, url: str, auth: dict[str, str]) -> None:
        self.url, self.token = url, auth["Authorization"]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> ApiSeries:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.http_admin",
            self.url,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "BENCH_AUTH": self.token},
        )
        return self

    async def stop(self) -> list[float]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.close()
        printed, _ = await self.proc.communicate()
        return [float(v) for v in json.loads(printed or b"[]")]


class AdminClient:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        base: str,
        env: dict[str, str],
        deep: tuple[str | None, int] = (None, 0),
    ) -> None:
        """`deep`: a cursor far into the list (as the API writes it) and its row number."""
        self.http, self.base, self.env = http, base, env
        self.deep_cursor, self.deep_row = deep

    async def _timed_get(
        self, path: str, repeat: int, headers: dict[str, str] | None = None, budget: float = 5.0
    ) -> dict[str, Any]:
        """Two warm-up GETs, then up to `repeat` timed ones within `budget` seconds."""
        durations = []
        status = 0
        deadline = time.monotonic() + budget
        timeout = aiohttp.ClientTimeout(total=30)
        for i in range(repeat + 2):
            started = time.perf_counter()
            async with self.http.get(self.base + path, headers=headers, timeout=timeout) as r:
                await r.read()
                status = r.status
            if status != 200:
                return {"status": status}
            if i >= 2:
                durations.append(time.perf_counter() - started)
            if time.monotonic() > deadline and durations:
                break
        return summary_ms(durations)

    async def time_list_pages(self, repeat: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        out |= await self._api(repeat)
        out |= await self._admin(repeat)
        return out

    # --- the JSON API -------------------------------------------------------------------

    async def _api(self, repeat: int) -> dict[str, Any]:
        async with self.http.get(self.base + "/api/v1/tickets") as response:
            if response.status == 404:
                return {"api": "not present (/api/v1/tickets answers 404)"}
        try:
            auth = api_auth(self.env)
        except (subprocess.SubprocessError, OSError) as exc:
            return {"api": f"no token: {exc}"}
        out: dict[str, Any] = {}
        cases = {
            "api first page": f"/api/v1/tickets?limit={PAGE}",
            "api tenant + status=open": f"/api/v1/tickets?limit={PAGE}&tenant=jooptics&status=open",
            "api type=erasure": f"/api/v1/tickets?limit={PAGE}&type=erasure",
            "api overdue": f"/api/v1/tickets?limit={PAGE}&overdue=true",
        }
        for name, path in cases.items():
            out[name] = await self._timed_get(path, repeat, auth)
        deep = await self._deep_api_cursor(auth)
        if deep is not None:
            cursor, row = deep
            out[f"api deep page (after row {row:,})"] = await self._timed_get(
                f"/api/v1/tickets?limit={PAGE}&cursor={cursor}", repeat, auth
            )
        return out

    async def _deep_api_cursor(self, auth: dict[str, str]) -> tuple[str, int] | None:
        """The given deep cursor, else as far as following next_cursor gets in 5 seconds."""
        if self.deep_cursor:
            return self.deep_cursor, self.deep_row
        cursor, rows, deadline = None, 0, time.monotonic() + 5
        while time.monotonic() < deadline:
            path = "/api/v1/tickets?limit=500" + (f"&cursor={cursor}" if cursor else "")
            async with self.http.get(self.base + path, headers=auth) as response:
                if response.status != 200:
                    break
                body = await response.json()
            rows += len(body.get("items", []))
            cursor = body.get("next_cursor")
            if not cursor:
                break
        return (cursor, rows) if cursor else None

    # --- the admin pages -------------------------------------------------------------------

    async def _admin(self, repeat: int) -> dict[str, Any]:
        async with self.http.get(self.base + "/admin/login") as response:
            if response.status == 404:
                return {"admin": "not present (/admin/login answers 404)"}
            page = await response.text()
        email, password = f"bench-{uuid.uuid4().hex[:6]}@example.com", uuid.uuid4().hex
        try:
            _cli(self.env, "admin", "create", email, "--role", "admin", "--password-stdin",
                 stdin=password + "\n")  # fmt: skip
        except (subprocess.SubprocessError, OSError) as exc:
            return {"admin": f"no admin user: {exc}"}
        form: dict[str, str] = {}
        for tag in _INPUT.findall(page):
            attrs = dict(_ATTR.findall(tag))
            name = attrs.get("name")
            if not name:
                continue
            kind = attrs.get("type", "text").lower()
            if kind == "password":
                form[name] = password
            elif kind == "email" or "email" in name.lower() or name.lower() == "username":
                form[name] = email
            else:
                form[name] = attrs.get("value", "")
        async with self.http.post(self.base + "/admin/login", data=form) as response:
            await response.read()
        async with self.http.get(self.base + "/admin/tickets", allow_redirects=False) as response:
            if response.status != 200:
                return {"admin": f"sign-in did not work (/admin/tickets answers {response.status})"}
        out: dict[str, Any] = {}
        cases = {
            "admin list first page": "/admin/tickets",
            "admin list tenant + status=open": "/admin/tickets?tenant=jooptics&status=open",
            "admin list overdue": "/admin/tickets?overdue=true",
        }
        for name, path in cases.items():
            out[name] = await self._timed_get(path, repeat)
        if self.deep_cursor:
            out[f"admin list deep page (after row {self.deep_row:,})"] = await self._timed_get(
                f"/admin/tickets?cursor={self.deep_cursor}", repeat
            )
        return out


if __name__ == "__main__":  # ApiSeries' client
    found = asyncio.run(
        _series_until_stdin_closes(sys.argv[1], {"Authorization": os.environ["BENCH_AUTH"]})
    )
    print(json.dumps(found))
