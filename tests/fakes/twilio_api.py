"""A loopback Twilio REST API (Messages, for WhatsApp) checking calls against its OpenAPI spec."""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.utils import format_datetime, parsedate_to_datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode, urlsplit

from aiohttp import encode_basic_auth, web
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.request_validator import RequestValidator

from tests.fakes.contracts import ContractViolation, check_twilio_call
from tests.fakes.server import LoopbackServer
from tests.said import written

DEFAULT_ACCOUNT_SID = "AC" + "f" * 32
DEFAULT_AUTH_TOKEN = "fake-twilio-auth-token-0123456789"
API_VERSION = "2010-04-01"
MESSAGES = "/2010-04-01/Accounts/{AccountSid}/Messages.json"
MESSAGE = "/2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json"
_TWILIO_URL = re.compile(r"https://(?:[a-z0-9-]+\.)*twilio\.com(?=/|$)")
_MEDIA_CONTENT = re.compile(r"/2010-04-01/Accounts/[^/]+/Messages/[^/]+/Media/[^/.]+")
_E164 = re.compile(r"\+[1-9]\d{6,14}")


def new_sid(prefix: str) -> str:
    """A Twilio resource SID: two letters and 32 hex digits."""
    return prefix + secrets.token_hex(16)


@dataclass
class RecordedRequest:
    """One REST call: `params` are the form (POST) or query (GET) values, lists where the spec
    takes several; `response` is the JSON answered (None for media bytes)."""

    method: str
    path: str
    params: dict[str, Any]
    status: int
    response: Any
    at: float


class TwilioError(Exception):
    """A Twilio error answer; `violation` marks calls that break the published rules."""

    def __init__(self, status: int, code: int, message: str, *, violation: bool = False) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.violation = status, code, message, violation

    def body(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }


