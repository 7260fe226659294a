"""The intake dialogue as a pure state machine: `advance(state, event, ctx) -> Transition`.

No I/O happens here. The wiring layer loads the `ConversationState` (JSON in the
`conversation.state` column), turns an inbound message into a `Message` event, calls
`advance`, performs the returned effects in order, and feeds the answer of every effect that
asks for one back in as an event before it saves the state:

    FileTicket  -> TicketFiled(ref, due)
    SendCode    -> CodeSent() | CodeCooldown(seconds) | CodeLocked(until)
    CheckCode   -> Verified(ref, due) | CodeWrong(tries_left) | CodeLocked(until) | CodeExpired()
    ShowStatus  -> StatusLoaded(items)
    CancelTicket -> TicketCancelled(ref, outcome)

A SendCode or CheckCode for a request that has meanwhile closed (expired unverified) is
answered with TicketCancelled(ref, CLOSED): the customer is told and leaves the identity step.

Reply, OptOut, OptIn and AttachMedia need no answer. Every `Message` gets at least one
`Reply` (or its reply comes with the answer event), so a customer is never met by silence.
Replies are rendered with `render(reply.message, transition.language)`.

Choices made here:
- STOP (and the other opt-out words) opts out at once at every step with one
  acknowledgement and leaves the dialogue where it was, so a request in progress survives.
- A request that needs proof is filed when the customer confirms it (the wiring stores it as
  awaiting verification), then the email address and code are asked for. Leaving that step
  (cancel, menu) keeps the request; `verify` resumes, `cancel REF` withdraws it.
- Marketing opt-out is always accepted, even where a business does not list it: opting out
  must be as easy as opting in.
- A cookie opt-out asks, after the categories, for the email address or phone number the
  customer uses with the business (its website sets the cookies, so it needs to know whom to
  apply the choice to). It is recorded as given, never checked by a code, and can be skipped:
  opting out must stay as easy as opting in.
- Dialogue steps untouched for a day (menu, details, the cookie identity, confirmation,
  language choice) start over, so an old "yes" cannot confirm a forgotten question. The
  identity steps do not expire here: the request's own expiry (`unverified_expire_after`)
  closes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeAlias

from bot.i18n import LANGUAGES, _, guess_language, isolate, translations
from bot.understanding import (
    COOKIE_CATEGORIES,
    Intent,
    IntentKind,
    classify,
    cookie_categories,
    normalise,
    normalise_email,
    normalise_phone,
)
from storage.enums import RequestType, TicketStatus

if TYPE_CHECKING:
    from bot.messages import Inbound
    from bot.tenants import Tenant

__all__ = [
    "DETAILS_NEEDED",
    "NEEDS_PROOF",
    "OPT_OUTS",
    "STALE_AFTER",
    "AttachMedia",
    "Button",
    "CancelOutcome",
    "CancelTicket",
    "CheckCode",
    "CodeCooldown",
    "CodeExpired",
    "CodeLocked",
    "CodeSent",
    "CodeWrong",
    "Context",
    "ConversationState",
    "Effect",
    "Event",
    "FileTicket",
    "Message",
    "Msg",
    "OptIn",
    "OptOut",
    "Reply",
    "SendCode",
    "ShowStatus",
    "StatusItem",
    "StatusLoaded",
    "Step",
    "TicketCancelled",
    "TicketFiled",
    "Transition",
    "Verified",
    "advance",
    "render",
]

# Types whose requester must prove who they are; opt-outs and complaints need no proof.
NEEDS_PROOF = frozenset(
    {
        RequestType.ACCESS,
        RequestType.PORTABILITY,
        RequestType.RECTIFICATION,
        RequestType.ERASURE,
        RequestType.RESTRICTION,
        RequestType.OBJECTION,
        RequestType.CONSENT_WITHDRAWAL,
    }
)
# Types that cannot be acted on without a few words (or, for cookies, the categories).
DETAILS_NEEDED = frozenset(
    {
        RequestType.RECTIFICATION,
        RequestType.OBJECTION,
        RequestType.COMPLAINT,
        RequestType.COOKIE_OPT_OUT,
    }
)
# Types that are carried out at once (OptOut), not filed for staff (FileTicket).
OPT_OUTS = frozenset({RequestType.MARKETING_OPT_OUT, RequestType.COOKIE_OPT_OUT})
STALE_AFTER = timedelta(days=1)
# A sentence this long that names a request needing details is taken as those details.
DETAILS_FROM_SENTENCE = 10
MAX_DETAILS = 2000
MARKETING = "marketing"
ENDONYMS: Mapping[str, str] = {"en": "English", "ar": "العربية", "ur": "اردو"}


class Step(StrEnum):
    START = "start"  # nothing under way
    MENU = "menu"  # the menu was shown; waiting for a choice
    ASK_DETAILS = "ask_details"  # what to correct / object to, the complaint, the cookies
    ASK_IDENTITY = "ask_identity"  # cookies: the email or phone used with the business, or skip
    CONFIRM = "confirm"  # "You want us to ... Is that right?"
    FILING = "filing"  # FileTicket performed, waiting for TicketFiled
    ASK_EMAIL = "ask_email"  # filed; the email address the business knows them by
    ASK_CODE = "ask_code"  # the 6-digit code sent there
    CHOOSE_LANGUAGE = "choose_language"


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"
    NOT_FOUND = "not_found"  # no such reference for this customer and tenant
    CLOSED = "closed"  # already resolved, rejected, cancelled or expired


# --- texts ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Msg:
    """A customer text before translation: a msgid, its values and, for counts, a plural."""

    key: str
    values: tuple[tuple[str, Value], ...] = ()
    plural: str | None = None
    count: int | None = None

    def get(self, name: str) -> Value | None:
        return dict(self.values).get(name)


Value: TypeAlias = "str | int | Msg | tuple[Msg, ...]"


def msg(key: str, /, **values: Value) -> Msg:
    return Msg(key, tuple(values.items()))


def _plural(singular: str, plural: str, count: int, **values: Value) -> Msg:
    return Msg(singular, tuple(values.items()), plural, count)


def render(message: Msg, language: str) -> str:
    """The text in `language`; nested texts are translated too, plain values isolated for RTL."""
    catalog = translations(language)
    if message.plural is not None:
        template = catalog.ngettext(message.key, message.plural, message.count or 0)
    else:
        template = catalog.gettext(message.key)
    return template.format(**{name: _value(value, language) for name, value in message.values})


def _value(value: Value, language: str) -> str:
    if isinstance(value, Msg):
        return render(value, language)
    if isinstance(value, tuple):
        return "\n".join(render(line, language) for line in value)
    return isolate(value, language)


WELCOME = _("Hello, this is the privacy desk of {business}.\n{menu}")
MENU = _(
    "What would you like to do? Reply with a number:\n{options}\n"
    "You can also write STATUS to see your requests, or LANGUAGE to change the language."
)
MENU_LINE = _("{number}. {label}")
BULLET = _("• {item}")
NO_SUCH_OPTION = _("There is no option {number}.\n{menu}")
NOT_OFFERED = _(
    "Sorry, this kind of request is not taken here. You can write to {business} at {email}.\n{menu}"
)
NOT_UNDERSTOOD = _("Sorry, I did not understand that.\n{prompt}")
AFTER_NO = _("No problem, we have not recorded anything.\n{prompt}")
YOU_ARE_WELCOME = _("You are welcome. Write MENU whenever you need us.")

LABELS: Mapping[RequestType, str] = {
    RequestType.ACCESS: _("See the personal data we hold about you"),
    RequestType.RECTIFICATION: _("Correct your personal data"),
    RequestType.ERASURE: _("Delete your personal data"),
    RequestType.PORTABILITY: _("Get your data to take to another company"),
    RequestType.RESTRICTION: _("Limit how we use your data"),
    RequestType.OBJECTION: _("Object to how we use your data"),
    RequestType.CONSENT_WITHDRAWAL: _("Withdraw a consent you gave us"),
    RequestType.MARKETING_OPT_OUT: _("Stop marketing messages"),
    RequestType.COOKIE_OPT_OUT: _("Refuse cookies on our website"),
    RequestType.COMPLAINT: _("Make a privacy complaint"),
}
NAMES: Mapping[RequestType, str] = {
    RequestType.ACCESS: _("copy of your data"),
    RequestType.RECTIFICATION: _("correction"),
    RequestType.ERASURE: _("deletion"),
    RequestType.PORTABILITY: _("data export"),
    RequestType.RESTRICTION: _("restriction"),
    RequestType.OBJECTION: _("objection"),
    RequestType.CONSENT_WITHDRAWAL: _("consent withdrawal"),
    RequestType.MARKETING_OPT_OUT: _("marketing opt-out"),
    RequestType.COOKIE_OPT_OUT: _("cookie opt-out"),
    RequestType.COMPLAINT: _("complaint"),
}
STATEMENTS: Mapping[RequestType, str] = {
    RequestType.ACCESS: _("You want a copy of the personal data we hold about you."),
    RequestType.RECTIFICATION: _("You want us to correct your personal data: {details}"),
    RequestType.ERASURE: _("You want us to delete your personal data."),
    RequestType.PORTABILITY: _(
        "You want your personal data in a format you can take to another company."
    ),
    RequestType.RESTRICTION: _("You want us to limit how we use your personal data."),
    RequestType.OBJECTION: _("You object to this use of your personal data: {details}"),
    RequestType.CONSENT_WITHDRAWAL: _(
        "You want to withdraw the consent you gave us to use your personal data."
    ),
    RequestType.MARKETING_OPT_OUT: _("You want us to stop sending you marketing messages."),
    RequestType.COOKIE_OPT_OUT: _("You want us to turn off these cookies for you:\n{categories}"),
    RequestType.COMPLAINT: _("You want to make this complaint: {details}"),
}
CONFIRM = _("{statement}\nIs that right? Please answer yes or no.")
YES_LABEL = _("Yes")
NO_LABEL = _("No")

QUESTIONS: Mapping[RequestType, str] = {
    RequestType.RECTIFICATION: _(
        "What should we correct? Please write what is wrong and what it should be."
    ),
    RequestType.OBJECTION: _(
        "Which use of your data do you object to? For example: profiling, or sharing it "
        "with partners."
    ),
    RequestType.COMPLAINT: _(
        "Please write your complaint in one message. The privacy team will read it."
    ),
    RequestType.COOKIE_OPT_OUT: _(
        "Which cookies should we turn off? Reply with one or more numbers:\n{options}"
    ),
}
ASK_IDENTITY = _(
    "So that {business} can apply this on its website, which email address or phone number "
    "do you use there? Write a phone number with its country code, for example +923001234567. "
    "If you would rather not say, write SKIP."
)
SKIP_LABEL = _("Skip")
COOKIES_FOR = _("You want us to turn off these cookies for {identity}:\n{categories}")
COOKIE_LABELS: Mapping[str, str] = {
    "analytics": _("Analytics cookies"),
    "advertising": _("Advertising cookies"),
    "functional": _("Preference cookies"),
}
ALL_COOKIES = _("All of them")

FILING_WAIT = _("One moment please, we are recording your request.")
FILED = _("Your request is on file. Reference: {ref}. We will answer by {due}.")
FILED_NO_DUE = _("Your request is on file. Reference: {ref}.")
FILED_VERIFY = _(
    "Your request is on file with the reference {ref}. Before we act on it, we need to make "
    "sure it is really you. Please write the email address {business} knows you by."
)
FILED_VERIFY_DUE = _(
    "Your request is on file with the reference {ref}, and we will answer by {due}. Before we "
    "act on it, we need to make sure it is really you. Please write the email address "
    "{business} knows you by."
)
ASK_EMAIL = _(
    "Please write the email address {business} knows you by, for example name@example.com."
)
RESUME_VERIFY = _(
    "Let us continue with your request {ref}. Please write the email address {business} "
    "knows you by."
)
CODE_SENT = _(
    "We have sent a 6-digit code to {email}. Please write it here. It is valid for 10 minutes."
)
ASK_CODE = _("Please write the 6-digit code we sent to {email}. Write RESEND for a new one.")
RESEND_LABEL = _("Send a new code")
CODE_WRONG_ONE = _("That code is not right. You have {tries} try left.")
CODE_WRONG_MANY = _("That code is not right. You have {tries} tries left.")
COOLDOWN_ONE = _("Please wait {seconds} second before asking for a new code.")
COOLDOWN_MANY = _("Please wait {seconds} seconds before asking for a new code.")
CODE_LOCKED = _("Too many wrong codes. For your safety, you can try again after {until}.")
CODE_EXPIRED = _("That code has expired. Write RESEND and we will send you a new one.")
VERIFIED = _(
    "Thank you, we have confirmed it is you. We are working on your request {ref} and will "
    "answer by {due}."
)
VERIFIED_NO_DUE = _("Thank you, we have confirmed it is you. We are working on your request {ref}.")
PENDING_NOTE = _(
    "Your request {ref} is waiting for you to confirm who you are. Write VERIFY to continue."
)
NOTHING_TO_VERIFY = _("There is no request waiting for you to confirm who you are.")

OPTED_OUT = _(
    "Done: {business} will not send you marketing messages any more. Write START if you "
    "change your mind."
)
OPTED_IN = _("You will receive messages from {business} again. Write STOP at any time to opt out.")
COOKIES_OFF = _("Done: we have recorded that you refuse these cookies:\n{categories}")
COOKIES_OFF_FOR = _(
    "Done: we have recorded that you refuse these cookies for {identity}:\n{categories}"
)

CANCELLED = _("All right, we have stopped here. Write MENU to start again.")
CANCELLED_VERIFY = _(
    "All right, we have stopped here. Your request {ref} is kept, but we cannot act on it until "
    "you confirm who you are. Write VERIFY to continue, or CANCEL {ref} to withdraw it."
)
NOTHING_TO_CANCEL = _("There is nothing to cancel. Write MENU to see what you can do.")
WITHDRAWN = _("Your request {ref} has been withdrawn.")
WITHDRAW_NOT_FOUND = _(
    "We could not find a request {ref} of yours. Write STATUS to see your requests."
)
WITHDRAW_CLOSED = _("Your request {ref} is already closed, so it cannot be withdrawn.")

STATUS_NONE = _("You have no requests with {business}.")
STATUS_LIST = _("Your requests:\n{items}")
STATUS_LINE = _("{ref}: {kind}, {status}, answer due by {due}")
STATUS_LINE_NO_DUE = _("{ref}: {kind}, {status}")
STATUS_NAMES: Mapping[TicketStatus, str] = {
    TicketStatus.AWAITING_VERIFICATION: _("waiting for you to confirm who you are"),
    TicketStatus.OPEN: _("received"),
    TicketStatus.IN_PROGRESS: _("in progress"),
    TicketStatus.AWAITING_REQUESTER: _("waiting for your reply"),
    TicketStatus.RESOLVED: _("done"),
    TicketStatus.REJECTED: _("refused"),
    TicketStatus.CANCELLED: _("withdrawn"),
    TicketStatus.EXPIRED: _("closed unverified"),
}

CHOOSE_LANGUAGE = _("Which language would you like? Reply with a number:\n{options}")
# Each catalog says this in its own language: it is shown in the language just chosen.
LANGUAGE_SET = _("From now on I will write to you in English.")
LANGUAGE_NOT_OFFERED = _("Sorry, {business} does not offer that language here.\n{prompt}")

MEDIA_ATTACHED = _("Thank you, we have added what you sent to your request {ref}.")
MEDIA_NO_REQUEST = _(
    "We can only keep files together with a request. Please make your request first, then "
    "send the file again."
)


# --- context, state, events, effects ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Context:
    """What the dialogue needs to know about the business and the moment."""

    business: str
    offered: tuple[RequestType, ...]
    languages: tuple[str, ...]
    now: datetime
    privacy_email: str = ""
    needs_proof: frozenset[RequestType] = NEEDS_PROOF

    @classmethod
    def for_tenant(cls, tenant: Tenant, *, now: datetime) -> Context:
        return cls(
            business=tenant.name,
            offered=tuple(tenant.requests),
            languages=tuple(tenant.languages),
            now=now,
            privacy_email=tenant.privacy_email,
        )

    @property
    def menu(self) -> tuple[RequestType, ...]:
        """The offered types in the one fixed order the menu numbers them."""
        return tuple(kind for kind in RequestType if kind in self.offered)

    @property
    def default_language(self) -> str:
        return self.languages[0] if self.languages else "en"


@dataclass(frozen=True, slots=True)
class ConversationState:
    """Where one customer stands; JSON-serialisable for the `conversation.state` column."""

    step: Step = Step.START
    language: str | None = None
    language_chosen: bool = False  # an explicit choice sticks
    kind: RequestType | None = None  # the request being made
    details: str = ""
    categories: tuple[str, ...] = ()  # cookie categories to refuse
    identity: str = ""  # cookies: the email or E.164 phone given for them; "" when skipped
    words: str = ""  # what the customer wrote to choose the request (consent ledger)
    email: str | None = None
    pending_ref: str | None = None  # filed, awaiting the identity check
    last_ref: str | None = None  # the latest request filed, for files sent afterwards
    back: Step | None = None  # where the language choice returns to
    updated_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "v": 1,
            "step": self.step.value,
            "language": self.language,
            "language_chosen": self.language_chosen,
            "kind": self.kind.value if self.kind else None,
            "details": self.details,
            "categories": list(self.categories),
            "identity": self.identity,
            "words": self.words,
            "email": self.email,
            "pending_ref": self.pending_ref,
            "last_ref": self.last_ref,
            "back": self.back.value if self.back else None,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> ConversationState:
        """Read a stored state; anything unreadable falls back to its default, never raises."""
        if not isinstance(data, Mapping):
            return cls()

        def text(name: str) -> str | None:
            value = data.get(name)
            return value if isinstance(value, str) else None

        def member(enum: type[Any], name: str) -> Any:
            try:
                return enum(data.get(name))
            except (ValueError, TypeError):
                return None

        updated_at = None
        if stamp := text("updated_at"):
            try:
                updated_at = datetime.fromisoformat(stamp)
            except ValueError:
                updated_at = None
            if updated_at is not None and updated_at.tzinfo is None:
                updated_at = updated_at.replace(tzinfo=UTC)
        categories = data.get("categories")
        language = text("language")
        return cls(
            step=member(Step, "step") or Step.START,
            language=language if language in LANGUAGES else None,
            language_chosen=data.get("language_chosen") is True,
            kind=member(RequestType, "kind"),
            details=text("details") or "",
            categories=tuple(
                c for c in COOKIE_CATEGORIES if isinstance(categories, list) and c in categories
            ),
            identity=text("identity") or "",
            words=text("words") or "",
            email=text("email"),
            pending_ref=text("pending_ref"),
            last_ref=text("last_ref"),
            back=member(Step, "back"),
            updated_at=updated_at,
        )


@dataclass(frozen=True, slots=True)
class Message:
    """Something the customer sent: text, a button press, files (counted; the wiring keeps them)."""

    text: str = ""
    language_code: str | None = None  # Telegram's language_code
    button: str | None = None  # Telegram callback data
    media: int = 0

    @classmethod
    def from_inbound(cls, inbound: Inbound) -> Message:
        return cls(
            text=inbound.text,
            language_code=inbound.language_code,
            button=inbound.callback_data,
            media=len(inbound.media),
        )


@dataclass(frozen=True, slots=True)
class TicketFiled:
    ref: str
    due: str | None = None  # the due date, already formatted in the customer's language


@dataclass(frozen=True, slots=True)
class CodeSent:
    pass


@dataclass(frozen=True, slots=True)
class CodeCooldown:
    seconds: int


@dataclass(frozen=True, slots=True)
class CodeWrong:
    tries_left: int


@dataclass(frozen=True, slots=True)
class CodeLocked:
    until: str  # formatted in the customer's language and the tenant's timezone


@dataclass(frozen=True, slots=True)
class CodeExpired:
    pass


@dataclass(frozen=True, slots=True)
class Verified:
    ref: str
    due: str | None = None


@dataclass(frozen=True, slots=True)
class StatusItem:
    ref: str
    kind: RequestType
    status: TicketStatus
    due: str | None = None


@dataclass(frozen=True, slots=True)
class StatusLoaded:
    items: tuple[StatusItem, ...] = ()


@dataclass(frozen=True, slots=True)
class TicketCancelled:
    ref: str
    outcome: CancelOutcome


Event: TypeAlias = (
    Message
    | TicketFiled
    | CodeSent
    | CodeCooldown
    | CodeWrong
    | CodeLocked
    | CodeExpired
    | Verified
    | StatusLoaded
    | TicketCancelled
)


@dataclass(frozen=True, slots=True)
class Button:
    """A Telegram inline button; WhatsApp shows the numbered text instead."""

    label: Msg | str
    data: str


@dataclass(frozen=True, slots=True)
class Reply:
    """Send this text to the customer (with buttons where the channel has them)."""

    message: Msg
    buttons: tuple[Button, ...] = ()

    @property
    def key(self) -> str:
        return self.message.key


@dataclass(frozen=True, slots=True)
class FileTicket:
    """Create the ticket (awaiting verification when proof is needed); answer TicketFiled."""

    kind: RequestType
    details: str
    needs_verification: bool
    words: str


@dataclass(frozen=True, slots=True)
class SendCode:
    """Send a 6-digit code to `email` for request `ref`; answer CodeSent/Cooldown/Locked."""

    ref: str
    email: str


@dataclass(frozen=True, slots=True)
class CheckCode:
    """Check `code` for request `ref`; answer Verified, CodeWrong, CodeLocked or CodeExpired."""

    ref: str
    code: str


@dataclass(frozen=True, slots=True)
class OptOut:
    """Record the opt-out in the consent ledger and a resolved ticket of `kind`; no answer."""

    kind: RequestType
    categories: tuple[str, ...]
    words: str
    identity: str = ""  # cookies: the email or phone they apply to, as given; "" if skipped


@dataclass(frozen=True, slots=True)
class OptIn:
    """Lift the customer's marketing opt-out (record it in the consent ledger); no answer."""

    words: str


