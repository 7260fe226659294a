"""The intake dialogue as tables: (state, input) -> (next step, replies and effects)."""

from __future__ import annotations

import json
import re
import string
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po
from hypothesis import HealthCheck, given, settings
from hypothesis import event as event_note
from hypothesis import strategies as st

from bot import conversation as c
from bot.conversation import (
    NEEDS_PROOF,
    AttachMedia,
    CancelOutcome,
    CancelTicket,
    CheckCode,
    CodeCooldown,
    CodeExpired,
    CodeLocked,
    CodeSent,
    CodeWrong,
    Context,
    ConversationState,
    Effect,
    Event,
    FileTicket,
    Message,
    Msg,
    OptIn,
    OptOut,
    Reply,
    SendCode,
    ShowStatus,
    StatusItem,
    StatusLoaded,
    Step,
    TicketCancelled,
    TicketFiled,
    Transition,
    Verified,
    advance,
    render,
)
from bot.i18n import FSI, PDI
from bot.messages import Inbound, Media
from bot.tenants import load_tenants
from bot.understanding import IntentKind, classify
from storage.enums import Channel, RequestType, TicketStatus

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
REF = "OD-2026-00042"
EMAIL = "ali@example.com"
ALL_TYPES = tuple(RequestType)
CTX = Context("Optician Dynamics", ALL_TYPES, ("en", "ar", "ur"), NOW, "privacy@example.com")
# A business in Jordan offering fewer rights, in English and Arabic only.
CTX_JO = Context(
    "Jooptics",
    (
        RequestType.ACCESS,
        RequestType.RECTIFICATION,
        RequestType.ERASURE,
        RequestType.PORTABILITY,
        RequestType.OBJECTION,
        RequestType.CONSENT_WITHDRAWAL,
    ),
    ("en", "ar"),
    NOW,
    "privacy@jooptics.example",
)

ERASURE = RequestType.ERASURE
COMPLAINT = RequestType.COMPLAINT
COOKIES = RequestType.COOKIE_OPT_OUT
MARKETING = RequestType.MARKETING_OPT_OUT
RECTIFICATION = RequestType.RECTIFICATION

# One state per step, as the dialogue leaves them.
START = ConversationState(language="en")
MENU = ConversationState(step=Step.MENU, language="en")
DETAILS_RECTIFY = ConversationState(
    step=Step.ASK_DETAILS, language="en", kind=RECTIFICATION, words="2"
)
DETAILS_OBJECT = replace(DETAILS_RECTIFY, kind=RequestType.OBJECTION, words="6")
DETAILS_COMPLAIN = replace(DETAILS_RECTIFY, kind=COMPLAINT, words="10")
DETAILS_COOKIES = replace(DETAILS_RECTIFY, kind=COOKIES, words="9")
CONFIRM_ERASE = ConversationState(
    step=Step.CONFIRM, language="en", kind=ERASURE, words="delete my data"
)
CONFIRM_COMPLAIN = replace(CONFIRM_ERASE, kind=COMPLAINT, details="You lost my file", words="10")
CONFIRM_MARKETING = replace(CONFIRM_ERASE, kind=MARKETING, words="8")
IDENTITY_COOKIES = replace(DETAILS_COOKIES, step=Step.ASK_IDENTITY, categories=("analytics",))
CONFIRM_COOKIES = replace(CONFIRM_ERASE, kind=COOKIES, categories=("analytics",), words="9")
CONFIRM_COOKIES_FOR = replace(CONFIRM_COOKIES, identity=EMAIL)
PHONE = "+923001234567"
FILING = ConversationState(step=Step.FILING, language="en", kind=ERASURE, words="3")
ASK_EMAIL = ConversationState(step=Step.ASK_EMAIL, language="en", pending_ref=REF, last_ref=REF)
ASK_CODE = replace(ASK_EMAIL, step=Step.ASK_CODE, email=EMAIL)
CHOOSING = ConversationState(
    step=Step.CHOOSE_LANGUAGE, language="en", kind=ERASURE, back=Step.CONFIRM, words="3"
)
CHOOSING_AT_START = ConversationState(step=Step.CHOOSE_LANGUAGE, language="en", back=Step.START)

EVERY_STEP = {
    "start": START,
    "menu": MENU,
    "details_rectify": DETAILS_RECTIFY,
    "details_object": DETAILS_OBJECT,
    "details_complain": DETAILS_COMPLAIN,
    "details_cookies": DETAILS_COOKIES,
    "identity_cookies": IDENTITY_COOKIES,
    "confirm_erase": CONFIRM_ERASE,
    "confirm_complain": CONFIRM_COMPLAIN,
    "confirm_marketing": CONFIRM_MARKETING,
    "confirm_cookies": CONFIRM_COOKIES,
    "confirm_cookies_for": CONFIRM_COOKIES_FOR,
    "filing": FILING,
    "ask_email": ASK_EMAIL,
    "ask_code": ASK_CODE,
    "choose_language": CHOOSING,
    "choose_language_at_start": CHOOSING_AT_START,
}
assert {state.step for state in EVERY_STEP.values()} == set(Step)


def summary(transition: Transition) -> tuple[Step, tuple[object, ...]]:
    """The next step, and each effect: a reply by its msgid, anything else as itself."""
    shown = tuple(e.key if isinstance(e, Reply) else e for e in transition.effects)
    return transition.state.step, shown


def say(state: ConversationState, text: str = "", ctx: Context = CTX, **kw: object) -> Transition:
    return advance(state, Message(text, **kw), ctx)  # type: ignore[arg-type]


# --- every step, as a table ---------------------------------------------------------------

