"""Loopback fakes of the Telegram Bot API and the Twilio REST API for the project's tests.

Both check every call against the published descriptions in `../shared/contracts`.
"""

from tests.fakes.contracts import ContractViolation, UploadedFile
from tests.fakes.telegram_api import FakeTelegram, RateViolation, RecordedCall
from tests.fakes.twilio_api import (
    FakeTwilio,
    RecordedRequest,
    RewritingTwilioHttpClient,
    inbound_whatsapp_form,
    new_sid,
    sign_twilio_request,
    whatsapp_status_form,
)

__all__ = [
    "ContractViolation",
    "FakeTelegram",
    "FakeTwilio",
    "RateViolation",
    "RecordedCall",
    "RecordedRequest",
    "RewritingTwilioHttpClient",
    "UploadedFile",
    "inbound_whatsapp_form",
    "new_sid",
    "sign_twilio_request",
    "whatsapp_status_form",
]