@dataclass(frozen=True, slots=True)
class ShowStatus:
    """Load the customer's requests with this tenant; answer StatusLoaded."""


@dataclass(frozen=True, slots=True)
class CancelTicket:
    """Withdraw the customer's request `ref` (staff told); answer TicketCancelled."""

    ref: str


@dataclass(frozen=True, slots=True)
class AttachMedia:
    """Download the files of this message and attach them to request `ref`; no answer."""

    ref: str


Effect: TypeAlias = (
    Reply
    | FileTicket
    | SendCode
    | CheckCode
    | OptOut
    | OptIn
    | ShowStatus
    | CancelTicket
    | AttachMedia
)


@dataclass(frozen=True, slots=True)
class Transition:
    """The state to save and the effects to perform, in order."""

    state: ConversationState
    effects: tuple[Effect, ...] = ()

    @property
    def language(self) -> str:
        return self.state.language or "en"

    @property
    def replies(self) -> tuple[Reply, ...]:
        return tuple(effect for effect in self.effects if isinstance(effect, Reply))


# --- the machine ----------------------------------------------------------------------

# Steps a day-old answer must not continue; the identity steps wait for the request's expiry.
_STALE_STEPS = frozenset(
    {
        Step.MENU,
        Step.ASK_DETAILS,
        Step.ASK_IDENTITY,
        Step.CONFIRM,
        Step.FILING,
        Step.CHOOSE_LANGUAGE,
    }
)
_VERIFYING = frozenset({Step.ASK_EMAIL, Step.ASK_CODE})

