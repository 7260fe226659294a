"""The optional customer list: who the business already knows, so staff see whether a
verified identity belongs to a known customer (unknown people still get their request filed)."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from bot.verification import normalise_email
from storage import people
from storage.models import Requester

_PHONE = re.compile(r"^\+[1-9]\d{6,14}$")
COLUMNS = {
    "name": "name",
    "email": "email",
    "phone": "phone",
    "customer id": "customer_id",
    "customer_id": "customer_id",
    "id": "customer_id",
}


@dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    skipped: list[str] = field(default_factory=list)


def normalise_phone(text: str) -> str | None:
    """`+92 300 123-4567` → `+923001234567`; None unless it is E.164 with its plus sign."""
    digits = re.sub(r"[\s().-]", "", text.strip())
    digits = digits.removeprefix("whatsapp:")
    if digits.startswith("00"):
        digits = "+" + digits[2:]
    return digits if _PHONE.match(digits) else None


def _email_key(text: str) -> str | None:
    """Emails are matched without regard to case (as nearly every mail provider treats them)."""
    address = normalise_email(text) if text else None
    return address.lower() if address else None


def read_rows(lines: Iterable[str]) -> list[dict[str, str]]:
    """CSV rows keyed by our column names, header matched loosely (case, spaces)."""
    reader = csv.DictReader(lines)
    if reader.fieldnames is None:
        return []
    names = {raw: COLUMNS.get(raw.strip().lower(), "") for raw in reader.fieldnames}
    if "customer_id" not in names.values() or not {"email", "phone"} & set(names.values()):
        raise ValueError("the header needs a customer id and an email or phone column")
    return [
        {names[key]: (value or "").strip() for key, value in row.items() if key and names[key]}
        for row in reader
    ]


async def import_customers(
    session: AsyncSession, *, tenant: str, rows: list[dict[str, str]], now: datetime
) -> ImportReport:
    """Add or update each customer with its email and phone as (unverified) identities."""
    report = ImportReport()
    for line, row in enumerate(rows, start=2):
        email = _email_key(row.get("email", ""))
        phone = normalise_phone(row["phone"]) if row.get("phone") else None
        customer_id = row.get("customer_id", "")
        if not customer_id or not (email or phone):
            report.skipped.append(f"line {line}: needs a customer id and an email or phone")
            continue
        identities = [("email", email), ("phone", phone)]
        existing = await _existing(session, tenant, identities)
        if existing is None:
            first_kind, first_value = next((k, v) for k, v in identities if v)
            assert first_value is not None
            existing = await people.requester_for(
                session,
                tenant=tenant,
                kind=first_kind,
                value=first_value,
                now=now,
                display_name=row.get("name") or None,
            )
            report.added += 1
        else:
            report.updated += 1
        existing.customer_ref = customer_id[:100]
        existing.display_name = row.get("name") or existing.display_name
        session.add(existing)
        assert existing.id is not None
        for kind, value in identities:
            if value:
                await people.attach_identity(
                    session,
                    requester_id=existing.id,
                    tenant=tenant,
                    kind=kind,
                    value=value,
                    now=now,
                )
    return report


async def _existing(
    session: AsyncSession, tenant: str, identities: list[tuple[str, str | None]]
) -> Requester | None:
    for kind, value in identities:
        if value:
            found = await people.find_requester(session, tenant=tenant, kind=kind, value=value)
            if found is not None:
                return found
    return None


async def known_customer(
    session: AsyncSession, *, tenant: str, email: str | None = None, phone: str | None = None
) -> str | None:
    """The business's own customer id for this email or phone, if it imported one."""
    for kind, value in (("email", _email_key(email or "")), ("phone", phone)):
        if value:
            found = await people.find_requester(session, tenant=tenant, kind=kind, value=value)
            if found is not None and found.customer_ref:
                return found.customer_ref
    return None