OPTED_OUT_BY = OptOut(MARKETING, ("marketing",), "STOP")
STEPS_TABLE = [
    # nothing under way
    (START, "hi", Step.MENU, (c.WELCOME,)),
    (START, "delete my data", Step.CONFIRM, (c.CONFIRM,)),
    (START, "3", Step.CONFIRM, (c.CONFIRM,)),
    (START, "42", Step.MENU, (c.NO_SUCH_OPTION,)),
    (START, "what time do you open?", Step.MENU, (c.WELCOME,)),
    (START, "yes", Step.MENU, (c.WELCOME,)),
    (START, "thank you", Step.START, (c.YOU_ARE_WELCOME,)),
    (START, "status", Step.START, (ShowStatus(),)),
    (START, "cancel", Step.START, (c.NOTHING_TO_CANCEL,)),
    (START, "cancel OD-2026-00042", Step.START, (CancelTicket(REF),)),
    (START, "STOP", Step.START, (OPTED_OUT_BY, c.OPTED_OUT)),
    (START, "START", Step.START, (OptIn("START"), c.OPTED_IN)),
    (START, "verify", Step.START, (c.NOTHING_TO_VERIFY,)),
    (START, "language", Step.CHOOSE_LANGUAGE, (c.CHOOSE_LANGUAGE,)),
    (START, "", Step.MENU, (c.WELCOME,)),
    # the menu
    (MENU, "1", Step.CONFIRM, (c.CONFIRM,)),
    (MENU, "٢", Step.ASK_DETAILS, (c.QUESTIONS[RECTIFICATION],)),
    (MENU, "10", Step.ASK_DETAILS, (c.QUESTIONS[COMPLAINT],)),
    (MENU, "0", Step.MENU, (c.NO_SUCH_OPTION,)),
    (MENU, "blah", Step.MENU, (c.NOT_UNDERSTOOD,)),
    (MENU, "menu", Step.MENU, (c.MENU,)),
    (MENU, "help", Step.MENU, (c.MENU,)),
    (MENU, "cancel", Step.START, (c.CANCELLED,)),
    (MENU, "I want to complain about your staff, they shared my prescription", Step.CONFIRM,
     (c.CONFIRM,)),
    # details
    (DETAILS_RECTIFY, "my surname is Khan, not Kahn", Step.CONFIRM, (c.CONFIRM,)),
    (DETAILS_RECTIFY, "ok", Step.ASK_DETAILS, (c.NOT_UNDERSTOOD,)),
    (DETAILS_RECTIFY, "yes", Step.ASK_DETAILS, (c.NOT_UNDERSTOOD,)),
    (DETAILS_RECTIFY, "5", Step.ASK_DETAILS, (c.NOT_UNDERSTOOD,)),
    (DETAILS_RECTIFY, "cancel", Step.START, (c.CANCELLED,)),
    (DETAILS_OBJECT, "profiling for adverts", Step.CONFIRM, (c.CONFIRM,)),
    (DETAILS_COMPLAIN, "نمبر کسی اور کو دے دیا گیا", Step.CONFIRM, (c.CONFIRM,)),
    (DETAILS_COMPLAIN, "delete my data", Step.CONFIRM, (c.CONFIRM,)),
    (DETAILS_COOKIES, "1 3", Step.ASK_IDENTITY, (c.ASK_IDENTITY,)),
    (DETAILS_COOKIES, "الكل", Step.ASK_IDENTITY, (c.ASK_IDENTITY,)),
    (DETAILS_COOKIES, "blah", Step.ASK_DETAILS, (c.NOT_UNDERSTOOD,)),
    # cookies: whom to apply them to, an email or an international phone number, or skipped
    (IDENTITY_COOKIES, "ali@example.com", Step.CONFIRM, (c.CONFIRM,)),
    (IDENTITY_COOKIES, "it is Ali@Example.COM.", Step.CONFIRM, (c.CONFIRM,)),
    (IDENTITY_COOKIES, "+92 300 1234567", Step.CONFIRM, (c.CONFIRM,)),
    (IDENTITY_COOKIES, "٠٠٩٢٣٠٠١٢٣٤٥٦٧", Step.CONFIRM, (c.CONFIRM,)),
    (IDENTITY_COOKIES, "skip", Step.CONFIRM, (c.CONFIRM,)),
    (IDENTITY_COOKIES, "تخطي", Step.CONFIRM, (c.CONFIRM,)),
    (IDENTITY_COOKIES, "چھوڑ دیں", Step.CONFIRM, (c.CONFIRM,)),
    (IDENTITY_COOKIES, "no", Step.CONFIRM, (c.CONFIRM,)),
    (IDENTITY_COOKIES, "03001234567", Step.ASK_IDENTITY, (c.NOT_UNDERSTOOD,)),
    (IDENTITY_COOKIES, "+12", Step.ASK_IDENTITY, (c.NOT_UNDERSTOOD,)),
    (IDENTITY_COOKIES, "ali@example", Step.ASK_IDENTITY, (c.NOT_UNDERSTOOD,)),
    (IDENTITY_COOKIES, "a@example.com b@example.com", Step.ASK_IDENTITY, (c.NOT_UNDERSTOOD,)),
    (IDENTITY_COOKIES, "123456", Step.ASK_IDENTITY, (c.NOT_UNDERSTOOD,)),
    (IDENTITY_COOKIES, "yes", Step.ASK_IDENTITY, (c.NOT_UNDERSTOOD,)),
    (IDENTITY_COOKIES, "cancel", Step.START, (c.CANCELLED,)),
    (IDENTITY_COOKIES, "menu", Step.MENU, (c.MENU,)),
    # confirmation
    (CONFIRM_ERASE, "yes", Step.FILING, (FileTicket(ERASURE, "", True, "delete my data"),)),
    (CONFIRM_ERASE, "نعم", Step.FILING, (FileTicket(ERASURE, "", True, "delete my data"),)),
    (CONFIRM_ERASE, "no", Step.MENU, (c.AFTER_NO,)),
    (CONFIRM_ERASE, "جی نہیں", Step.MENU, (c.AFTER_NO,)),
    (CONFIRM_ERASE, "maybe", Step.CONFIRM, (c.NOT_UNDERSTOOD,)),
    (CONFIRM_ERASE, "2", Step.CONFIRM, (c.NOT_UNDERSTOOD,)),
    (CONFIRM_ERASE, "actually I want a copy of my data", Step.CONFIRM, (c.CONFIRM,)),
    (CONFIRM_COMPLAIN, "yes",
     Step.FILING, (FileTicket(COMPLAINT, "You lost my file", False, "10"),)),
    (CONFIRM_MARKETING, "yes", Step.START, (OptOut(MARKETING, ("marketing",), "8"), c.OPTED_OUT)),
    (CONFIRM_COOKIES, "👍", Step.START, (OptOut(COOKIES, ("analytics",), "9"), c.COOKIES_OFF)),
    (CONFIRM_COOKIES_FOR, "yes",
     Step.START, (OptOut(COOKIES, ("analytics",), "9", EMAIL), c.COOKIES_OFF_FOR)),
    # waiting for the ticket to be filed
    (FILING, "are you there", Step.FILING, (c.FILING_WAIT,)),
    (FILING, "yes", Step.FILING, (c.FILING_WAIT,)),
    # identity
    (ASK_EMAIL, "ali@example.com", Step.ASK_EMAIL, (SendCode(REF, EMAIL),)),
    (ASK_EMAIL, "my email is Ali@Example.com", Step.ASK_EMAIL, (SendCode(REF, "Ali@example.com"),)),
    (ASK_EMAIL, "123456", Step.ASK_EMAIL, (c.NOT_UNDERSTOOD,)),
    (ASK_EMAIL, "blah", Step.ASK_EMAIL, (c.NOT_UNDERSTOOD,)),
    (ASK_EMAIL, "verify", Step.ASK_EMAIL, (c.ASK_EMAIL,)),
    (ASK_EMAIL, "cancel", Step.START, (c.CANCELLED_VERIFY,)),
    (ASK_EMAIL, "menu", Step.MENU, (c.MENU, c.PENDING_NOTE)),
    (ASK_CODE, "123456", Step.ASK_CODE, (CheckCode(REF, "123456"),)),
    (ASK_CODE, "١٢٣ ٤٥٦", Step.ASK_CODE, (CheckCode(REF, "123456"),)),
    (ASK_CODE, "resend", Step.ASK_CODE, (SendCode(REF, EMAIL),)),
    (ASK_CODE, "نیا کوڈ", Step.ASK_CODE, (SendCode(REF, EMAIL),)),
    (ASK_CODE, "sara@example.com", Step.ASK_CODE, (SendCode(REF, "sara@example.com"),)),
    (ASK_CODE, "12345", Step.ASK_CODE, (c.NOT_UNDERSTOOD,)),
    (ASK_CODE, "verify", Step.ASK_CODE, (c.ASK_CODE,)),
    (ASK_CODE, "cancel", Step.START, (c.CANCELLED_VERIFY,)),
    (ASK_CODE, "cancel OD-2026-00042", Step.ASK_CODE, (CancelTicket(REF),)),
    # choosing a language, then back where the customer was
    (CHOOSING, "2", Step.CONFIRM, (c.LANGUAGE_SET, c.CONFIRM)),
    (CHOOSING, "urdu", Step.CONFIRM, (c.LANGUAGE_SET, c.CONFIRM)),
    (CHOOSING, "9", Step.CHOOSE_LANGUAGE, (c.NOT_UNDERSTOOD,)),
    (CHOOSING, "french", Step.CHOOSE_LANGUAGE, (c.NOT_UNDERSTOOD,)),
    (CHOOSING, "cancel", Step.CONFIRM, (c.CONFIRM,)),
    (CHOOSING_AT_START, "1", Step.MENU, (c.LANGUAGE_SET, c.MENU)),
    (CHOOSING_AT_START, "cancel", Step.START, (c.CANCELLED,)),
]  # fmt: skip


