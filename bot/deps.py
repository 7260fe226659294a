"""The shared objects of one process, held under one AppKey and handed to the edges."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bot.mail import EmailSender
from bot.metrics import Metrics
from bot.priority import Foreground
from bot.settings import Settings
from bot.tenants import Tenants
from storage.db import SessionFactory
from storage.inbound import Journal
from storage.models import utcnow

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


@dataclass
class Deps:
    """Everything a request handler or a worker may need; built once by `create_app`."""

    settings: Settings
    tenants: Tenants
    engine: AsyncEngine
    sessions: SessionFactory
    metrics: Metrics
    mail: EmailSender
    now: Callable[[], datetime] = utcnow
    telegram_bot: Any = None  # telegram.ext.ExtBot when the channel is on
    wakers: list[Callable[[], None]] = field(default_factory=list)
    foreground: Foreground = field(default_factory=Foreground)  # people and webhooks first
    journal: Journal | None = None  # a SQLite file's: where webhooks store first

    def wake_inbox(self) -> None:
        """Tell this process's inbox worker that a message was just stored."""
        for wake in self.wakers:
            wake()
