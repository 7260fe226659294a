"""Tenant policy files: strict loading, cross-file checks and channel look-ups.

One TOML file per business in `config/tenants/<slug>.toml` (see INTERFACE.md).
Every problem found is reported with its file, dotted key and reason, all at once,
so that `rightsdesk check-config` can print the whole list.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    WrapSerializer,
)

from bot.clock import Duration, parse_duration
from storage.enums import RequestType

__all__ = [
    "Channels",
    "ConfigProblem",
    "Extensions",
    "Regulator",
    "Reminders",
    "Retention",
    "Tenant",
    "TenantConfigError",
    "Tenants",
    "load_tenants",
]

_SLUG = re.compile(r"^[a-z0-9-]+$")
_REF_PREFIX = re.compile(r"^[A-Z0-9]{1,8}$")
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_TELEGRAM_START = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CONTENT_SID = re.compile(r"^HX[0-9a-fA-F]{32}$")
_TEMPLATE_NAME = re.compile(r"^[a-z0-9_]{1,64}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
_URL = re.compile(r"^https?://[^\s/?#]+\.[^\s/?#]+(?:[/?#]\S*)?$")
_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")
_WHATSAPP_PREFIX = "whatsapp:"

_T = TypeVar("_T")


# --- errors ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong in the tenant configuration: where it is and why it is wrong."""

    file: Path
    key: str
    reason: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else str(self.file)
        return f"{where}: {self.key}: {self.reason}" if self.key else f"{where}: {self.reason}"


class TenantConfigError(Exception):
    """The tenant files cannot be used; `problems` lists every reason found."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


# --- field types ----------------------------------------------------------------------


def _duration(value: object) -> Duration:
    """Accept a duration string from the file (or an already parsed `Duration`)."""
    if isinstance(value, Duration):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a duration string such as '7 business days', got {value!r}")
    return parse_duration(value)


def _not_immediate(value: Duration) -> Duration:
    """Reject `immediate` where a length of time is needed (an offset, an interval)."""
    if value.is_immediate:
        raise ValueError("'immediate' is not allowed here: give a length of time")
    return value


def _matching(pattern: re.Pattern[str], what: str) -> AfterValidator:
    """Validator that explains, in words, what a string should look like."""

    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"{value!r} is not {what}")
        return value

    return AfterValidator(check)


def _non_blank(value: str) -> str:
    """Reject a name that is only spaces."""
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _time_zone(value: str) -> str:
    """Keep only names the IANA database (zoneinfo) knows."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not a known IANA time zone (e.g. 'Asia/Karachi')") from None
    return value


@cache
def _holiday_countries() -> frozenset[str]:
    """Country codes the `holidays` package has calendars for (slow to list: cached)."""
    return frozenset(holidays.list_supported_countries())


def _holiday_country(value: str) -> str:
    """Keep only calendars that business-day arithmetic can actually build."""
    if value not in _holiday_countries():
        raise ValueError(
            f"{value!r} is not a country code the holidays package supports "
            "(ISO 3166-1 alpha-2 in capitals, e.g. 'PK', 'JO', 'IN')"
        )
    return value


def _request_type(value: object) -> RequestType:
    """Turn a `[requests]` key into a request type, naming the known ones on failure."""
    if isinstance(value, RequestType):
        return value
    try:
        return RequestType(str(value))
    except ValueError:
        known = ", ".join(kind.value for kind in RequestType)
        raise ValueError(f"unknown request type {value!r}; known types: {known}") from None


def _unique(values: tuple[_T, ...]) -> tuple[_T, ...]:
    """Reject a list that names the same thing twice."""
    seen: set[_T] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{value!s} is listed twice")
        seen.add(value)
    return values


def _non_empty(values: tuple[_T, ...]) -> tuple[_T, ...]:
    """Reject an empty list where at least one entry is needed."""
    if not values:
        raise ValueError("must list at least one entry")
    return values


def _frozen_requests(value: Mapping[RequestType, Duration]) -> Mapping[RequestType, Duration]:
    """A business offering nothing is a mistake; the result is read-only."""
    if not value:
        raise ValueError("the business must offer at least one request type")
    return MappingProxyType(dict(value))


def _frozen_templates(value: Mapping[str, str]) -> Mapping[str, str]:
    """Make the loaded mapping read-only, like the rest of the policy."""
    return MappingProxyType(dict(value))


