"""What crosses the edge: channel-neutral inbound and outbound messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from storage.enums import Channel


@dataclass(frozen=True, slots=True)
class Media:
    """An attachment the customer sent: where to fetch it and what it is."""

    url: str
    content_type: str | None = None
    file_name: str | None = None


@dataclass(frozen=True, slots=True)
class Inbound:
    """One thing a person sent us, whichever channel it came by."""

    channel: Channel
    provider_id: str
    sender: str  # whatsapp:+E164 or the Telegram chat id
    received_at: datetime
    tenant: str | None = None
    to: str | None = None  # WhatsApp: the business number written to
    text: str = ""
    media: tuple[Media, ...] = ()
    user_id: int | None = None  # Telegram user id (staff are recognised by it)
    chat_type: str | None = None  # Telegram: private | group | supergroup | channel
    display_name: str | None = None
    language_code: str | None = None
    start_param: str | None = None  # Telegram /start <param>
    callback_data: str | None = None  # Telegram button press
    callback_id: str | None = None
    reply_to_message_id: int | None = None
    thread_id: int | None = None
    message_id: int | None = None

    @property
    def is_private(self) -> bool:
        return self.channel is Channel.WHATSAPP or self.chat_type == "private"


@dataclass(frozen=True, slots=True)
class Outbound:
    """One message to send: plain text, a template, a document or a Telegram call."""

    channel: Channel
    recipient: str
    text: str = ""
    tenant: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        """The JSON kept in the outbox row; senders read it back."""
        return {"text": self.text, **self.extra}