Effects: TypeAlias = tuple[Effect, ...]


def advance(state: ConversationState, event: Event, ctx: Context) -> Transition:
    """The next state and what to do, for one event; pure and total (never raises on input)."""
    if isinstance(event, Message):
        return _on_message(state, event, ctx)
    if state.language is None:
        state = replace(state, language=ctx.default_language)
    next_state, effects = _on_result(state, event, ctx)
    return Transition(next_state, effects)


def _reset(state: ConversationState, step: Step = Step.START) -> ConversationState:
    """Leave the dialogue; keep language, the request awaiting proof and the latest reference."""
    return replace(
        state,
        step=step,
        kind=None,
        details="",
        categories=(),
        identity="",
        words="",
        email=None,
        back=None,
    )


def _on_message(state: ConversationState, event: Message, ctx: Context) -> Transition:
    if state.step in _STALE_STEPS and _idle_for(state, ctx.now) > STALE_AFTER:
        state = _reset(state)
    intent = _read(event)
    state = replace(state, language=_language(state, event, intent, ctx), updated_at=ctx.now)
    effects: Effects = ()
    if event.media:
        effects = _media(state)
        if not event.text.strip() and event.button is None:
            return Transition(state, effects)
    next_state, more = _handle(state, intent, event, ctx)
    return Transition(next_state, effects + more)


