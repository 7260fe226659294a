"""The loopback fakes work with the real python-telegram-bot and twilio clients, and refuse
calls that break the published contracts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.constants import ParseMode
from telegram.error import BadRequest, Conflict, Forbidden, NetworkError, RetryAfter
from telegram.ext import Defaults, ExtBot
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from tests.fakes.contracts import check_telegram_call, check_twilio_call
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.twilio_api import (
    FakeTwilio,
    RewritingTwilioHttpClient,
    inbound_whatsapp_form,
    new_sid,
    sign_twilio_request,
)

CUSTOMER = "whatsapp:+923001234567"
BUSINESS = "whatsapp:+14155238886"
TEMPLATE = "HX" + "a" * 32


@pytest_asyncio.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


@pytest_asyncio.fixture
async def bot(telegram: FakeTelegram) -> AsyncIterator[Bot]:
    async with Bot(
        telegram.token, base_url=telegram.base_url, base_file_url=telegram.base_file_url
    ) as bot:
        yield bot


@pytest_asyncio.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio(senders=[BUSINESS]) as fake:
        yield fake


@pytest_asyncio.fixture
async def client(twilio: FakeTwilio) -> AsyncIterator[Client]:
    http_client = RewritingTwilioHttpClient(twilio.url)
    yield Client(twilio.account_sid, twilio.auth_token, http_client=http_client)
    await http_client.close()


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def basic_auth(login: str, password: str) -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth(login, password)}


# ---------------------------------------------------------------------- Telegram


async def test_bot_sends_edits_and_uploads(telegram: FakeTelegram, bot: Bot) -> None:
    assert bot.username == "rightsdesk_test_bot"  # Bot.initialize called getMe
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Erase", callback_data="erase")]])

    first = await bot.send_message(
        42, "Hello <b>there</b>", parse_mode="HTML", reply_markup=keyboard
    )
    second = await bot.send_message(42, "Second")
    edited = await bot.edit_message_text("Edited", chat_id=42, message_id=first.message_id)
    document = await bot.send_document(-1001, b"%PDF-1.4 data", filename="export.pdf")

    assert (first.message_id, second.message_id) == (1, 2)
    assert first.text == "Hello there" and first.reply_markup == keyboard
    assert edited.text == "Edited" and edited.reply_markup is None and edited.edit_date
    assert document.document.file_name == "export.pdf"
    assert [c.params["text"] for c in telegram.sent_messages(42)] == [
        "Hello <b>there</b>",
        "Second",
    ]
    assert telegram.sent_messages(42)[0].params["reply_markup"] == keyboard.to_dict()
    assert telegram.calls_to("sendDocument")[0].params["document"].data == b"%PDF-1.4 data"
    assert [m["text"] for m in telegram.messages_in(42)] == ["Edited", "Second"]

    downloaded = await (await bot.get_file(document.document.file_id)).download_as_bytearray()
    assert downloaded == b"%PDF-1.4 data"
    assert telegram.violations == []
    assert [v.rule for v in telegram.rate_violations] == ["over 1 message/s in a private chat"]


async def test_unchanged_edit_is_refused_like_telegram(telegram: FakeTelegram, bot: Bot) -> None:
    message = await bot.send_message(42, "Same")
    with pytest.raises(BadRequest, match="is not modified"):
        await bot.edit_message_text("Same", chat_id=42, message_id=message.message_id)
    assert telegram.violations == []  # a state error the code must handle, not a misuse


async def test_webhook_and_commands(telegram: FakeTelegram, bot: Bot) -> None:
    await bot.set_my_commands([("tickets", "Open tickets"), ("help", "Help")])
    assert await bot.set_webhook("https://desk.example/webhooks/telegram", secret_token="s3cr3t_")
    info = await bot.get_webhook_info()
    assert info.url == "https://desk.example/webhooks/telegram"
    assert telegram.webhook["secret_token"] == "s3cr3t_"
    assert [c["command"] for c in telegram.commands[("default", "")]] == ["tickets", "help"]

    with pytest.raises(BadRequest, match=r"(?i)https url must be provided"):
        await bot.set_webhook("http://127.0.0.1:8080/webhooks/telegram")
    assert len(telegram.violations) == 1

    telegram.push_message(42, "hi")
    with pytest.raises(Conflict, match="webhook is active"):
        await bot.get_updates()
    assert await bot.delete_webhook()
    assert (await bot.get_webhook_info()).pending_update_count == 1


async def test_get_updates_long_polls_for_pushed_updates(telegram: FakeTelegram, bot: Bot) -> None:
    first = telegram.push_message(42, "/start optician-dynamics")
    updates = await bot.get_updates(timeout=5)
    assert [u.update_id for u in updates] == [first["update_id"]]
    assert updates[0].message.text == "/start optician-dynamics"

    poll = asyncio.create_task(bot.get_updates(offset=first["update_id"] + 1, timeout=5))
    await asyncio.sleep(0.2)
    assert not poll.done()
    sent = await bot.send_message(42, "Pick one", reply_markup=InlineKeyboardMarkup(
        [[InlineKeyboardButton("Access", callback_data="access")]]
    ))  # fmt: skip
    telegram.push_callback_query(42, sent.message_id, "access")
    (update,) = await asyncio.wait_for(poll, 5)
    assert isinstance(update, Update) and update.callback_query.data == "access"
    assert update.callback_query.message.message_id == sent.message_id
    assert await update.callback_query.answer("Noted")
    assert await bot.get_updates(offset=update.update_id + 1, timeout=0) == ()


async def test_forum_topics_chat_actions_and_deletes(telegram: FakeTelegram, bot: Bot) -> None:
    staff = -1001234567890
    with pytest.raises(BadRequest, match="not a forum"):
        await bot.create_forum_topic(staff, "OD-2026-00042")
    telegram.add_chat(staff, is_forum=True)
    topic = await bot.create_forum_topic(staff, "OD-2026-00042")
    card = await bot.send_message(staff, "New ticket", message_thread_id=topic.message_thread_id)
    assert card.message_thread_id == topic.message_thread_id and card.is_topic_message
    with pytest.raises(BadRequest, match="thread not found"):
        await bot.send_message(staff, "Lost", message_thread_id=999)
    assert await bot.send_chat_action(staff, "typing")
    assert await bot.delete_message(staff, card.message_id)
    with pytest.raises(BadRequest, match="to delete not found"):
        await bot.delete_message(staff, card.message_id)
    assert telegram.violations == []


async def test_ext_bot_defaults_pass_the_check(telegram: FakeTelegram) -> None:
    defaults = Defaults(parse_mode=ParseMode.HTML, disable_notification=True)
    async with ExtBot(
        telegram.token,
        base_url=telegram.base_url,
        base_file_url=telegram.base_file_url,
        defaults=defaults,
    ) as bot:
        asked = telegram.push_message(42, "delete my data", first_name="Ann")["message"]
        keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Yes", callback_data="yes")]])
        reply = await bot.send_message(
            42, "<b>Erasure</b>?", reply_markup=keyboard, reply_to_message_id=asked["message_id"]
        )
        # PTB also sends the Defaults here, where Telegram ignores them
        await bot.edit_message_reply_markup(42, reply.message_id, reply_markup=None)
    assert reply.reply_to_message and reply.reply_to_message.text == "delete my data"
    assert reply.chat.first_name == "Ann"
    assert telegram.sent_messages(42)[0].params["disable_notification"] is True
    assert "reply_markup" not in telegram.messages_in(42)[-1]
    assert telegram.violations == []


async def test_rate_limits_are_recorded_not_enforced(telegram: FakeTelegram, bot: Bot) -> None:
    await asyncio.gather(*(bot.send_message(-1 - i, "broadcast") for i in range(31)))
    for _ in range(20):
        await bot.send_message(-1, "again")
    assert {(v.rule, v.chat_id) for v in telegram.rate_violations} == {
        ("over 30 messages/s", None),  # once for every message over the limit
        ("over 20 messages/min in a group", -1),
    }
    assert len(telegram.sent_messages()) == 51


async def test_blocked_user_is_forbidden(telegram: FakeTelegram, bot: Bot) -> None:
    telegram.block_chat(42)
    with pytest.raises(Forbidden, match="blocked"):
        await bot.send_message(42, "Your ticket")


async def test_text_rules_are_checked(telegram: FakeTelegram, bot: Bot) -> None:
    with pytest.raises(BadRequest, match="parse entities"):
        await bot.send_message(42, "Due 1 May <br> ok", parse_mode="HTML")
    with pytest.raises(BadRequest, match="'-' is reserved"):
        await bot.send_message(42, "Ticket OD-2026-00042.", parse_mode="MarkdownV2")
    with pytest.raises(BadRequest, match="too long"):
        await bot.send_message(42, "x" * 4097)
    text_only = InlineKeyboardMarkup([[InlineKeyboardButton("No action")]])
    with pytest.raises(BadRequest, match=r"(?i)text buttons are unallowed"):
        await bot.send_message(42, "Pick", reply_markup=text_only)
    assert len(telegram.violations) == 4 and telegram.calls == telegram.calls_to("getMe")


async def test_invalid_raw_calls_are_refused_and_recorded(
    telegram: FakeTelegram, session: aiohttp.ClientSession
) -> None:
    api = f"{telegram.base_url}{telegram.token}"
    cases = [
        (f"{api}/sendMessage", {"chat_id": "42", "text": "hi", "colour": "red"}, 400),
        (f"{api}/sendMessage", {"chat_id": "42"}, 400),
        (f"{api}/sendMessage", {"chat_id": "42", "text": "hi", "reply_markup": "{oops"}, 400),
        (
            f"{api}/sendMessage",
            {"chat_id": "forty-two", "text": "hi", "disable_notification": "maybe"},
            400,
        ),
        (f"{api}/sendMesage", {"chat_id": "42", "text": "hi"}, 404),
        (f"{telegram.base_url}123:wrong/getMe", {}, 401),
    ]
    for url, form, status in cases:
        async with session.post(url, data=form) as response:
            body = await response.json()
        assert response.status == status
        assert body["ok"] is False and body["error_code"] == status and body["description"]
    problems = [p for v in telegram.violations for p in v.problems]
    assert "unknown parameter 'colour'" in problems[0]
    assert "missing required parameter 'text'" in problems[1]
    assert "expected JSON-serialised" in problems[2]
    assert "disable_notification: expected Boolean" in problems[3]
    assert problems[4:] == ["Not Found", "Unauthorized"]
    assert telegram.calls == []

    async with session.post(f"{api}/SENDMESSAGE", json={"chat_id": 42, "text": "hi"}) as response:
        assert response.status == 200  # method names are case-insensitive, JSON bodies work
    assert telegram.calls[0].method == "sendMessage"


def test_nested_objects_are_checked_against_their_types() -> None:
    markup = {"inline_keyboard": [[{"text": "A", "callback_data": "a", "colour": "red"}]]}
    check = check_telegram_call(
        "sendMessage", {"chat_id": "1", "text": "x", "reply_markup": json.dumps(markup)}
    )
    assert check.problems and "unknown field 'colour'" in check.problems[0]
    check = check_telegram_call(
        "sendMessage", {"chat_id": 1, "text": "x", "reply_markup": {"remove_keyboard": True}}
    )
    assert check.problems == [] and check.params["chat_id"] == 1


async def test_faults_surface_as_ptb_errors(telegram: FakeTelegram, bot: Bot) -> None:
    telegram.fail_next(1, 429, retry_after=3)
    with pytest.raises(RetryAfter) as retry:
        await bot.send_message(42, "hi")
    assert "Retry in 3 seconds" in str(retry.value)

    telegram.fail_next(2, 500)
    for _ in range(2):
        with pytest.raises(NetworkError):
            await bot.send_message(42, "hi")
    assert (await bot.send_message(42, "hi")).message_id == 1

    telegram.set_outage(502)
    with pytest.raises(NetworkError, match="Bad Gateway"):
        await bot.get_me()
    telegram.clear_outage()
    assert await bot.get_me()
    assert [c.status for c in telegram.failed_calls] == [429, 500, 500, 502]
    assert telegram.violations == []


# ---------------------------------------------------------------------- Twilio


async def test_whatsapp_message_with_body(twilio: FakeTwilio, client: Client) -> None:
    message = await client.messages.create_async(to=CUSTOMER, from_=BUSINESS, body="hi")
    assert message.sid.startswith("SM") and len(message.sid) == 34
    assert (message.status, message.to, message.from_, message.body) == (
        "queued",
        CUSTOMER,
        BUSINESS,
        "hi",
    )
    assert message.date_created is not None

    (sent,) = twilio.sent_messages(to=CUSTOMER)
    assert sent.params == {"To": CUSTOMER, "From": BUSINESS, "Body": "hi"}
    twilio.set_status(message.sid, "delivered")
    assert (await client.messages(message.sid).fetch_async()).status == "delivered"
    listed = await client.messages.list_async(to=CUSTOMER, limit=5)
    assert [m.sid for m in listed] == [message.sid]
    assert twilio.violations == []


async def test_whatsapp_template_message(twilio: FakeTwilio, client: Client) -> None:
    variables = json.dumps({"1": "OD-2026-00042", "2": "12 May"})
    message = await client.messages.create_async(
        to=CUSTOMER, from_=BUSINESS, content_sid=TEMPLATE, content_variables=variables
    )
    assert message.status == "queued"
    assert twilio.sent_messages()[0].params["ContentVariables"] == variables

    with pytest.raises(TwilioRestException) as error:
        await client.messages.create_async(
            to=CUSTOMER, from_=BUSINESS, content_sid=TEMPLATE, content_variables="{not json"
        )
    assert (error.value.status, error.value.code) == (400, 21656)


async def test_twilio_refuses_what_twilio_refuses(twilio: FakeTwilio, client: Client) -> None:
    with pytest.raises(TwilioRestException) as empty:
        await client.messages.create_async(to=CUSTOMER, from_=BUSINESS)
    with pytest.raises(TwilioRestException) as mixed:
        await client.messages.create_async(to="+923001234567", from_=BUSINESS, body="hi")
    with pytest.raises(TwilioRestException) as wrong_sender:
        await client.messages.create_async(to=CUSTOMER, from_="whatsapp:+15550001111", body="hi")
    with pytest.raises(TwilioRestException) as bad_enum:
        await client.messages.create_async(
            to=CUSTOMER, from_=BUSINESS, body="hi", risk_check="maybe"
        )
    assert [e.value.code for e in (empty, mixed, wrong_sender, bad_enum)] == [
        21619,
        21910,
        63007,
        20001,
    ]
    assert len(twilio.violations) == 3  # the unknown sender is the account's set-up, not a misuse
    assert "RiskCheck" in twilio.violations[-1].problems[0]


async def test_invalid_raw_twilio_calls_are_refused_and_recorded(
    twilio: FakeTwilio, session: aiohttp.ClientSession
) -> None:
    auth = basic_auth(twilio.account_sid, twilio.auth_token)
    messages = f"{twilio.url}/2010-04-01/Accounts/{twilio.account_sid}/Messages.json"
    typo = messages.replace("Messages", "Mesages")
    wrong = basic_auth(twilio.account_sid, "wrong")
    hi = {"To": CUSTOMER, "From": BUSINESS, "Body": "hi"}
    cases: list[tuple[str, str, Any, dict[str, str], int, int]] = [
        ("POST", messages, hi | {"Colour": "red"}, auth, 400, 20001),  # unknown parameter
        ("POST", messages, {"From": BUSINESS, "Body": "hi"}, auth, 400, 21604),  # no To
        ("POST", messages, hi, wrong, 401, 20003),  # bad auth
        ("POST", typo, hi, auth, 404, 20404),  # unknown resource
        ("PUT", messages, hi, auth, 405, 20004),  # method not in the spec
        ("GET", f"{messages}?Colour=red", None, auth, 400, 20001),  # unknown query parameter
    ]
    for method, url, form, headers, status, code in cases:
        async with session.request(method, url, data=form, headers=headers) as response:
            body = await response.json()
        assert (response.status, body["status"], body["code"]) == (status, status, code)
        assert body["message"]
    assert len(twilio.violations) == len(cases) and twilio.calls == []
    assert "unknown parameter 'Colour'" in twilio.violations[0].problems[0]


async def test_twilio_faults_raise_rest_exceptions(twilio: FakeTwilio, client: Client) -> None:
    twilio.fail_next(1, 500)
    with pytest.raises(TwilioRestException) as server_error:
        await client.messages.create_async(to=CUSTOMER, from_=BUSINESS, body="hi")
    twilio.set_outage(429)
    with pytest.raises(TwilioRestException) as too_many:
        await client.messages.create_async(to=CUSTOMER, from_=BUSINESS, body="hi")
    twilio.clear_outage()
    await client.messages.create_async(to=CUSTOMER, from_=BUSINESS, body="hi")
    assert (server_error.value.status, server_error.value.code) == (500, 20500)
    assert (too_many.value.status, too_many.value.code) == (429, 20429)
    assert len(twilio.calls) == 1 and len(twilio.failed_calls) == 2


async def test_inbound_media_and_signature(
    twilio: FakeTwilio, session: aiohttp.ClientSession
) -> None:
    sid = new_sid("MM")
    media_url = twilio.add_media(b"\xff\xd8jpeg", "image/jpeg", message_sid=sid)
    form = inbound_whatsapp_form(
        from_=CUSTOMER,
        to=BUSINESS,
        body="my id",
        message_sid=sid,
        media=[(media_url, "image/jpeg")],
    )
    assert form["MediaUrl0"].startswith("https://api.twilio.com/2010-04-01/Accounts/")
    assert (form["NumMedia"], form["MessageType"], form["WaId"]) == ("1", "image", "923001234567")

    url = "https://desk.example/webhooks/whatsapp"
    signature = sign_twilio_request(twilio.auth_token, url, form)
    assert RequestValidator(twilio.auth_token).validate(url, form, signature)
    assert not RequestValidator("another-token").validate(url, form, signature)

    async with session.get(twilio.rewrite(media_url)) as response:
        assert response.status == 401
    auth = basic_auth(twilio.account_sid, twilio.auth_token)
    async with session.get(twilio.rewrite(media_url), headers=auth) as response:
        assert response.status == 200 and response.content_type == "image/jpeg"
        assert await response.read() == b"\xff\xd8jpeg"


def test_twilio_paths_are_matched_against_the_spec() -> None:
    path = f"/2010-04-01/Accounts/AC{'0' * 32}/Messages/XX{'0' * 32}.json"
    check = check_twilio_call("GET", path, {}, {})
    assert check.template == "/2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json"
    assert check.problems and "does not match" in check.problems[0]