def _as_dict(value: Mapping[Any, Any], handler: SerializerFunctionWrapHandler) -> Any:
    """Dump a read-only mapping as the plain dict its schema knows how to serialise."""
    return handler(dict(value))


_DumpAsDict = WrapSerializer(_as_dict)


def _positive(value: int) -> int:
    """Telegram user ids are positive; a negative one is a chat pasted in the wrong place."""
    if value <= 0:
        raise ValueError(f"{value} is not a Telegram user id (they are positive)")
    return value


def _negative(value: int) -> int:
    """Telegram group ids are negative; a positive one is a user pasted in the wrong place."""
    if value >= 0:
        raise ValueError(f"{value} is not a Telegram group chat id (they are negative)")
    return value


DurationField = Annotated[
    Duration, BeforeValidator(_duration), PlainSerializer(str, return_type=str)
]
"""A duration written as text in the file ("7 business days"), held as a `Duration`."""

Interval = Annotated[DurationField, AfterValidator(_not_immediate)]
NonBlank = Annotated[StrictStr, AfterValidator(_non_blank)]
Email = Annotated[StrictStr, _matching(_EMAIL, "an email address")]
Url = Annotated[StrictStr, _matching(_URL, "an http(s) URL")]
WhatsAppNumber = Annotated[
    StrictStr, _matching(_E164, "an E.164 phone number such as '+14155238886'")
]
TelegramUserId = Annotated[StrictInt, AfterValidator(_positive)]
RequestKind = Annotated[RequestType, BeforeValidator(_request_type)]
TemplateName = Annotated[
    StrictStr, _matching(_TEMPLATE_NAME, "a template name (lower-case letters, digits, '_')")
]
ContentSid = Annotated[
    StrictStr, _matching(_CONTENT_SID, "a Twilio Content SID ('HX' and 32 hex digits)")
]
Language = Literal["en", "ar", "ur"]


# --- models ---------------------------------------------------------------------------


class _Strict(BaseModel):
    """Unknown keys are errors and loaded policies never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Channels(_Strict):
    """Where this business's customers and staff reach the bot."""

    whatsapp_numbers: Annotated[tuple[WhatsAppNumber, ...], AfterValidator(_unique)] = ()
    telegram_start: Annotated[
        StrictStr, _matching(_TELEGRAM_START, "a Telegram start parameter ([A-Za-z0-9_-]{1,64})")
    ]
    staff_chat_id: Annotated[StrictInt, AfterValidator(_negative)] | None = None
    staff_user_ids: Annotated[tuple[TelegramUserId, ...], AfterValidator(_unique)] = ()
    admin_user_ids: Annotated[tuple[TelegramUserId, ...], AfterValidator(_unique)] = ()


class Reminders(_Strict):
    """When staff are nudged: offsets before the due time, then a repeat once overdue."""

    before: Annotated[tuple[Interval, ...], AfterValidator(_unique)] = ()
    overdue_every: Interval


class Extensions(_Strict):
    """How far staff may push a deadline; no `max` means no extension is allowed."""

    max: Interval | None = None
    notify_requester: StrictBool = True

    @property
    def allowed(self) -> bool:
        return self.max is not None


class Retention(_Strict):
    """How long closed tickets keep personal data and evidence; unset: no automatic purge."""

    closed_ticket_personal_data: DurationField | None = None
    evidence_record: DurationField | None = None


class Regulator(_Strict):
    """The authority a customer may complain to, named when a request is rejected."""

    name: NonBlank
    url: Url | None = None
    email: Email | None = None