@pytest.mark.parametrize(("state", "text", "step", "effects"), STEPS_TABLE)
def test_steps(state: ConversationState, text: str, step: Step, effects: tuple[object]) -> None:
    assert summary(say(state, text)) == (step, effects)


def test_the_next_state_keeps_what_the_step_learned() -> None:
    assert say(DETAILS_RECTIFY, "my surname is Khan").state.details == "my surname is Khan"
    assert say(DETAILS_COOKIES, "1 3").state.categories == ("analytics", "functional")
    assert say(IDENTITY_COOKIES, "Ali@Example.com").state.identity == "Ali@example.com"
    assert say(IDENTITY_COOKIES, "+92 (300) 123-4567").state.identity == PHONE
    assert say(IDENTITY_COOKIES, "0092 300 1234567").state.identity == PHONE
    assert say(replace(IDENTITY_COOKIES, identity=EMAIL), "skip").state.identity == ""
    assert say(IDENTITY_COOKIES, "skip").state.categories == ("analytics",)
    assert say(ASK_EMAIL, "ali@example.com").state.email == EMAIL
    assert say(ASK_CODE, "sara@example.com").state.email == "sara@example.com"
    assert say(CONFIRM_ERASE, "a copy of my data please").state.kind is RequestType.ACCESS
    assert say(CHOOSING, "urdu").state.language == "ur"
    assert say(CHOOSING, "urdu").state.language_chosen is True
    left = say(ASK_CODE, "cancel").state
    assert (left.pending_ref, left.email) == (REF, None)


# --- every request type, start to finish -------------------------------------------------

SENTENCES = {
    RequestType.ACCESS: ("send me a copy of my data", ""),
    RequestType.RECTIFICATION: ("correct my address", "It should be 12 Mall Road, Lahore"),
    RequestType.ERASURE: ("delete my data", ""),
    RequestType.PORTABILITY: ("export my data", ""),
    RequestType.RESTRICTION: ("restrict the use of my data", ""),
    RequestType.OBJECTION: ("I object to how you use my data", "Sharing it with partners"),
    RequestType.CONSENT_WITHDRAWAL: ("I withdraw my consent", ""),
    RequestType.MARKETING_OPT_OUT: ("no more marketing please", ""),
    RequestType.COOKIE_OPT_OUT: ("turn off cookies", "2"),
    RequestType.COMPLAINT: ("I want to make a complaint", "Your staff read my file aloud"),
}


def _walk(kind: RequestType, first: Message) -> list[Transition]:
    """Choose `kind` with `first`, give details if asked, confirm, and let the ticket be filed."""
    details = SENTENCES[kind][1]
    steps = [advance(START, first, CTX)]
    if steps[-1].state.step is Step.ASK_DETAILS:
        steps.append(say(steps[-1].state, details))
    if steps[-1].state.step is Step.ASK_IDENTITY:
        steps.append(say(steps[-1].state, EMAIL))
    assert steps[-1].state.step is Step.CONFIRM
    assert steps[-1].replies[-1].key == c.CONFIRM
    steps.append(say(steps[-1].state, "yes"))
    if kind not in c.OPT_OUTS:
        assert steps[-1].state.step is Step.FILING
        steps.append(advance(steps[-1].state, TicketFiled(REF, "9 March 2026"), CTX))
    return steps


@pytest.mark.parametrize("kind", ALL_TYPES)
@pytest.mark.parametrize("how", ["sentence", "number", "button"])
def test_every_request_type(kind: RequestType, how: str) -> None:
    sentence, details = SENTENCES[kind]
    first = {
        "sentence": Message(sentence),
        "number": Message(str(CTX.menu.index(kind) + 1)),
        "button": Message(button=f"kind:{kind.value}"),
    }[how]
    steps = _walk(kind, first)
    asked = steps[0].state.step is Step.ASK_DETAILS
    assert asked == (kind in c.DETAILS_NEEDED)
    confirmed = steps[-1] if kind in c.OPT_OUTS else steps[-2]
    effect = confirmed.effects[0]
    if kind is COOKIES:
        assert effect == OptOut(COOKIES, ("advertising",), confirmed_words(steps), EMAIL)
        assert summary(steps[-1]) == (Step.START, (effect, c.COOKIES_OFF_FOR))
    elif kind is MARKETING:
        assert effect == OptOut(MARKETING, ("marketing",), confirmed_words(steps))
        assert summary(steps[-1]) == (Step.START, (effect, c.OPTED_OUT))
    else:
        assert isinstance(effect, FileTicket)
        assert effect.kind is kind
        assert effect.needs_verification == (kind in NEEDS_PROOF)
        assert effect.details == (details if kind in c.DETAILS_NEEDED else "")
        filed = steps[-1]
        if kind in NEEDS_PROOF:
            assert summary(filed) == (Step.ASK_EMAIL, (c.FILED_VERIFY_DUE,))
            assert filed.state.pending_ref == REF
        else:
            assert summary(filed) == (Step.START, (c.FILED,))
            assert filed.replies[0].message.get("due") == "9 March 2026"
        assert filed.state.last_ref == REF


def confirmed_words(steps: list[Transition]) -> str:
    return steps[0].state.words