class FakeTwilio(LoopbackServer):
    """Twilio's REST API root (`https://api.twilio.com`) at `url`.

    `senders`, when given, are the only `From` addresses the account owns.
    """

    def __init__(
        self,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        auth_token: str = DEFAULT_AUTH_TOKEN,
        *,
        senders: Iterable[str] | None = None,
        media_auth: bool = True,
    ) -> None:
        super().__init__()
        self.account_sid, self.auth_token = account_sid, auth_token
        self.senders = set(senders) if senders is not None else None
        self.media_auth = media_auth
        self.calls: list[RecordedRequest] = []
        self.failed_calls: list[RecordedRequest] = []
        self.violations: list[ContractViolation] = []
        self.messages: dict[str, dict[str, Any]] = {}
        self.media: dict[str, tuple[str, bytes]] = {}  # path -> (content type, bytes)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._handle)

    # ------------------------------------------------------------------ test helpers

    def rewrite(self, url: str) -> str:
        """`url` on a *.twilio.com host, pointed at this fake instead."""
        return _TWILIO_URL.sub(self.url, url, count=1)

    def sent_messages(self, to: str | None = None) -> list[RecordedRequest]:
        """Accepted message creations, to `to` if given."""
        return [
            c
            for c in self.calls
            if c.method == "POST"
            and c.path.endswith("/Messages.json")
            and to in (None, c.params["To"])
        ]

    def add_media(
        self, data: bytes, content_type: str = "image/jpeg", *, message_sid: str | None = None
    ) -> str:
        """Serve `data` as an inbound message's media; returns its URL as Twilio gives it."""
        path = (
            f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{message_sid or new_sid('MM')}"
            f"/Media/{new_sid('ME')}"
        )
        self.media[path] = (content_type, data)
        return f"https://api.twilio.com{path}"

    def set_status(self, sid: str, status: str, *, error_code: int | None = None) -> None:
        """Move a sent message on, as delivery would."""
        message = self.messages[sid]
        message.update(status=status, error_code=error_code, date_updated=_rfc2822(_now()))

    # ------------------------------------------------------------------ server

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.post() if request.method in ("POST", "PUT") else {}
        form = _multi(body.items())
        query = _multi(request.query.items())
        path, sent = request.path, form if request.method in ("POST", "PUT") else query
        try:
            if fault := self.take_fault():
                raise TwilioError(
                    fault.status, 20000 + fault.status, HTTPStatus(fault.status).phrase
                )
            if request.method == "GET" and _MEDIA_CONTENT.fullmatch(path):
                return self._media_content(path, request.headers.get("Authorization", ""))
            self._authenticate(request.headers.get("Authorization", ""))
            response, status = self._dispatch(request.method, path, query, form)
        except TwilioError as error:
            if error.violation:
                call = f"{request.method} {path}"
                self.violations.append(
                    ContractViolation("twilio", call, (error.message,), _flat(sent))
                )
            self.failed_calls.append(
                RecordedRequest(
                    request.method, path, _flat(sent), error.status, error.body(), time.time()
                )
            )
            return web.json_response(error.body(), status=error.status)
        self.calls.append(
            RecordedRequest(request.method, path, _flat(sent), status, response, time.time())
        )
        if response is None:
            return web.Response(status=status)
        return web.json_response(response, status=status)

    def _media_content(self, path: str, authorization: str) -> web.Response:
        """Media bytes at the Media resource's path without `.json`, as MediaUrlN give it."""
        check = check_twilio_call("GET", f"{path}.json", {}, {})
        if check.problems:
            raise TwilioError(check.status, 20404, "; ".join(check.problems), violation=True)
        if self.media_auth:
            self._authenticate(authorization)
        if path not in self.media:
            raise TwilioError(404, 20404, f"The requested resource {path} was not found")
        content_type, data = self.media[path]
        self.calls.append(RecordedRequest("GET", path, {}, 200, None, time.time()))
        return web.Response(body=data, content_type=content_type)

    def _authenticate(self, header: str) -> None:
        expected = f"{self.account_sid}:{self.auth_token}".encode()
        scheme, _, credentials = header.partition(" ")
        try:
            valid = scheme.lower() == "basic" and base64.b64decode(credentials) == expected
        except ValueError:
            valid = False
        if not valid:
            raise TwilioError(401, 20003, "Authenticate", violation=True)

    def _dispatch(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        form: dict[str, list[str]],
    ) -> tuple[Any, int]:
        check = check_twilio_call(method, path, query, form)
        if check.problems:
            code = {404: 20404, 405: 20004}.get(check.status, 20001)
            if "missing required parameter 'To'" in check.problems:
                code = 21604
            raise TwilioError(check.status, code, "; ".join(check.problems), violation=True)
        if check.path_params.get("AccountSid") != self.account_sid:
            raise TwilioError(
                404, 20404, f"The requested resource {path} was not found", violation=True
            )
        sid = check.path_params.get("Sid", "")
        if (check.template, method) == (MESSAGES, "POST"):
            return self._create_message(_flat(form)), 201
        if (check.template, method) == (MESSAGES, "GET"):
            return self._list_messages(path, _flat(query)), 200
        if (check.template, method) == (MESSAGE, "GET"):
            return self._message(path, sid), 200
        if (check.template, method) == (MESSAGE, "POST"):
            return self._update_message(path, sid, _flat(form)), 200
        if (check.template, method) == (MESSAGE, "DELETE"):
            del self.messages[self._message(path, sid)["sid"]]
            return None, 204
        raise TwilioError(
            501,
            20501,
            f"{method} {check.template} is not implemented by FakeTwilio",
            violation=True,
        )

    def _message(self, path: str, sid: str) -> dict[str, Any]:
        if sid not in self.messages:
            raise TwilioError(404, 20404, f"The requested resource {path} was not found")
        return self.messages[sid]

    def _create_message(self, form: dict[str, Any]) -> dict[str, Any]:
        to, sender = form["To"], form.get("From")
        body, media = form.get("Body"), form.get("MediaUrl", [])
        content_sid, variables = form.get("ContentSid"), form.get("ContentVariables")
        if sender is None and "MessagingServiceSid" not in form:
            raise _refused(21603, "A 'From' phone number is required.")
        if not (body or media or content_sid):
            raise _refused(21619, "A text message body or media URL must be specified.")
        if sender is not None and to.startswith("whatsapp:") != sender.startswith("whatsapp:"):
            raise _refused(
                21910, "Invalid From and To pair. From and To should be of the same channel"
            )
        if not _E164.fullmatch(to.removeprefix("whatsapp:")):
            raise _refused(21211, f"Invalid 'To' Phone Number: {to}")
        if sender is not None and not _E164.fullmatch(sender.removeprefix("whatsapp:")):
            raise _refused(21212, f"Invalid From Number (caller ID): {sender}")
        if body is not None and len(body) > 1600:
            raise _refused(21617, "The concatenated message body exceeds the 1600 character limit.")
        if variables is not None and (content_sid is None or not _valid_variables(variables)):
            raise _refused(21656, "The ContentVariables Parameter is invalid.")
        callback = form.get("StatusCallback")
        if callback is not None and urlsplit(callback).scheme not in ("http", "https"):
            raise _refused(21609, f"Invalid StatusCallback url: {callback}")
        if self.senders is not None and sender is not None and sender not in self.senders:
            reason = "Twilio could not find a Channel with the specified From address"
            raise TwilioError(400, 63007, reason)  # the account's set-up, not the contract
        sid, now = new_sid("MM" if media else "SM"), _rfc2822(_now())
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}.json"
        message = {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": body or "",
            "date_created": now,
            "date_sent": now,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": sender,
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "num_media": str(len(media)),
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued" if sender else "accepted",
            "subresource_uris": {"media": uri.replace(".json", "/Media.json")},
            "to": to,
            "uri": uri,
        }
        self.messages[sid] = message
        return message

    def _update_message(self, path: str, sid: str, form: dict[str, Any]) -> dict[str, Any]:
        message = self._message(path, sid)
        if form.get("Body", "") != "":
            raise _refused(20001, "Body can only be redacted to an empty string")
        if "Status" in form and message["status"] != "scheduled":
            raise TwilioError(400, 30409, "Only a scheduled message can be canceled")
        if "Body" in form:
            message["body"] = ""
        if "Status" in form:
            message["status"] = "canceled"
        message["date_updated"] = _rfc2822(_now())
        return message

    def _list_messages(self, path: str, query: dict[str, Any]) -> dict[str, Any]:
        found = [
            m
            for m in reversed(self.messages.values())  # newest first, as Twilio lists
            if query.get("To", m["to"]) == m["to"]
            and query.get("From", m["from"]) == m["from"]
            and _sent_on(m, query)
        ]
        size, page = int(query.get("PageSize", 50)), int(query.get("Page", 0))
        filters = {k: v for k, v in query.items() if k not in ("PageSize", "Page", "PageToken")}

        def page_uri(number: int) -> str:
            return f"{path}?{urlencode(filters | {'PageSize': size, 'Page': number})}"

        more = len(found) > (page + 1) * size
        return {
            "messages": found[page * size : (page + 1) * size],
            "end": min(len(found), (page + 1) * size) - 1,
            "first_page_uri": page_uri(0),
            "next_page_uri": f"{page_uri(page + 1)}&PageToken=PA{page + 1}" if more else None,
            "page": page,
            "page_size": size,
            "previous_page_uri": page_uri(page - 1) if page else None,
            "start": page * size,
            "uri": page_uri(page),
        }


