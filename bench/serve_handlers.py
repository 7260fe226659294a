"""`rightsdesk serve` without its background workers (inbox, outbox, scheduler): the real
webhook handlers alone, to tell the handler's own cost from the work a message causes.

    DATABASE_URL=... PORT=... python -m bench.serve_handlers
"""

from __future__ import annotations

from aiohttp import web

from bot.app import create_app
from bot.logs import configure
from bot.settings import load_settings
from bot.tenants import load_tenants


def main() -> None:
    settings = load_settings()
    configure()
    app = create_app(settings, tenants=load_tenants(settings.tenants_dir), workers=False)
    web.run_app(app, host=settings.host, port=settings.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