def _idle_for(state: ConversationState, now: datetime) -> timedelta:
    """How long the dialogue has waited; zero when unknown or not comparable."""
    if state.updated_at is None:
        return timedelta(0)
    try:
        return now - state.updated_at
    except TypeError:  # one naive, one aware
        return timedelta(0)


def _read(event: Message) -> Intent:
    """The intent of a typed text or of a button's data."""
    if event.button is None:
        return classify(event.text)
    data = event.button
    name, _sep, value = data.partition(":")
    if name == "kind":
        try:
            return Intent(IntentKind.REQUEST, request=RequestType(value))
        except ValueError:
            return Intent(IntentKind.UNKNOWN)
    if name == "lang":
        return Intent(IntentKind.LANGUAGE, language=value if value in LANGUAGES else None)
    if name == "cookie":
        return Intent(IntentKind.UNKNOWN)  # read by the cookie step from the data itself
    try:
        kind = IntentKind(name)
    except ValueError:
        return Intent(IntentKind.UNKNOWN)
    if kind in (IntentKind.YES, IntentKind.NO, IntentKind.MENU, IntentKind.CANCEL):
        return Intent(kind)
    if kind in (IntentKind.STATUS, IntentKind.RESEND, IntentKind.VERIFY, IntentKind.SKIP):
        return Intent(kind)
    return Intent(IntentKind.UNKNOWN)