# ---------------------------------------------------------------------- helpers


class RewritingTwilioHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """Sends the twilio client's calls for *.twilio.com to `base_url` (tests only)."""

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base_url = base_url.rstrip("/")

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        if auth is not None:  # the same header, without aiohttp 3.14's deprecated auth=
            headers = {**(headers or {}), "Authorization": encode_basic_auth(*auth)}
        url = _TWILIO_URL.sub(self.base_url, url, count=1)
        return await super().request(
            method, url, params, data, headers, None, timeout, allow_redirects
        )


def sign_twilio_request(auth_token: str, url: str, params: Mapping[str, Any]) -> str:
    """The `X-Twilio-Signature` Twilio sends with a POST of `params` to `url`."""
    return str(RequestValidator(auth_token).compute_signature(url, dict(params)))


def inbound_whatsapp_form(
    *,
    from_: str,
    to: str,
    body: str = "",
    account_sid: str = DEFAULT_ACCOUNT_SID,
    message_sid: str | None = None,
    profile_name: str = "Test Customer",
    media: Sequence[tuple[str, str]] = (),
    button_text: str | None = None,
    button_payload: str | None = None,
    replied_message_sid: str | None = None,
) -> dict[str, str]:
    """The form Twilio posts to the incoming-message webhook for a WhatsApp message.

    `media` holds (url, content type) pairs, e.g. from `FakeTwilio.add_media`.
    """
    from_, to = _whatsapp(from_), _whatsapp(to)
    written(body)
    sid = message_sid or new_sid("MM" if media else "SM")
    if button_payload is not None:
        kind = "button"
    elif media:
        kind = {"image": "image", "audio": "audio", "video": "video"}.get(
            media[0][1].split("/")[0], "document"
        )
    else:
        kind = "text"
    form = {
        "SmsMessageSid": sid,
        "NumMedia": str(len(media)),
        "ProfileName": profile_name,
        "MessageType": kind,
        "SmsSid": sid,
        "WaId": from_.removeprefix("whatsapp:+"),
        "SmsStatus": "received",
        "Body": body,
        "To": to,
        "NumSegments": "1",
        "ReferralNumMedia": "0",
        "MessageSid": sid,
        "AccountSid": account_sid,
        "From": from_,
        "ApiVersion": API_VERSION,
    }
    for i, (url, content_type) in enumerate(media):
        form[f"MediaContentType{i}"] = content_type
        form[f"MediaUrl{i}"] = url
    if button_payload is not None:
        form |= {"ButtonText": button_text or button_payload, "ButtonPayload": button_payload}
    if replied_message_sid is not None:
        form["OriginalRepliedMessageSid"] = replied_message_sid
    return form