def test_verification_to_the_end() -> None:
    state = _walk(ERASURE, Message("delete my data"))[-1].state
    t = say(state, "ali@example.com")
    assert t.effects == (SendCode(REF, EMAIL),)
    t = advance(t.state, CodeSent(), CTX)
    assert summary(t) == (Step.ASK_CODE, (c.CODE_SENT,))
    assert t.replies[0].buttons[0].data == "resend"
    t = say(t.state, "000000")
    assert t.effects == (CheckCode(REF, "000000"),)
    t = advance(t.state, CodeWrong(4), CTX)
    assert summary(t) == (Step.ASK_CODE, (c.CODE_WRONG_ONE,))
    assert render(t.replies[0].message, "en") == "That code is not right. You have 4 tries left."
    t = advance(say(t.state, "123456").state, Verified(REF, "9 March 2026"), CTX)
    assert summary(t) == (Step.START, (c.VERIFIED,))
    assert (t.state.pending_ref, t.state.last_ref) == (None, REF)


def test_a_sentence_long_enough_is_taken_as_the_details() -> None:
    text = "I want to complain: your optician shared my prescription with a lens company"
    t = say(START, text)
    assert summary(t) == (Step.CONFIRM, (c.CONFIRM,))
    assert t.state.details == text
    t = say(START, "turn off advertising cookies")
    assert (t.state.step, t.state.categories) == (Step.ASK_IDENTITY, ("advertising",))


def test_cookie_opt_out_names_whom_it_applies_to_or_skips_it() -> None:
    asked = say(START, "turn off analytics cookies")
    assert summary(asked) == (Step.ASK_IDENTITY, (c.ASK_IDENTITY,))
    assert asked.replies[0].message.get("business") == "Optician Dynamics"
    assert [b.data for b in asked.replies[0].buttons] == ["skip"]
    # Given: the confirmation and the acknowledgement both name it; no code is ever sent.
    confirm = say(asked.state, "my number is +92 300 1234567")
    text = render(confirm.replies[0].message, "en")
    assert text.startswith(f"You want us to turn off these cookies for {PHONE}:\n• Analytics")
    done = say(confirm.state, "yes")
    assert done.effects[0] == OptOut(COOKIES, ("analytics",), "turn off analytics cookies", PHONE)
    assert render(done.replies[0].message, "en") == (
        f"Done: we have recorded that you refuse these cookies for {PHONE}:\n• Analytics cookies"
    )
    assert not any(isinstance(e, (SendCode, CheckCode)) for e in confirm.effects + done.effects)
    # Skipped (a button on Telegram): the opt-out goes ahead without one.
    skipped = say(asked.state, button="skip")
    assert render(skipped.replies[0].message, "en").startswith(
        "You want us to turn off these cookies for you:"
    )
    done = say(skipped.state, "yes")
    assert done.effects[0] == OptOut(COOKIES, ("analytics",), "turn off analytics cookies")
    assert summary(done)[1][1] == c.COOKIES_OFF
    # In Arabic and Urdu the address keeps its own direction.
    for language in ("ar", "ur"):
        shown = render(
            say(replace(asked.state, language=language), EMAIL).replies[0].message, language
        )
        assert f"{FSI}{EMAIL}{PDI}" in shown, shown


def test_request_not_offered_points_to_the_privacy_email() -> None:
    t = say(START, "please restrict my data", CTX_JO)
    assert summary(t) == (Step.MENU, (c.NOT_OFFERED,))
    assert t.replies[0].message.get("email") == "privacy@jooptics.example"
    assert [b.data for b in t.replies[0].buttons] == [f"kind:{k.value}" for k in CTX_JO.menu]


def test_marketing_opt_out_is_always_accepted() -> None:
    t = say(START, "stop sending me promotional messages", CTX_JO)
    assert summary(t) == (Step.CONFIRM, (c.CONFIRM,))
    assert summary(say(START, "STOP", CTX_JO)) == (Step.START, (OPTED_OUT_BY, c.OPTED_OUT))


def test_menu_numbers_follow_the_tenants_offer() -> None:
    assert say(START, "4", CTX_JO).state.kind is RequestType.PORTABILITY
    assert summary(say(START, "7", CTX_JO)) == (Step.MENU, (c.NO_SUCH_OPTION,))
    menu = say(START, "menu", CTX_JO).replies[0].message.get("menu")
    assert isinstance(menu, Msg)
    lines = menu.get("options")
    assert isinstance(lines, tuple) and len(lines) == len(CTX_JO.menu)


# --- commands that work at every step -----------------------------------------------------


@pytest.mark.parametrize("name", EVERY_STEP)
def test_cancel_leaves_every_step(name: str) -> None:
    state = EVERY_STEP[name]
    t = say(state, "cancel")
    assert t.replies, "never silence"
    if state.step is Step.CHOOSE_LANGUAGE and state.back is Step.CONFIRM:
        assert t.state.step is Step.CONFIRM
    else:
        assert t.state.step is Step.START
        assert t.state.kind is None
        assert t.state.pending_ref == state.pending_ref  # a filed request is kept


@pytest.mark.parametrize("name", EVERY_STEP)
@pytest.mark.parametrize("text", ["menu", "help", "مساعدة", "مینو", "/start"])
def test_menu_and_help_everywhere(name: str, text: str) -> None:
    state = EVERY_STEP[name]
    t = say(state, text)
    assert t.state.step is Step.MENU
    assert t.replies[0].key == (c.WELCOME if state.step is Step.START else c.MENU)
    assert t.replies[0].buttons


@pytest.mark.parametrize("name", EVERY_STEP)
@pytest.mark.parametrize("text", ["STOP", "unsubscribe", "إيقاف", "ان سبسکرائب"])
def test_stop_opts_out_at_once_and_keeps_the_dialogue(name: str, text: str) -> None:
    state = EVERY_STEP[name]
    t = say(state, text)
    assert t.effects == (OptOut(MARKETING, ("marketing",), text), t.effects[1])
    assert [r.key for r in t.replies] == [c.OPTED_OUT]
    assert replace(t.state, language=state.language, updated_at=None) == state


@pytest.mark.parametrize("name", EVERY_STEP)
def test_unknown_input_gets_a_hint_for_the_step(name: str) -> None:
    state = EVERY_STEP[name]
    t = say(state, "🤷")
    assert len(t.replies) == 1
    expected = {Step.START: c.WELCOME, Step.FILING: c.FILING_WAIT}.get(state.step, c.NOT_UNDERSTOOD)
    assert t.replies[0].key == expected
    if expected == c.NOT_UNDERSTOOD and state.step is not Step.MENU:
        assert t.state.step is state.step  # the same question, asked again


@pytest.mark.parametrize("name", EVERY_STEP)
def test_language_switch_at_every_step(name: str) -> None:
    state = EVERY_STEP[name]
    t = say(state, "language arabic")
    assert t.state.language == "ar"
    assert t.state.language_chosen
    assert t.replies[0].key == c.LANGUAGE_SET
    back = state.back if state.step is Step.CHOOSE_LANGUAGE else state.step
    assert t.state.step is (Step.MENU if back in (None, Step.START) else back)
    assert len(t.replies) == 2  # and the step's question again, now in Arabic
    asked = say(state, "language")
    assert summary(asked) == (Step.CHOOSE_LANGUAGE, (c.CHOOSE_LANGUAGE,))