def _language(state: ConversationState, event: Message, intent: Intent, ctx: Context) -> str:
    """The customer's own writing, else Telegram's language_code, else the tenant's first."""
    offered = ctx.languages or ("en",)
    current = state.language if state.language in offered else None
    if current is not None and state.language_chosen:
        return current
    words = [word for word in normalise(event.text).split() if any(char.isalpha() for char in word)]
    readable = event.button is None and intent.kind not in (
        IntentKind.EMAIL,
        IntentKind.CODE,
        IntentKind.NUMBER,
    )
    if readable and words:
        guessed = guess_language(event.text)
        if guessed in offered and (
            current is None
            or guessed == "ur"  # Urdu letters are decisive
            or (guessed == "ar" and current == "en")
            or len(words) >= 3  # a short "ok" or "hi" does not switch language
        ):
            return guessed
    if current is not None:
        return current
    hint = (event.language_code or "").split("-")[0].lower()
    return hint if hint in offered else ctx.default_language


def _media(state: ConversationState) -> Effects:
    ref = state.pending_ref or state.last_ref
    if ref is None:
        return (Reply(msg(MEDIA_NO_REQUEST)),)
    return (AttachMedia(ref), Reply(msg(MEDIA_ATTACHED, ref=ref)))


def _words_of(event: Message) -> str:
    return event.text.strip() or (f"button:{event.button}" if event.button else "")


def _handle(
    state: ConversationState, intent: Intent, event: Message, ctx: Context
) -> tuple[ConversationState, Effects]:
    kind = intent.kind
    if kind is IntentKind.STOP:
        return state, (
            OptOut(RequestType.MARKETING_OPT_OUT, (MARKETING,), _words_of(event)),
            Reply(msg(OPTED_OUT, business=ctx.business)),
        )
    if kind is IntentKind.START:
        return state, (OptIn(_words_of(event)), Reply(msg(OPTED_IN, business=ctx.business)))
    if kind is IntentKind.LANGUAGE:
        return _switch_language(state, intent.language, ctx)
    if kind is IntentKind.CANCEL:
        if intent.ref is not None:
            return state, (CancelTicket(intent.ref),)
        return _cancel(state, ctx)
    if kind is IntentKind.MENU:
        return _show_menu(state, ctx, greet=state.step is Step.START)
    if kind is IntentKind.STATUS:
        return state, (ShowStatus(),)
    if kind is IntentKind.VERIFY and state.step not in _VERIFYING:
        return _resume_verification(state, ctx)
    handler = _STEPS[state.step]
    return handler(state, intent, event, ctx)


# --- prompts --------------------------------------------------------------------------


def _menu_msg(ctx: Context) -> Msg:
    options = tuple(
        msg(MENU_LINE, number=number, label=msg(LABELS[kind]))
        for number, kind in enumerate(ctx.menu, 1)
    )
    return msg(MENU, options=options)


def _menu_buttons(ctx: Context) -> tuple[Button, ...]:
    return tuple(Button(msg(LABELS[kind]), f"kind:{kind.value}") for kind in ctx.menu)


def _yes_no_buttons() -> tuple[Button, ...]:
    return (Button(msg(YES_LABEL), "yes"), Button(msg(NO_LABEL), "no"))


def _cookie_options() -> tuple[Msg, ...]:
    labels = [msg(COOKIE_LABELS[category]) for category in COOKIE_CATEGORIES]
    labels.append(msg(ALL_COOKIES))
    return tuple(msg(MENU_LINE, number=n, label=label) for n, label in enumerate(labels, 1))


def _cookie_buttons() -> tuple[Button, ...]:
    buttons = [Button(msg(COOKIE_LABELS[c]), f"cookie:{c}") for c in COOKIE_CATEGORIES]
    buttons.append(Button(msg(ALL_COOKIES), "cookie:all"))
    return tuple(buttons)


def _skip_button() -> tuple[Button, ...]:
    return (Button(msg(SKIP_LABEL), "skip"),)


def _cookie_list(categories: Sequence[str]) -> tuple[Msg, ...]:
    return tuple(msg(BULLET, item=msg(COOKIE_LABELS[category])) for category in categories)