def whatsapp_status_form(
    *,
    message_sid: str,
    status: str,
    from_: str,
    to: str,
    account_sid: str = DEFAULT_ACCOUNT_SID,
    error_code: int | None = None,
) -> dict[str, str]:
    """The form Twilio posts to a message's StatusCallback when its status changes."""
    from_, to = _whatsapp(from_), _whatsapp(to)
    form = {
        "ChannelPrefix": "whatsapp",
        "ApiVersion": API_VERSION,
        "MessageStatus": status,
        "SmsSid": message_sid,
        "SmsStatus": status,
        "ChannelInstallSid": new_sid("XE"),
        "ChannelToAddress": to.removeprefix("whatsapp:"),
        "To": to,
        "From": from_,
        "MessageSid": message_sid,
        "StructuredMessage": "false",
        "AccountSid": account_sid,
    }
    if error_code is not None:
        form["ErrorCode"] = str(error_code)
    return form


def _refused(code: int, message: str) -> TwilioError:
    """A 400 answer to a call that breaks Twilio's published rules."""
    return TwilioError(400, code, message, violation=True)


def _whatsapp(address: str) -> str:
    return address if address.startswith("whatsapp:") else f"whatsapp:{address}"


def _multi(items: Iterable[tuple[str, Any]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, value in items:
        grouped.setdefault(name, []).append(str(value))
    return grouped


def _flat(values: Mapping[str, list[str]]) -> dict[str, Any]:
    """One value per name, except lists for the parameters Twilio takes several times."""
    return {k: v if k in ("MediaUrl", "PersistentAction") else v[-1] for k, v in values.items()}


def _valid_variables(raw: str) -> bool:
    try:
        variables = json.loads(raw)
    except ValueError:
        return False
    return isinstance(variables, dict) and all(isinstance(v, str) for v in variables.values())


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _rfc2822(moment: datetime) -> str:
    return format_datetime(moment)


def _sent_on(message: dict[str, Any], query: Mapping[str, str]) -> bool:
    sent = parsedate_to_datetime(message["date_sent"]).date()
    tests = {"DateSent": sent.__eq__, "DateSent<": sent.__le__, "DateSent>": sent.__ge__}
    return all(test(date.fromisoformat(query[k][:10])) for k, test in tests.items() if k in query)