@pytest.mark.parametrize("name", EVERY_STEP)
def test_status_at_every_step(name: str) -> None:
    t = say(EVERY_STEP[name], "status")
    assert t.effects == (ShowStatus(),)
    assert t.state.step is EVERY_STEP[name].step


# --- answers from the wiring --------------------------------------------------------------

ITEM = StatusItem(REF, ERASURE, TicketStatus.OPEN, "9 March 2026")
RESULTS = [
    (FILING, TicketFiled(REF, "9 March 2026"), Step.ASK_EMAIL, (c.FILED_VERIFY_DUE,)),
    (FILING, TicketFiled(REF), Step.ASK_EMAIL, (c.FILED_VERIFY,)),
    (replace(FILING, kind=COMPLAINT), TicketFiled(REF, "9 March 2026"), Step.START, (c.FILED,)),
    (replace(FILING, kind=COMPLAINT), TicketFiled(REF), Step.START, (c.FILED_NO_DUE,)),
    (START, TicketFiled(REF, "9 March 2026"), Step.START, (c.FILED,)),
    (replace(ASK_EMAIL, email=EMAIL), CodeSent(), Step.ASK_CODE, (c.CODE_SENT,)),
    (ASK_CODE, CodeSent(), Step.ASK_CODE, (c.CODE_SENT,)),
    (START, CodeSent(), Step.START, ()),
    (replace(ASK_EMAIL, email=EMAIL), CodeCooldown(42), Step.ASK_CODE, (c.COOLDOWN_ONE,)),
    (ASK_CODE, CodeWrong(1), Step.ASK_CODE, (c.CODE_WRONG_ONE,)),
    (ASK_CODE, CodeLocked("10:30"), Step.ASK_CODE, (c.CODE_LOCKED,)),
    (ASK_CODE, CodeExpired(), Step.ASK_CODE, (c.CODE_EXPIRED,)),
    (MENU, CodeWrong(3), Step.MENU, ()),
    (ASK_CODE, Verified(REF, "9 March 2026"), Step.START, (c.VERIFIED,)),
    (ASK_CODE, Verified(REF), Step.START, (c.VERIFIED_NO_DUE,)),
    (MENU, StatusLoaded(()), Step.MENU, (c.STATUS_NONE,)),
    (CONFIRM_ERASE, StatusLoaded((ITEM,)), Step.CONFIRM, (c.STATUS_LIST,)),
    (ASK_CODE, TicketCancelled(REF, CancelOutcome.CANCELLED), Step.START, (c.WITHDRAWN,)),
    (START, TicketCancelled(REF, CancelOutcome.NOT_FOUND), Step.START, (c.WITHDRAW_NOT_FOUND,)),
    (START, TicketCancelled(REF, CancelOutcome.CLOSED), Step.START, (c.WITHDRAW_CLOSED,)),
    # the request expired while the customer was verifying: the wiring answers CLOSED
    (ASK_CODE, TicketCancelled(REF, CancelOutcome.CLOSED), Step.START, (c.WITHDRAW_CLOSED,)),
    (
        ASK_CODE,
        TicketCancelled("OD-2026-00001", CancelOutcome.CANCELLED),
        Step.ASK_CODE,
        (c.WITHDRAWN,),
    ),
]


@pytest.mark.parametrize(("state", "event", "step", "effects"), RESULTS)
def test_results(
    state: ConversationState, event: Event, step: Step, effects: tuple[object]
) -> None:
    assert summary(advance(state, event, CTX)) == (step, effects)


def test_withdrawing_the_request_being_verified_forgets_it() -> None:
    t = advance(ASK_CODE, TicketCancelled(REF, CancelOutcome.CANCELLED), CTX)
    assert t.state.pending_ref is None
    assert say(t.state, "verify").replies[0].key == c.NOTHING_TO_VERIFY


def test_verify_resumes_a_request_left_unverified() -> None:
    left = say(ASK_CODE, "cancel").state
    assert say(left, "menu").replies[-1].key == c.PENDING_NOTE
    t = say(left, "verify")
    assert summary(t) == (Step.ASK_EMAIL, (c.RESUME_VERIFY,))
    assert t.state.pending_ref == REF


@pytest.mark.parametrize(
    ("language", "tries", "text"),
    [
        ("en", 1, "That code is not right. You have 1 try left."),
        ("en", 3, "That code is not right. You have 3 tries left."),
        ("ar", 1, "الرمز غير صحيح. تبقّت لديك محاولة واحدة."),
        ("ar", 2, "الرمز غير صحيح. تبقّت لديك محاولتان."),
        ("ar", 3, f"الرمز غير صحيح. تبقّت لديك {FSI}3{PDI} محاولات."),
        ("ur", 1, f"یہ کوڈ درست نہیں ہے۔ آپ کے پاس {FSI}1{PDI} کوشش باقی ہے۔"),
        ("ur", 4, f"یہ کوڈ درست نہیں ہے۔ آپ کے پاس {FSI}4{PDI} کوششیں باقی ہیں۔"),
    ],
)
def test_plural_forms(language: str, tries: int, text: str) -> None:
    state = replace(ASK_CODE, language=language)
    reply = advance(state, CodeWrong(tries), CTX).replies[0]
    assert render(reply.message, language) == text


def test_status_lines_are_translated() -> None:
    items = (ITEM, StatusItem("OD-2026-00043", COMPLAINT, TicketStatus.AWAITING_REQUESTER))
    reply = advance(replace(START, language="ar"), StatusLoaded(items), CTX).replies[0]
    text = render(reply.message, "ar")
    assert text.splitlines() == [
        "طلباتك:",
        f"{FSI}{REF}{PDI}: حذف، مستلَم، موعد الرد: {FSI}9 March 2026{PDI}",
        f"{FSI}OD-2026-00043{PDI}: شكوى، بانتظار ردّك",
    ]


# --- files --------------------------------------------------------------------------------


def test_files_go_to_the_latest_request() -> None:
    t = say(replace(START, last_ref=REF), media=1)
    assert summary(t) == (Step.START, (AttachMedia(REF), c.MEDIA_ATTACHED))
    t = say(ASK_CODE, media=2)
    assert t.effects[0] == AttachMedia(REF)


def test_files_without_a_request_are_explained() -> None:
    assert summary(say(START, media=1)) == (Step.START, (c.MEDIA_NO_REQUEST,))
    with_caption = say(START, "hi", media=1)
    assert summary(with_caption) == (Step.MENU, (c.MEDIA_NO_REQUEST, c.WELCOME))


# --- buttons ------------------------------------------------------------------------------