def _question(kind: RequestType) -> Msg:
    if kind is RequestType.COOKIE_OPT_OUT:
        return msg(QUESTIONS[kind], options=_cookie_options())
    return msg(QUESTIONS[kind])


def _statement(state: ConversationState) -> Msg:
    assert state.kind is not None
    template = STATEMENTS[state.kind]
    if state.kind is RequestType.COOKIE_OPT_OUT:
        if state.identity:
            return msg(
                COOKIES_FOR, identity=state.identity, categories=_cookie_list(state.categories)
            )
        return msg(template, categories=_cookie_list(state.categories))
    if "{details}" in template:
        return msg(template, details=state.details)
    return msg(template)


def _language_options(ctx: Context) -> Msg:
    options = tuple(
        msg(MENU_LINE, number=n, label=ENDONYMS.get(code, code))
        for n, code in enumerate(ctx.languages, 1)
    )
    return msg(CHOOSE_LANGUAGE, options=options)


def _language_buttons(ctx: Context) -> tuple[Button, ...]:
    return tuple(Button(ENDONYMS.get(code, code), f"lang:{code}") for code in ctx.languages)


def _prompt(state: ConversationState, ctx: Context) -> Reply:
    """What the current step asks, as first shown: re-shown after a hint or a language change."""
    step = state.step
    if step in (Step.START, Step.MENU):
        return Reply(_menu_msg(ctx), _menu_buttons(ctx))
    kind = state.kind
    if step is Step.ASK_DETAILS and kind is not None and kind in QUESTIONS:
        buttons = _cookie_buttons() if kind is RequestType.COOKIE_OPT_OUT else ()
        return Reply(_question(kind), buttons)
    if step is Step.ASK_IDENTITY and kind is RequestType.COOKIE_OPT_OUT and state.categories:
        return Reply(msg(ASK_IDENTITY, business=ctx.business), _skip_button())
    if step is Step.CONFIRM and state.kind is not None:
        return Reply(msg(CONFIRM, statement=_statement(state)), _yes_no_buttons())
    if step is Step.FILING:
        return Reply(msg(FILING_WAIT))
    if step is Step.ASK_CODE and state.email:
        return Reply(msg(ASK_CODE, email=state.email), (Button(msg(RESEND_LABEL), "resend"),))
    if step in _VERIFYING:
        return Reply(msg(ASK_EMAIL, business=ctx.business))
    if step is Step.CHOOSE_LANGUAGE:
        return Reply(_language_options(ctx), _language_buttons(ctx))
    return Reply(_menu_msg(ctx), _menu_buttons(ctx))  # a step without its data: the menu


def _hint(state: ConversationState, ctx: Context) -> tuple[ConversationState, Effects]:
    """Input this step cannot use: say so, then ask again."""
    prompt = _prompt(state, ctx)
    return state, (Reply(msg(NOT_UNDERSTOOD, prompt=prompt.message), prompt.buttons),)


# --- global commands ------------------------------------------------------------------


def _show_menu(
    state: ConversationState, ctx: Context, *, greet: bool = False, lead: str | None = None
) -> tuple[ConversationState, Effects]:
    state = _reset(state, Step.MENU)
    menu = _menu_msg(ctx)
    if greet:
        body = msg(WELCOME, business=ctx.business, menu=menu)
    elif lead is not None:
        body = msg(lead, prompt=menu)
    else:
        body = menu
    effects: Effects = (Reply(body, _menu_buttons(ctx)),)
    if state.pending_ref is not None:
        effects += (Reply(msg(PENDING_NOTE, ref=state.pending_ref)),)
    return state, effects


def _cancel(state: ConversationState, ctx: Context) -> tuple[ConversationState, Effects]:
    step = state.step
    if step is Step.START:
        return state, (Reply(msg(NOTHING_TO_CANCEL)),)
    if step is Step.CHOOSE_LANGUAGE and state.back not in (None, Step.START, step):
        back = replace(state, step=state.back or Step.START, back=None)
        return back, (_prompt(back, ctx),)
    if step in _VERIFYING and state.pending_ref is not None:
        ref = state.pending_ref
        return _reset(state), (Reply(msg(CANCELLED_VERIFY, ref=ref)),)
    return _reset(state), (Reply(msg(CANCELLED)),)


def _switch_language(
    state: ConversationState, language: str | None, ctx: Context
) -> tuple[ConversationState, Effects]:
    back = state.back if state.step is Step.CHOOSE_LANGUAGE else state.step
    choosing = replace(state, step=Step.CHOOSE_LANGUAGE, back=back)
    if language is None:
        return choosing, (Reply(_language_options(ctx), _language_buttons(ctx)),)
    if language not in ctx.languages:
        prompt = _language_options(ctx)
        return choosing, (
            Reply(
                msg(LANGUAGE_NOT_OFFERED, business=ctx.business, prompt=prompt),
                _language_buttons(ctx),
            ),
        )
    step = Step.MENU if back in (None, Step.START) else back
    chosen = replace(state, step=step, back=None, language=language, language_chosen=True)
    return chosen, (Reply(msg(LANGUAGE_SET)), _prompt(chosen, ctx))


def _resume_verification(
    state: ConversationState, ctx: Context
) -> tuple[ConversationState, Effects]:
    if state.pending_ref is None:
        return state, (Reply(msg(NOTHING_TO_VERIFY)),)
    resumed = replace(_reset(state), step=Step.ASK_EMAIL)
    return resumed, (Reply(msg(RESUME_VERIFY, ref=state.pending_ref, business=ctx.business)),)


# --- the steps ------------------------------------------------------------------------


def _choose(
    state: ConversationState, kind: RequestType, ctx: Context, *, words: str, sentence: str
) -> tuple[ConversationState, Effects]:
    """A request type was picked (number, button or sentence): ask what is missing, or confirm."""
    if kind not in ctx.offered and kind is not RequestType.MARKETING_OPT_OUT:
        return _not_offered(state, ctx)
    state = replace(_reset(state), kind=kind, words=words)
    if kind is RequestType.COOKIE_OPT_OUT:
        categories = cookie_categories(sentence) if sentence else ()
        if categories:
            return _ask_identity(replace(state, categories=categories), ctx)
        return _ask_details(state)
    if kind in DETAILS_NEEDED:
        if len(normalise(sentence).split()) >= DETAILS_FROM_SENTENCE:
            return _confirm(replace(state, details=sentence.strip()[:MAX_DETAILS]))
        return _ask_details(state)
    return _confirm(state)