class Tenant(_Strict):
    """One business's policy: what it offers, how fast, in which languages, on which numbers."""

    slug: Annotated[StrictStr, _matching(_SLUG, "a slug (lower-case letters, digits, '-')")]
    name: NonBlank
    ref_prefix: Annotated[
        StrictStr, _matching(_REF_PREFIX, "a reference prefix (1-8 capital letters or digits)")
    ]
    timezone: Annotated[StrictStr, AfterValidator(_time_zone)]
    calendar: Annotated[StrictStr, AfterValidator(_holiday_country)]
    languages: Annotated[tuple[Language, ...], AfterValidator(_non_empty), AfterValidator(_unique)]
    privacy_email: Email
    clock_starts: Literal["received", "verified"]
    unverified_expire_after: Interval
    pause_while_awaiting_requester: StrictBool = False
    regulator: Regulator | None = None
    channels: Channels
    requests: Annotated[
        Mapping[RequestKind, DurationField], AfterValidator(_frozen_requests), _DumpAsDict
    ]
    reminders: Reminders
    extensions: Extensions = Extensions()
    retention: Retention = Retention()
    whatsapp_templates: Annotated[
        Mapping[TemplateName, ContentSid], AfterValidator(_frozen_templates), _DumpAsDict
    ] = Field(default_factory=lambda: MappingProxyType({}))
    webhook_url: Url | None = None

    def __hash__(self) -> int:
        return hash(self.slug)

    @property
    def default_language(self) -> Language:
        return self.languages[0]

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @cached_property
    def holiday_calendar(self) -> holidays.HolidayBase:
        """Public holidays of `calendar`, built on first use; years fill in as they are asked."""
        return holidays.country_holidays(self.calendar)

    def offers(self, kind: RequestType) -> bool:
        return kind in self.requests

    def deadline_for(self, kind: RequestType) -> Duration | None:
        """The deadline for `kind`, or None when this business does not offer it."""
        return self.requests.get(kind)


# --- registry -------------------------------------------------------------------------


def _normalise_number(number: str) -> str:
    """'whatsapp:+14155238886' (Twilio's To/From) and '+14155238886' name the same sender."""
    number = number.strip()
    if number[: len(_WHATSAPP_PREFIX)].lower() == _WHATSAPP_PREFIX:
        number = number[len(_WHATSAPP_PREFIX) :]
    return number.strip()


class Tenants:
    """The loaded tenants, found by slug, by WhatsApp sender or by Telegram start parameter."""

    __slots__ = ("_by_number", "_by_slug", "_by_start")

    def __init__(self, tenants: Iterable[Tenant]) -> None:
        by_slug: dict[str, Tenant] = {}
        by_number: dict[str, Tenant] = {}
        by_start: dict[str, Tenant] = {}
        for tenant in tenants:
            _claim(by_slug, tenant.slug, tenant, "slug")
            _claim(by_start, tenant.channels.telegram_start, tenant, "telegram_start")
            for number in tenant.channels.whatsapp_numbers:
                _claim(by_number, number, tenant, "WhatsApp number")
        self._by_slug: Mapping[str, Tenant] = MappingProxyType(by_slug)
        self._by_number: Mapping[str, Tenant] = MappingProxyType(by_number)
        self._by_start: Mapping[str, Tenant] = MappingProxyType(by_start)

    def __iter__(self) -> Iterator[Tenant]:
        return iter(self._by_slug.values())

    def __len__(self) -> int:
        return len(self._by_slug)

    def __contains__(self, slug: object) -> bool:
        return slug in self._by_slug

    def __repr__(self) -> str:
        return f"Tenants({', '.join(self._by_slug)})"

    @property
    def slugs(self) -> tuple[str, ...]:
        return tuple(self._by_slug)

    def by_slug(self, slug: str) -> Tenant:
        """The tenant called `slug`; KeyError when there is none (a slug comes from our data)."""
        try:
            return self._by_slug[slug]
        except KeyError:
            raise KeyError(f"no tenant {slug!r}") from None

    def for_whatsapp_number(self, number: str) -> Tenant | None:
        """The tenant whose WhatsApp sender received a message (Twilio's `To`), if any."""
        return self._by_number.get(_normalise_number(number))

    def for_telegram_start(self, param: str) -> Tenant | None:
        """The tenant a `/start <param>` deep link attaches a Telegram customer to, if any."""
        return self._by_start.get(param.strip())


def _claim(index: dict[str, Tenant], key: str, tenant: Tenant, what: str) -> None:
    """Index `tenant` under `key`, refusing a key that another tenant already has."""
    if key in index:
        raise ValueError(f"{what} {key!r} belongs to both {index[key].slug!r} and {tenant.slug!r}")
    index[key] = tenant


# --- loading --------------------------------------------------------------------------