BUTTONS = [
    (START, "kind:erasure", Step.CONFIRM, (c.CONFIRM,)),
    (START, "kind:nonsense", Step.MENU, (c.WELCOME,)),
    (CONFIRM_ERASE, "yes", Step.FILING, (FileTicket(ERASURE, "", True, "delete my data"),)),
    (CONFIRM_ERASE, "no", Step.MENU, (c.AFTER_NO,)),
    (DETAILS_COOKIES, "cookie:all", Step.ASK_IDENTITY, (c.ASK_IDENTITY,)),
    (DETAILS_COOKIES, "cookie:analytics", Step.ASK_IDENTITY, (c.ASK_IDENTITY,)),
    (DETAILS_COOKIES, "cookie:", Step.ASK_DETAILS, (c.NOT_UNDERSTOOD,)),
    (IDENTITY_COOKIES, "skip", Step.CONFIRM, (c.CONFIRM,)),
    (IDENTITY_COOKIES, "cookie:all", Step.ASK_IDENTITY, (c.NOT_UNDERSTOOD,)),
    (ASK_CODE, "resend", Step.ASK_CODE, (SendCode(REF, EMAIL),)),
    (CHOOSING, "lang:ur", Step.CONFIRM, (c.LANGUAGE_SET, c.CONFIRM)),
    (CHOOSING, "lang:fr", Step.CHOOSE_LANGUAGE, (c.CHOOSE_LANGUAGE,)),
    (MENU, "menu", Step.MENU, (c.MENU,)),
    (ASK_EMAIL, "cancel", Step.START, (c.CANCELLED_VERIFY,)),
    (MENU, "junk", Step.MENU, (c.NOT_UNDERSTOOD,)),
]


@pytest.mark.parametrize(("state", "data", "step", "effects"), BUTTONS)
def test_buttons(state: ConversationState, data: str, step: Step, effects: tuple[object]) -> None:
    assert summary(say(state, button=data)) == (step, effects)


def test_buttons_where_telegram_shows_them() -> None:
    assert [b.data for b in say(START, "hi").replies[0].buttons] == [
        f"kind:{kind.value}" for kind in RequestType
    ]
    assert [b.data for b in say(START, "3").replies[0].buttons] == ["yes", "no"]
    assert [b.data for b in say(MENU, "9").replies[0].buttons] == [
        "cookie:analytics",
        "cookie:advertising",
        "cookie:functional",
        "cookie:all",
    ]
    assert [b.data for b in say(MENU, "9").replies[0].buttons][-1] == "cookie:all"
    assert [b.data for b in say(DETAILS_COOKIES, "1").replies[0].buttons] == ["skip"]
    assert [b.data for b in say(START, "language").replies[0].buttons] == [
        "lang:en",
        "lang:ar",
        "lang:ur",
    ]


# --- languages ----------------------------------------------------------------------------

FRESH = ConversationState()
LANGUAGES = [
    (FRESH, "hi", None, CTX, "en"),
    (FRESH, "السلام عليكم", None, CTX, "ar"),
    (FRESH, "السلام علیکم", None, CTX, "ur"),
    (FRESH, "میرا ڈیٹا حذف کریں", "en", CTX, "ur"),
    (FRESH, "3", "ar", CTX, "ar"),
    (FRESH, "3", "ur-PK", CTX, "ur"),
    (FRESH, "3", "fr", CTX, "en"),
    (FRESH, "3", None, replace(CTX, languages=("ar", "en")), "ar"),
    (FRESH, "میرا ڈیٹا حذف کریں", None, CTX_JO, "en"),  # Urdu not offered: the default
    (FRESH, "میرا ڈیٹا حذف کریں", "ar", CTX_JO, "ar"),
    (replace(START, language="ar"), "ok", None, CTX, "ar"),  # a short "ok" does not switch
    (replace(START, language="ar"), "I want to delete my data", None, CTX, "en"),
    (replace(START, language="en"), "احذف", None, CTX, "ar"),
    (replace(START, language="ar"), "ہاں", None, CTX, "ur"),
    (replace(START, language="ur"), "حذف", None, CTX, "ur"),
    (replace(START, language="ur", language_chosen=True), "احذف بياناتي الشخصية كلها", None, CTX,
     "ur"),
    (replace(START, language="ar"), "ali@example.com", None, CTX, "ar"),
    (replace(START, language="ur"), "123456", "en", CTX, "ur"),
]  # fmt: skip


@pytest.mark.parametrize(("state", "text", "code", "ctx", "language"), LANGUAGES)
def test_language_is_picked_from_the_customers_writing(
    state: ConversationState, text: str, code: str | None, ctx: Context, language: str
) -> None:
    t = say(state, text, ctx, language_code=code)
    assert t.state.language == language
    assert t.language == language


def test_a_language_the_business_does_not_offer() -> None:
    t = say(START, "language urdu", CTX_JO)
    assert summary(t) == (Step.CHOOSE_LANGUAGE, (c.LANGUAGE_NOT_OFFERED,))
    assert t.state.language == "en"


def test_a_result_before_any_message_uses_the_default_language() -> None:
    t = advance(ConversationState(), StatusLoaded(()), replace(CTX, languages=("ur", "en")))
    assert t.language == "ur"


# --- time ---------------------------------------------------------------------------------


def test_an_old_confirmation_is_not_answered_by_a_new_yes() -> None:
    old = replace(CONFIRM_ERASE, updated_at=NOW - timedelta(days=2))
    assert summary(say(old, "yes")) == (Step.MENU, (c.WELCOME,))
    recent = replace(CONFIRM_ERASE, updated_at=NOW - timedelta(hours=3))
    assert say(recent, "yes").state.step is Step.FILING


def test_an_old_cookie_question_starts_over() -> None:
    old = replace(IDENTITY_COOKIES, updated_at=NOW - timedelta(days=2))
    assert summary(say(old, EMAIL)) == (Step.MENU, (c.WELCOME,))


def test_the_identity_steps_do_not_go_stale() -> None:
    old = replace(ASK_CODE, updated_at=NOW - timedelta(days=5))
    assert say(old, "123456").effects == (CheckCode(REF, "123456"),)


def test_every_message_stamps_the_state() -> None:
    assert say(START, "hi").state.updated_at == NOW


# --- persistence --------------------------------------------------------------------------


@pytest.mark.parametrize("name", EVERY_STEP)
def test_state_round_trips_through_json(name: str) -> None:
    state = replace(EVERY_STEP[name], updated_at=NOW, language_chosen=True, last_ref=REF)
    stored = json.loads(json.dumps(state.to_json()))
    assert ConversationState.from_json(stored) == state


@pytest.mark.parametrize(
    "stored",
    [
        None,
        {},
        {"step": "no_such_step", "kind": "telepathy", "language": "fr"},
        {"step": 3, "categories": "analytics", "updated_at": "yesterday", "back": []},
        {"step": "ask_code", "updated_at": "2026-03-02T09:00:00"},
    ],
)
def test_unreadable_state_falls_back_to_defaults(stored: dict[str, object] | None) -> None:
    state = ConversationState.from_json(stored)
    assert isinstance(state.step, Step)
    assert state.language in (None, "en", "ar", "ur")
    assert state.updated_at is None or state.updated_at.tzinfo is not None
    assert say(state, "hi").replies