def _not_offered(state: ConversationState, ctx: Context) -> tuple[ConversationState, Effects]:
    state = _reset(state, Step.MENU)
    body = msg(NOT_OFFERED, business=ctx.business, email=ctx.privacy_email, menu=_menu_msg(ctx))
    return state, (Reply(body, _menu_buttons(ctx)),)


def _ask_details(state: ConversationState) -> tuple[ConversationState, Effects]:
    kind = state.kind
    assert kind is not None
    buttons = _cookie_buttons() if kind is RequestType.COOKIE_OPT_OUT else ()
    return replace(state, step=Step.ASK_DETAILS), (Reply(_question(kind), buttons),)


def _ask_identity(state: ConversationState, ctx: Context) -> tuple[ConversationState, Effects]:
    state = replace(state, step=Step.ASK_IDENTITY, identity="")
    return state, (Reply(msg(ASK_IDENTITY, business=ctx.business), _skip_button()),)


def _confirm(state: ConversationState) -> tuple[ConversationState, Effects]:
    state = replace(state, step=Step.CONFIRM)
    return state, (Reply(msg(CONFIRM, statement=_statement(state)), _yes_no_buttons()),)


def _at_menu(
    state: ConversationState, intent: Intent, event: Message, ctx: Context
) -> tuple[ConversationState, Effects]:
    """START and MENU: a sentence, a number or a button picks a request."""
    words = _words_of(event)
    if intent.kind is IntentKind.REQUEST and intent.request is not None:
        sentence = event.text if event.button is None else ""
        return _choose(state, intent.request, ctx, words=words, sentence=sentence)
    if intent.kind is IntentKind.NUMBER and intent.number is not None:
        menu = ctx.menu
        if 1 <= intent.number <= len(menu):
            return _choose(state, menu[intent.number - 1], ctx, words=words, sentence="")
        state = _reset(state, Step.MENU)
        body = msg(NO_SUCH_OPTION, number=intent.number, menu=_menu_msg(ctx))
        return state, (Reply(body, _menu_buttons(ctx)),)
    if intent.kind is IntentKind.THANKS:
        return state, (Reply(msg(YOU_ARE_WELCOME)),)
    if state.step is Step.START:
        return _show_menu(state, ctx, greet=True)
    return _show_menu(state, ctx, lead=NOT_UNDERSTOOD)


def _at_details(
    state: ConversationState, intent: Intent, event: Message, ctx: Context
) -> tuple[ConversationState, Effects]:
    if state.kind is None:
        return _show_menu(state, ctx)
    if state.kind is RequestType.COOKIE_OPT_OUT:
        if event.button is not None and event.button.startswith("cookie:"):
            choice = event.button.removeprefix("cookie:")
            categories = COOKIE_CATEGORIES if choice == "all" else cookie_categories(choice)
        else:
            categories = cookie_categories(event.text)
        if not categories:
            return _hint(state, ctx)
        return _ask_identity(replace(state, categories=tuple(categories)), ctx)
    text = event.text.strip()
    letters = sum(char.isalpha() for char in text)
    if letters < 3 or intent.kind in (IntentKind.YES, IntentKind.NO, IntentKind.THANKS):
        return _hint(state, ctx)
    return _confirm(replace(state, details=text[:MAX_DETAILS]))


def _at_identity(
    state: ConversationState, intent: Intent, event: Message, ctx: Context
) -> tuple[ConversationState, Effects]:
    """Cookies: the email address or phone number to apply them to, or none (skip, no)."""
    if state.kind is not RequestType.COOKIE_OPT_OUT or not state.categories:
        return _show_menu(state, ctx)
    if intent.kind in (IntentKind.SKIP, IntentKind.NO):
        return _confirm(replace(state, identity=""))
    email = normalise_email(event.text) if intent.kind is IntentKind.EMAIL else None
    given = email or normalise_phone(event.text)
    if given is None:
        return _hint(state, ctx)
    return _confirm(replace(state, identity=given))


def _at_confirm(
    state: ConversationState, intent: Intent, event: Message, ctx: Context
) -> tuple[ConversationState, Effects]:
    kind = state.kind
    if kind is None:
        return _show_menu(state, ctx)
    if intent.kind is IntentKind.YES:
        if kind is RequestType.MARKETING_OPT_OUT:
            return _reset(state), (
                OptOut(kind, (MARKETING,), state.words),
                Reply(msg(OPTED_OUT, business=ctx.business)),
            )
        if kind is RequestType.COOKIE_OPT_OUT:
            categories = _cookie_list(state.categories)
            done = (
                msg(COOKIES_OFF_FOR, identity=state.identity, categories=categories)
                if state.identity
                else msg(COOKIES_OFF, categories=categories)
            )
            return _reset(state), (
                OptOut(kind, state.categories, state.words, state.identity),
                Reply(done),
            )
        needs = kind in ctx.needs_proof
        return replace(state, step=Step.FILING), (
            FileTicket(kind, state.details, needs, state.words),
        )
    if intent.kind is IntentKind.NO:
        return _show_menu(state, ctx, lead=AFTER_NO)
    if intent.kind is IntentKind.REQUEST and intent.request is not None:
        sentence = event.text if event.button is None else ""
        return _choose(state, intent.request, ctx, words=_words_of(event), sentence=sentence)
    return _hint(state, ctx)


def _at_filing(
    state: ConversationState, intent: Intent, event: Message, ctx: Context
) -> tuple[ConversationState, Effects]:
    return state, (Reply(msg(FILING_WAIT)),)


def _at_email(
    state: ConversationState, intent: Intent, event: Message, ctx: Context
) -> tuple[ConversationState, Effects]:
    if state.pending_ref is None:
        return _show_menu(state, ctx)
    if intent.kind is IntentKind.EMAIL and intent.email is not None:
        return replace(state, email=intent.email), (SendCode(state.pending_ref, intent.email),)
    if intent.kind is IntentKind.VERIFY:
        return state, (_prompt(state, ctx),)
    return _hint(state, ctx)