def load_tenants(directory: Path) -> Tenants:
    """Load every `*.toml` in `directory`; raise TenantConfigError listing all problems."""
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise TenantConfigError([ConfigProblem(directory, "", f"tenant directory {what}")])
    files = sorted(path for path in directory.glob("*.toml") if path.is_file())
    if not files:
        raise TenantConfigError(
            [ConfigProblem(directory, "", "no tenant policy files (*.toml) in this directory")]
        )
    problems: list[ConfigProblem] = []
    loaded: list[tuple[Path, Tenant]] = []
    for path in files:
        tenant = _load_file(path, problems)
        if tenant is not None:
            loaded.append((path, tenant))
    problems.extend(_conflicts(loaded))
    if problems:
        raise TenantConfigError(problems)
    return Tenants(tenant for _, tenant in loaded)


def _load_file(path: Path, problems: list[ConfigProblem]) -> Tenant | None:
    """Parse and validate one file, appending what is wrong with it to `problems`."""
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(ConfigProblem(path, "", f"cannot read the file: {exc}"))
        return None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problems.append(_syntax_problem(path, text, exc))
        return None
    before = len(problems)
    if not _SLUG.match(path.stem):
        problems.append(
            ConfigProblem(
                path, "", f"file name {path.stem!r} is not a slug (lower-case letters, digits, '-')"
            )
        )
    if "slug" in data:
        problems.append(ConfigProblem(path, "slug", "unknown key: the slug is the file name"))
    if len(problems) > before:
        return None
    try:
        return Tenant.model_validate({**data, "slug": path.stem})
    except ValidationError as exc:
        problems.extend(
            ConfigProblem(path, _dotted(error["loc"]), _reason(error))
            for error in exc.errors(include_url=False)
        )
        return None


def _syntax_problem(path: Path, text: str, exc: tomllib.TOMLDecodeError) -> ConfigProblem:
    """Name the line of a TOML syntax error (tomllib only puts it in the message)."""
    message = str(exc)
    position = _TOML_POSITION.search(message)
    if position:
        line, column = int(position[1]), int(position[2])
    elif "end of document" in message:
        line, column = text.count("\n") + 1, 1
    else:
        return ConfigProblem(path, "", f"TOML syntax error: {message}")
    reason = _TOML_POSITION.sub("", message).replace("(at end of document)", "").strip()
    return ConfigProblem(
        path, "", f"TOML syntax error at line {line}, column {column}: {reason}", line
    )


def _dotted(loc: tuple[int | str, ...]) -> str:
    """('channels', 'whatsapp_numbers', 0) -> 'channels.whatsapp_numbers[0]'."""
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        elif part != "[key]":
            key += f".{part}" if key else part
    return key


_REASONS = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
    "tuple_type": "expected a list",
    "model_type": "expected a table",
    "model_attributes_type": "expected a table",
    "dict_type": "expected a table",
    "mapping_type": "expected a table",
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "bool_type": "expected true or false",
}


def _reason(error: Mapping[str, Any]) -> str:
    """Pydantic's message, minus its 'Value error, ' prefix and with the offending value."""
    kind = str(error["type"])
    if kind in ("extra_forbidden", "missing"):
        return _REASONS[kind]
    if kind in _REASONS:
        return f"{_REASONS[kind]} (got {error['input']!r})"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "value_error":
        return message
    return f"{message} (got {error['input']!r})"


def _conflicts(loaded: Sequence[tuple[Path, Tenant]]) -> list[ConfigProblem]:
    """What two files claim at once: a WhatsApp sender, a start parameter, a prefix, a chat."""
    problems: list[ConfigProblem] = []
    claimed: dict[tuple[str, str], tuple[Path, str]] = {}

    def claim(path: Path, key: str, kind: str, value: str | int, label: str) -> None:
        owner = claimed.setdefault((kind, str(value)), (path, key))
        if owner != (path, key):
            other_path, other_key = owner
            problems.append(
                ConfigProblem(
                    path, key, f"{label} {value!r} is already claimed by {other_path} ({other_key})"
                )
            )

    for path, tenant in loaded:
        claim(path, "ref_prefix", "ref_prefix", tenant.ref_prefix, "reference prefix")
        channels = tenant.channels
        for index, number in enumerate(channels.whatsapp_numbers):
            key = f"channels.whatsapp_numbers[{index}]"
            claim(path, key, "whatsapp", number, "WhatsApp number")
        claim(path, "channels.telegram_start", "start", channels.telegram_start, "start parameter")
        if channels.staff_chat_id is not None:
            key = "channels.staff_chat_id"
            claim(path, key, "staff_chat", channels.staff_chat_id, "staff chat")
    return problems