def test_context_for_a_shipped_tenant() -> None:
    tenant = load_tenants(ROOT / "config" / "tenants").by_slug("jooptics")
    ctx = Context.for_tenant(tenant, now=NOW)
    assert ctx.business == "Jooptics"
    assert ctx.languages == ("en", "ar")
    assert set(ctx.menu) == set(tenant.requests)
    assert ctx.privacy_email == tenant.privacy_email


def test_message_from_inbound() -> None:
    inbound = Inbound(
        channel=Channel.TELEGRAM,
        provider_id="1",
        sender="42",
        received_at=NOW,
        text="",
        media=(Media("https://example.com/f.jpg"),),
        language_code="ar",
        callback_data="yes",
    )
    assert Message.from_inbound(inbound) == Message("", "ar", "yes", 1)


# --- catalogs -----------------------------------------------------------------------------

PO = ROOT / "bot" / "i18n" / "locales"
PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _catalog(language: str):  # type: ignore[no-untyped-def]
    with (PO / language / "LC_MESSAGES" / "messages.po").open("rb") as handle:
        return read_po(handle, locale=language)


def _msgids() -> list[str]:
    source = ROOT / "bot" / "conversation.py"
    return [m for _, m, _, _ in extract_from_file("python", source, keywords={"_": None})]


@pytest.mark.parametrize("language", ["ar", "ur"])
def test_every_text_is_translated_with_its_placeholders(language: str) -> None:
    catalog = _catalog(language)
    plurals = {m.id[1]: m for m in catalog if isinstance(m.id, tuple)}
    for msgid in _msgids():
        if msgid in plurals:
            continue
        entry = catalog.get(msgid)
        assert entry is not None, f"{language}: missing {msgid!r}"
        forms = entry.string if isinstance(entry.string, tuple) else (entry.string,)
        assert all(forms), f"{language}: untranslated {msgid!r}"
        wanted = set(PLACEHOLDER.findall(msgid))
        for form in forms:
            assert set(PLACEHOLDER.findall(form)) <= wanted, (language, msgid, form)
            if not isinstance(entry.id, tuple):
                assert set(PLACEHOLDER.findall(form)) == wanted, (language, msgid, form)
    assert _catalog(language).get(
        "Thank you, we have received your message. The privacy team of {business} will "
        "answer you here."
    )


def test_plural_entries_have_every_form() -> None:
    assert {len(m.string) for m in _catalog("ar") if isinstance(m.id, tuple)} == {6}
    assert {len(m.string) for m in _catalog("ur") if isinstance(m.id, tuple)} == {2}


QUOTED = {"ar": re.compile("«([^»]+)»"), "ur": re.compile('"([^"]+)"')}
KEYWORDS = re.compile(r"\b(STATUS|LANGUAGE|MENU|VERIFY|RESEND|START|STOP|CANCEL|SKIP)\b")


@pytest.mark.parametrize("language", ["ar", "ur"])
def test_keywords_in_translations_are_understood(language: str) -> None:
    """A word the bot tells the customer to write must mean that to the bot."""
    seen = set()
    for entry in _catalog(language):
        forms = entry.string if isinstance(entry.string, tuple) else (entry.string,)
        for form in forms:
            for keyword in QUOTED[language].findall(form or ""):
                filled = keyword.replace("{ref}", REF)
                kind = classify(filled).kind
                assert kind not in (IntentKind.UNKNOWN, IntentKind.REQUEST), (keyword, kind)
                seen.add(kind)
    assert {IntentKind.MENU, IntentKind.STATUS, IntentKind.VERIFY, IntentKind.RESEND} <= seen
    assert {IntentKind.START, IntentKind.CANCEL, IntentKind.YES, IntentKind.NO} <= seen
    assert IntentKind.SKIP in seen


def test_keywords_in_english_texts_are_understood() -> None:
    expected = {
        "STATUS": IntentKind.STATUS,
        "LANGUAGE": IntentKind.LANGUAGE,
        "MENU": IntentKind.MENU,
        "VERIFY": IntentKind.VERIFY,
        "RESEND": IntentKind.RESEND,
        "START": IntentKind.START,
        "STOP": IntentKind.STOP,
        "CANCEL": IntentKind.CANCEL,
        "SKIP": IntentKind.SKIP,
    }
    found = {word for msgid in _msgids() for word in KEYWORDS.findall(msgid)}
    assert found == set(expected)
    for word, kind in expected.items():
        assert classify(word).kind is kind


def _all_replies() -> list[Reply]:
    """A reply of every kind the dialogue sends."""
    replies: list[Reply] = []
    for state in EVERY_STEP.values():
        for text in ("hi", "cancel", "🤷", "STOP", "START", "language", "verify", "thanks"):
            replies.extend(say(state, text).replies)
    for state, event, _, _ in RESULTS:
        replies.extend(advance(state, event, CTX).replies)
    for state, text, _, _ in STEPS_TABLE:
        replies.extend(say(state, text).replies)
    replies.extend(advance(replace(ASK_CODE, email=EMAIL), CodeCooldown(1), CTX).replies)
    replies.extend(say(replace(START, last_ref=REF), media=1).replies)
    replies.extend(say(START, media=1).replies)
    replies.extend(say(START, "language urdu", CTX_JO).replies)
    replies.extend(say(START, "restrict my data", CTX_JO).replies)
    replies.extend(say(replace(ASK_CODE, pending_ref=None), "verify").replies)
    replies.extend(say(replace(START, pending_ref=REF), "verify").replies)
    return replies


@pytest.mark.parametrize("language", ["en", "ar", "ur"])
def test_every_reply_renders(language: str) -> None:
    keys = set()
    for reply in _all_replies():
        text = render(reply.message, language)
        assert text.strip()
        assert "{" not in text and "}" not in text, text
        for button in reply.buttons:
            label = (
                button.label if isinstance(button.label, str) else render(button.label, language)
            )
            assert label.strip()
        keys.add(reply.key)
    top_level = {m for m in _msgids()} - {
        *c.LABELS.values(),
        *c.NAMES.values(),
        *c.STATEMENTS.values(),
        *c.QUESTIONS.values(),
        *c.COOKIE_LABELS.values(),
        c.COOKIES_FOR,
        c.SKIP_LABEL,
        *c.STATUS_NAMES.values(),
        c.ALL_COOKIES,
        c.MENU_LINE,
        c.BULLET,
        c.YES_LABEL,
        c.NO_LABEL,
        c.RESEND_LABEL,
        c.CODE_WRONG_MANY,
        c.COOLDOWN_MANY,
        c.STATUS_LINE,
        c.STATUS_LINE_NO_DUE,
        c.CONFIRM,
    }
    assert top_level <= keys, top_level - keys


