"""Names shared by storage and the core: request types, statuses, channels."""

from __future__ import annotations

from enum import StrEnum


class RequestType(StrEnum):
    ACCESS = "access"
    RECTIFICATION = "rectification"
    ERASURE = "erasure"
    PORTABILITY = "portability"
    RESTRICTION = "restriction"
    OBJECTION = "objection"
    CONSENT_WITHDRAWAL = "consent_withdrawal"
    MARKETING_OPT_OUT = "marketing_opt_out"
    COOKIE_OPT_OUT = "cookie_opt_out"
    COMPLAINT = "complaint"


class TicketStatus(StrEnum):
    AWAITING_VERIFICATION = "awaiting_verification"
    OPEN = "open"
    IN_PROGRESS = "in_progress"
    AWAITING_REQUESTER = "awaiting_requester"
    RESOLVED = "resolved"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def is_closed(self) -> bool:
        return self in CLOSED_STATUSES


CLOSED_STATUSES = frozenset(
    {TicketStatus.RESOLVED, TicketStatus.REJECTED, TicketStatus.CANCELLED, TicketStatus.EXPIRED}
)


class Channel(StrEnum):
    WHATSAPP = "whatsapp"
    TELEGRAM = "telegram"


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