def _at_code(
    state: ConversationState, intent: Intent, event: Message, ctx: Context
) -> tuple[ConversationState, Effects]:
    ref = state.pending_ref
    if ref is None:
        return _show_menu(state, ctx)
    if state.email is None:
        return replace(state, step=Step.ASK_EMAIL), (_prompt(state, ctx),)
    if intent.kind is IntentKind.CODE and intent.code is not None:
        return state, (CheckCode(ref, intent.code),)
    if intent.kind is IntentKind.RESEND:
        return state, (SendCode(ref, state.email),)
    if intent.kind is IntentKind.EMAIL and intent.email is not None:
        return replace(state, email=intent.email), (SendCode(ref, intent.email),)
    if intent.kind is IntentKind.VERIFY:
        return state, (_prompt(state, ctx),)
    return _hint(state, ctx)


def _at_language(
    state: ConversationState, intent: Intent, event: Message, ctx: Context
) -> tuple[ConversationState, Effects]:
    number = intent.number
    if (
        intent.kind is IntentKind.NUMBER
        and number is not None
        and 1 <= number <= len(ctx.languages)
    ):
        return _switch_language(state, ctx.languages[number - 1], ctx)
    return _hint(state, ctx)


_STEPS = {
    Step.START: _at_menu,
    Step.MENU: _at_menu,
    Step.ASK_DETAILS: _at_details,
    Step.ASK_IDENTITY: _at_identity,
    Step.CONFIRM: _at_confirm,
    Step.FILING: _at_filing,
    Step.ASK_EMAIL: _at_email,
    Step.ASK_CODE: _at_code,
    Step.CHOOSE_LANGUAGE: _at_language,
}


# --- answers from the wiring ----------------------------------------------------------


def _on_result(
    state: ConversationState, event: Event, ctx: Context
) -> tuple[ConversationState, Effects]:
    if isinstance(event, TicketFiled):
        return _filed(state, event, ctx)
    if isinstance(event, CodeSent):
        if state.step in _VERIFYING and state.email:
            waiting = replace(state, step=Step.ASK_CODE)
            return waiting, (
                Reply(msg(CODE_SENT, email=state.email), (Button(msg(RESEND_LABEL), "resend"),)),
            )
        return state, ()
    if isinstance(event, CodeCooldown):
        if state.step not in _VERIFYING:
            return state, ()
        seconds = max(event.seconds, 1)
        step = Step.ASK_CODE if state.email else state.step
        return replace(state, step=step), (
            Reply(_plural(COOLDOWN_ONE, COOLDOWN_MANY, seconds, seconds=seconds)),
        )
    if isinstance(event, CodeWrong):
        if state.step is not Step.ASK_CODE:
            return state, ()
        tries = max(event.tries_left, 0)
        return state, (Reply(_plural(CODE_WRONG_ONE, CODE_WRONG_MANY, tries, tries=tries)),)
    if isinstance(event, CodeLocked):
        if state.step not in _VERIFYING:
            return state, ()
        return state, (Reply(msg(CODE_LOCKED, until=event.until)),)
    if isinstance(event, CodeExpired):
        if state.step is not Step.ASK_CODE:
            return state, ()
        return state, (Reply(msg(CODE_EXPIRED), (Button(msg(RESEND_LABEL), "resend"),)),)
    if isinstance(event, Verified):
        done = _reset(state) if state.step in _VERIFYING else state
        done = replace(
            done,
            pending_ref=None if state.pending_ref == event.ref else state.pending_ref,
            last_ref=event.ref,
        )
        text = (
            msg(VERIFIED, ref=event.ref, due=event.due)
            if event.due
            else msg(VERIFIED_NO_DUE, ref=event.ref)
        )
        return done, (Reply(text),)
    if isinstance(event, StatusLoaded):
        return state, (_status(event.items, ctx),)
    if isinstance(event, TicketCancelled):
        return _withdrawn(state, event)
    return state, ()


def _filed(
    state: ConversationState, event: TicketFiled, ctx: Context
) -> tuple[ConversationState, Effects]:
    if state.step is Step.FILING and state.kind is not None and state.kind in ctx.needs_proof:
        asking = replace(_reset(state, Step.ASK_EMAIL), pending_ref=event.ref, last_ref=event.ref)
        text = (
            msg(FILED_VERIFY_DUE, ref=event.ref, due=event.due, business=ctx.business)
            if event.due
            else msg(FILED_VERIFY, ref=event.ref, business=ctx.business)
        )
        return asking, (Reply(text),)
    done = _reset(state) if state.step is Step.FILING else state
    done = replace(done, last_ref=event.ref)
    if event.due:
        return done, (Reply(msg(FILED, ref=event.ref, due=event.due)),)
    return done, (Reply(msg(FILED_NO_DUE, ref=event.ref)),)


def _status(items: Sequence[StatusItem], ctx: Context) -> Reply:
    if not items:
        return Reply(msg(STATUS_NONE, business=ctx.business))
    lines = tuple(
        msg(
            STATUS_LINE,
            ref=item.ref,
            kind=msg(NAMES[item.kind]),
            status=msg(STATUS_NAMES[item.status]),
            due=item.due,
        )
        if item.due
        else msg(
            STATUS_LINE_NO_DUE,
            ref=item.ref,
            kind=msg(NAMES[item.kind]),
            status=msg(STATUS_NAMES[item.status]),
        )
        for item in items
    )
    return Reply(msg(STATUS_LIST, items=lines))


def _withdrawn(
    state: ConversationState, event: TicketCancelled
) -> tuple[ConversationState, Effects]:
    """The answer to CancelTicket; CLOSED also answers SendCode/CheckCode on a closed request."""
    if event.outcome is CancelOutcome.NOT_FOUND:
        return state, (Reply(msg(WITHDRAW_NOT_FOUND, ref=event.ref)),)
    if state.pending_ref == event.ref:
        state = _reset(state) if state.step in _VERIFYING else state
        state = replace(state, pending_ref=None)
    if event.outcome is CancelOutcome.CLOSED:
        return state, (Reply(msg(WITHDRAW_CLOSED, ref=event.ref)),)
    return state, (Reply(msg(WITHDRAWN, ref=event.ref)),)