def test_right_to_left_values_are_isolated() -> None:
    t = advance(replace(FILING, language="ar", kind=COMPLAINT), TicketFiled(REF, "9 March"), CTX)
    text = render(t.replies[0].message, "ar")
    assert f"{FSI}{REF}{PDI}" in text and f"{FSI}9 March{PDI}" in text
    assert FSI not in render(t.replies[0].message, "en")


# --- random walks -------------------------------------------------------------------------

TEXTS = [
    "hi", "menu", "help", "cancel", "cancel OD-2026-00042", "status", "STOP", "START", "verify",
    "resend", "language", "language urdu", "language french", "اردو", "yes", "no", "نعم", "لا",
    "ہاں", "نہیں", "1", "3", "9", "10", "42", "٣", "123456", "١٢٣٤٥٦", "ali@example.com",
    "delete my data", "احذف بياناتي", "میرا ڈیٹا حذف کریں", "turn off cookies", "1 2",
    "my surname is wrong, it is Khan", "I want to complain", "stop sending me ads", "thanks",
    "🤷", "", "  ", "OD-2026-00042", "skip", "تخطي", "+92 300 1234567", "03001234567",
    "sara@example.com",
]  # fmt: skip
BUTTON_DATA = [
    "yes", "no", "menu", "cancel", "resend", "status", "verify", "kind:erasure",
    "kind:cookie_opt_out", "kind:complaint", "kind:bogus", "lang:ar", "lang:xx", "cookie:all",
    "cookie:analytics", "cookie:", "junk", "", "skip",
]  # fmt: skip


def _mostly(
    common: st.SearchStrategy[T], rare: st.SearchStrategy[T], odds: int = 4
) -> st.SearchStrategy[T]:
    """`common` about `odds` times as often as `rare` (one_of would weigh them alike)."""
    return st.integers(0, odds).flatmap(lambda n: rare if n == 0 else common)


messages = st.builds(
    Message,
    text=_mostly(st.sampled_from(TEXTS), st.text(max_size=40)),
    language_code=st.sampled_from([None, "en", "ar", "ur-PK", "fr"]),
    button=_mostly(st.none(), st.sampled_from(BUTTON_DATA)),
    media=_mostly(st.just(0), st.integers(1, 2), odds=6),
)
stray = st.one_of(
    st.builds(TicketFiled, st.just(REF), st.sampled_from([None, "9 March"])),
    st.builds(CodeSent),
    st.builds(CodeCooldown, st.integers(-5, 120)),
    st.builds(CodeWrong, st.integers(-1, 5)),
    st.builds(CodeLocked, st.just("10:30")),
    st.builds(CodeExpired),
    st.builds(Verified, st.sampled_from([REF, "XX-2026-99999"]), st.none()),
    st.builds(StatusLoaded, st.just((ITEM,))),
    st.builds(TicketCancelled, st.just(REF), st.sampled_from(list(CancelOutcome))),
)


def _answers(effect: Effect, data: st.DataObject, ref: str) -> list[Event]:
    """What a wiring layer might answer to an effect that asks for an answer."""
    if isinstance(effect, FileTicket):
        return [TicketFiled(ref, data.draw(st.sampled_from([None, "9 March 2026"])))]
    if isinstance(effect, SendCode):
        return [
            data.draw(
                st.sampled_from([CodeSent(), CodeCooldown(30), CodeLocked("10:30")]),
            )
        ]
    if isinstance(effect, CheckCode):
        return [
            data.draw(
                st.sampled_from(
                    [Verified(effect.ref, "9 March"), CodeWrong(2), CodeExpired(), CodeLocked("x")]
                )
            )
        ]
    if isinstance(effect, ShowStatus):
        return [StatusLoaded((ITEM,))]
    if isinstance(effect, CancelTicket):
        return [TicketCancelled(effect.ref, data.draw(st.sampled_from(list(CancelOutcome))))]
    return []


def _check_way_out(state: ConversationState, ctx: Context) -> None:
    """Every state answers `cancel` and `menu`, and they lead out."""
    out = advance(state, Message("cancel"), ctx)
    assert out.replies
    assert out.state.step in (Step.START, state.back or Step.START)
    menu = advance(state, Message("menu"), ctx)
    assert menu.replies and menu.state.step is Step.MENU


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(_mostly(messages, stray, odds=6), min_size=3, max_size=30),
    minutes=st.lists(
        _mostly(st.integers(0, 30), st.integers(0, 3000), odds=9), min_size=30, max_size=30
    ),
    start=st.sampled_from([ConversationState(), *EVERY_STEP.values()]),
    jordan=st.booleans(),
    data=st.data(),
)
def test_random_conversations_never_fail_and_always_have_a_way_out(
    events: list[Event],
    minutes: list[int],
    start: ConversationState,
    jordan: bool,
    data: st.DataObject,
) -> None:
    state = start
    base = CTX_JO if jordan else CTX
    now = NOW
    typed: set[str] = set()  # braces the customer typed may come back quoted, as typed
    for index, event in enumerate(events):
        if isinstance(event, Message):
            typed.update(re.findall(r"\{\w*\}", event.text))
        now += timedelta(minutes=minutes[index])
        ctx = replace(base, now=now)
        transition = advance(state, event, ctx)
        replies = list(transition.replies)
        for effect in transition.effects:
            for answer in _answers(effect, data, f"OD-2026-{index:05d}"):
                transition = advance(transition.state, answer, ctx)
                replies.extend(transition.replies)
        if isinstance(event, Message):
            assert replies, f"silence after {event!r} in {state.step}"
        for reply in replies:
            for language in ("en", "ar", "ur"):  # no placeholder left unfilled
                assert set(re.findall(r"\{\w*\}", render(reply.message, language))) <= typed
        state = transition.state
        event_note(f"reached {state.step}")
        assert state.language in base.languages
        assert ConversationState.from_json(json.loads(json.dumps(state.to_json()))) == state
        _check_way_out(state, ctx)


@given(
    step=st.sampled_from(list(Step)),
    kind=st.none() | st.sampled_from(ALL_TYPES),
    email=st.none() | st.just(EMAIL),
    ref=st.none() | st.just(REF),
    back=st.none() | st.sampled_from(list(Step)),
    text=st.text(alphabet=string.printable + "ابتثجحخدذرزسشصضطظعغفقكلمنهويیےہکگ", max_size=30),
)
def test_any_state_however_odd_answers_everything(
    step: Step,
    kind: RequestType | None,
    email: str | None,
    ref: str | None,
    back: Step | None,
    text: str,
) -> None:
    """Even a state the dialogue would never build (a bad row) answers and lets the customer out."""
    state = ConversationState(
        step=step, kind=kind, email=email, pending_ref=ref, back=back, language="en"
    )
    transition = advance(state, Message(text), CTX)
    awaiting = (FileTicket, SendCode, CheckCode, ShowStatus, CancelTicket)
    assert transition.replies or any(isinstance(e, awaiting) for e in transition.effects)
    _check_way_out(state, CTX)
