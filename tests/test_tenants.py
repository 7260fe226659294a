"""Tenant policy files: the shipped ones load as the policies say; bad ones are named exactly."""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from bot.clock import Duration, Unit, parse_duration
from bot.tenants import ConfigProblem, Tenant, TenantConfigError, Tenants, load_tenants
from storage.enums import RequestType

SHIPPED = Path(__file__).resolve().parent.parent / "config" / "tenants"

VALID = """\
name = "Acme Optics"
ref_prefix = "AC"
timezone = "Asia/Karachi"
calendar = "PK"
languages = ["en", "ur"]
privacy_email = "privacy@acme.example"
clock_starts = "received"
unverified_expire_after = "14 days"

[channels]
whatsapp_numbers = ["+14155550100"]
telegram_start = "acme"
staff_chat_id = -1001
staff_user_ids = [11, 12]
admin_user_ids = [11]

[requests]
access = "7 business days"
erasure = "1 month"
marketing_opt_out = "immediate"

[reminders]
before = ["2 business days", "4 hours"]
overdue_every = "1 day"

[whatsapp_templates]
update = "HX0123456789abcdef0123456789abcdef"
"""


def write(directory: Path, name: str, text: str) -> Path:
    """Write one tenant file and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def variant(old: str, new: str, text: str = VALID) -> str:
    """VALID with one exact fragment replaced (fails loudly if the fragment is not there)."""
    assert old in text, old
    return text.replace(old, new, 1)


def other_tenant(text: str = VALID) -> str:
    """A second valid tenant that claims nothing the first one claims."""
    text = variant('ref_prefix = "AC"', 'ref_prefix = "BX"', text)
    text = variant('"+14155550100"', '"+14155550101"', text)
    text = variant('telegram_start = "acme"', 'telegram_start = "bx"', text)
    return variant("staff_chat_id = -1001", "staff_chat_id = -1002", text)


def problems_of(directory: Path) -> tuple[ConfigProblem, ...]:
    """Load `directory`, expecting it to fail, and return what was reported."""
    with pytest.raises(TenantConfigError) as caught:
        load_tenants(directory)
    assert str(caught.value), "the error message must not be empty"
    return caught.value.problems


def only_problem(directory: Path) -> ConfigProblem:
    """The single problem reported for `directory`."""
    problems = problems_of(directory)
    assert len(problems) == 1, problems
    return problems[0]


# --- the shipped policies -----------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> Tenants:
    return load_tenants(SHIPPED)


def test_one_policy_file_per_seed_business(shipped: Tenants) -> None:
    assert set(shipped.slugs) == {"optician-dynamics", "jooptics", "optimizory"}
    assert len(shipped) == 3
    assert {tenant.name for tenant in shipped} == {"Optician Dynamics", "Jooptics", "Optimizory"}


def test_optician_dynamics_answers_every_right_in_seven_business_days(shipped: Tenants) -> None:
    tenant = shipped.by_slug("optician-dynamics")
    seven = Duration(7, Unit.BUSINESS_DAYS)
    assert dict(tenant.requests) == {
        RequestType.ACCESS: seven,
        RequestType.RECTIFICATION: seven,
        RequestType.ERASURE: seven,
        RequestType.OBJECTION: seven,
        RequestType.RESTRICTION: seven,
        RequestType.PORTABILITY: seven,
        RequestType.COOKIE_OPT_OUT: seven,
        RequestType.MARKETING_OPT_OUT: Duration(0, Unit.IMMEDIATE),
    }
    assert (tenant.timezone, tenant.calendar, tenant.languages) == (
        "Asia/Karachi",
        "PK",
        ("en", "ur", "ar"),
    )
    assert tenant.clock_starts == "received"
    assert not tenant.extensions.allowed, "the policy promises 7 business days, no extension"
    assert tenant.regulator is None


def test_jooptics_follows_the_jordanian_default(shipped: Tenants) -> None:
    tenant = shipped.by_slug("jooptics")
    month = Duration(30, Unit.DAYS)
    for kind in (
        RequestType.ACCESS,
        RequestType.RECTIFICATION,
        RequestType.ERASURE,
        RequestType.PORTABILITY,
        RequestType.OBJECTION,
        RequestType.CONSENT_WITHDRAWAL,
        RequestType.COMPLAINT,
    ):
        assert tenant.deadline_for(kind) == month, kind
    assert not tenant.offers(RequestType.RESTRICTION)
    assert not tenant.offers(RequestType.COOKIE_OPT_OUT)
    assert tenant.privacy_email == "jooptics.com@gmail.com"
    assert (tenant.timezone, tenant.calendar) == ("Asia/Amman", "JO")
    assert tenant.regulator is not None and "Digital Economy" in tenant.regulator.name


def test_optimizory_uses_45_days_extendable_to_90(shipped: Tenants) -> None:
    tenant = shipped.by_slug("optimizory")
    assert tenant.deadline_for(RequestType.ACCESS) == Duration(45, Unit.DAYS)
    assert tenant.deadline_for(RequestType.ERASURE) == Duration(45, Unit.DAYS)
    assert tenant.deadline_for(RequestType.COMPLAINT) == Duration(45, Unit.DAYS)
    assert tenant.deadline_for(RequestType.CONSENT_WITHDRAWAL) == Duration(15, Unit.BUSINESS_DAYS)
    assert tenant.deadline_for(RequestType.PORTABILITY) is None
    assert tenant.extensions.max == Duration(45, Unit.DAYS)
    assert tenant.privacy_email == "data.protection@optimizory.com"
    assert (tenant.timezone, tenant.calendar, tenant.languages) == ("Asia/Kolkata", "IN", ("en",))


def test_shipped_channels_are_distinct_and_reachable(shipped: Tenants) -> None:
    numbers = [n for tenant in shipped for n in tenant.channels.whatsapp_numbers]
    chats = [tenant.channels.staff_chat_id for tenant in shipped]
    assert len(numbers) == len(set(numbers)) == 3
    assert len(set(chats)) == 3 and all(chat is not None and chat < 0 for chat in chats)
    for tenant in shipped:
        for number in tenant.channels.whatsapp_numbers:
            assert shipped.for_whatsapp_number(f"whatsapp:{number}") is tenant
        assert shipped.for_telegram_start(tenant.channels.telegram_start) is tenant


def _hours(duration: Duration, *, business_day: int) -> int:
    """Rough length in hours; a business day counts as `business_day` hours."""
    per_unit = {
        Unit.IMMEDIATE: 0,
        Unit.SECONDS: 0,
        Unit.MINUTES: 0,
        Unit.HOURS: 1,
        Unit.DAYS: 24,
        Unit.BUSINESS_DAYS: business_day,
        Unit.MONTHS: 28 * 24,
    }
    return duration.amount * per_unit[duration.unit]


def test_shipped_reminders_come_before_every_deadline(shipped: Tenants) -> None:
    for tenant in shipped:
        deadlines = [d for d in tenant.requests.values() if not d.is_immediate]
        for reminder in tenant.reminders.before:
            for deadline in deadlines:
                if reminder.unit is deadline.unit:
                    assert reminder.amount < deadline.amount, (tenant.slug, reminder, deadline)
                else:  # a business day lasts at least one day and rarely more than two
                    longest = _hours(reminder, business_day=48)
                    assert longest < _hours(deadline, business_day=24), (tenant.slug, reminder)


def test_every_shipped_right_is_traced_to_a_comment() -> None:
    for path in sorted(SHIPPED.glob("*.toml")):
        lines = path.read_text(encoding="utf-8").splitlines()
        start = lines.index("[requests]")
        end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("["))
        entry = re.compile(r"^([a-z_]+)\s*=")
        for number in range(start + 1, end):
            line = lines[number]
            if not entry.match(line) or "#" in line:
                continue
            above = number - 1
            while entry.match(lines[above]) and "#" not in lines[above]:
                above -= 1
            assert lines[above].lstrip().startswith("#") or "#" in lines[above], (
                f"{path.name}: {line!r} has no comment tracing it to the policy or the law"
            )


# --- the Tenant and Tenants API -------------------------------------------------------


def test_tenant_helpers(tmp_path: Path) -> None:
    write(tmp_path, "acme.toml", VALID)
    tenants = load_tenants(tmp_path)
    tenant = tenants.by_slug("acme")
    assert tenant.slug == "acme"
    assert tenant.offers(RequestType.ERASURE)
    assert not tenant.offers(RequestType.RECTIFICATION)
    assert tenant.deadline_for(RequestType.ERASURE) == Duration(1, Unit.MONTHS)
    assert tenant.deadline_for(RequestType.RECTIFICATION) is None
    assert tenant.default_language == "en"
    assert tenant.zone.key == "Asia/Karachi"
    assert dt.date(2026, 8, 14) in tenant.holiday_calendar  # Pakistan's Independence Day
    assert tenant.extensions.max is None and tenant.extensions.notify_requester
    assert tenant.regulator is None and tenant.webhook_url is None
    assert tenant.whatsapp_templates["update"] == "HX0123456789abcdef0123456789abcdef"


def test_lookups(tmp_path: Path) -> None:
    write(tmp_path, "acme.toml", VALID)
    write(tmp_path, "bx.toml", other_tenant())
    tenants = load_tenants(tmp_path)
    assert tenants.slugs == ("acme", "bx")
    assert [tenant.slug for tenant in tenants] == ["acme", "bx"]
    assert "acme" in tenants and "nobody" not in tenants
    assert tenants.for_whatsapp_number("whatsapp:+14155550101") is tenants.by_slug("bx")
    assert tenants.for_whatsapp_number(" +14155550100 ") is tenants.by_slug("acme")
    assert tenants.for_whatsapp_number("WhatsApp:+14155550100") is tenants.by_slug("acme")
    assert tenants.for_whatsapp_number("whatsapp:+19999999999") is None
    assert tenants.for_telegram_start("bx") is tenants.by_slug("bx")
    assert tenants.for_telegram_start("BX") is None
    with pytest.raises(KeyError, match="nobody"):
        tenants.by_slug("nobody")


def test_a_loaded_policy_cannot_change(tmp_path: Path) -> None:
    write(tmp_path, "acme.toml", VALID)
    tenant = load_tenants(tmp_path).by_slug("acme")
    with pytest.raises(ValidationError):
        tenant.ref_prefix = "ZZ"  # type: ignore[misc]
    with pytest.raises(TypeError):
        tenant.requests[RequestType.ACCESS] = Duration(1, Unit.DAYS)  # type: ignore[index]
    assert tenant.requests[RequestType.ACCESS] == Duration(7, Unit.BUSINESS_DAYS)


def test_a_policy_survives_a_json_dump(tmp_path: Path) -> None:
    write(tmp_path, "acme.toml", VALID)
    tenant = load_tenants(tmp_path).by_slug("acme")
    dumped = tenant.model_dump(mode="json")
    assert dumped["requests"] == {
        "access": "7 business days",
        "erasure": "1 month",
        "marketing_opt_out": "immediate",
    }
    assert dumped["reminders"] == {
        "before": ["2 business days", "4 hours"],
        "overdue_every": "1 day",
    }
    assert Tenant.model_validate(dumped) == tenant


@given(
    amount=st.integers(min_value=1, max_value=999_999),
    unit=st.sampled_from([u for u in Unit if u is not Unit.IMMEDIATE]),
)
def test_any_duration_written_in_a_file_reads_back(amount: int, unit: Unit) -> None:
    duration = Duration(amount, unit)
    text = variant('access = "7 business days"', f'access = "{duration}"')
    tenant = Tenant.model_validate({**tomllib.loads(text), "slug": "acme"})
    assert tenant.deadline_for(RequestType.ACCESS) == duration == parse_duration(str(duration))


def test_tenants_refuses_two_tenants_on_one_number(tmp_path: Path) -> None:
    write(tmp_path / "a", "acme.toml", VALID)
    write(tmp_path / "b", "bx.toml", variant('telegram_start = "acme"', 'telegram_start = "b"'))
    first = load_tenants(tmp_path / "a").by_slug("acme")
    second = load_tenants(tmp_path / "b").by_slug("bx")
    with pytest.raises(ValueError, match=r"\+14155550100"):
        Tenants([first, second])


# --- every class of error names the file and the key ---------------------------------


@pytest.mark.parametrize(
    ("old", "new", "key", "reason"),
    [
        pytest.param(
            'erasure = "1 month"',
            'erase = "1 month"',
            "requests.erase",
            "unknown request type 'erase'",
            id="unknown-request-type",
        ),
        pytest.param(
            'access = "7 business days"',
            'access = "a fortnight"',
            "requests.access",
            "'a fortnight' is not a duration",
            id="bad-duration",
        ),
        pytest.param(
            'access = "7 business days"',
            "access = 7",
            "requests.access",
            "expected a duration string",
            id="duration-not-a-string",
        ),
        pytest.param(
            'overdue_every = "1 day"',
            'overdue_every = "immediate"',
            "reminders.overdue_every",
            "'immediate' is not allowed",
            id="immediate-interval",
        ),
        pytest.param(
            'calendar = "PK"',
            'calendar = "XX"',
            "calendar",
            "'XX' is not a country code the holidays package supports",
            id="unknown-holiday-country",
        ),
        pytest.param(
            'calendar = "PK"',
            'calendar = "pk"',
            "calendar",
            "'pk' is not a country code",
            id="lower-case-country",
        ),
        pytest.param(
            'timezone = "Asia/Karachi"',
            'timezone = "Asia/Lahore"',
            "timezone",
            "'Asia/Lahore' is not a known IANA time zone",
            id="bad-timezone",
        ),
        pytest.param(
            'timezone = "Asia/Karachi"',
            'timezone = "../../etc/passwd"',
            "timezone",
            "is not a known IANA time zone",
            id="timezone-path",
        ),
        pytest.param(
            'update = "HX0123456789abcdef0123456789abcdef"',
            'update = "HX0123"',
            "whatsapp_templates.update",
            "not a Twilio Content SID",
            id="bad-template-sid",
        ),
        pytest.param(
            'update = "HX0123456789abcdef0123456789abcdef"',
            'update = "MG0123456789abcdef0123456789abcdef"',
            "whatsapp_templates.update",
            "not a Twilio Content SID",
            id="messaging-sid-not-content-sid",
        ),
        pytest.param(
            'name = "Acme Optics"',
            'name = "Acme Optics"\nfavourite_colour = "blue"',
            "favourite_colour",
            "unknown key",
            id="unknown-top-level-key",
        ),
        pytest.param(
            'telegram_start = "acme"',
            'telegram_start = "acme"\nwhatsap_numbers = []',
            "channels.whatsap_numbers",
            "unknown key",
            id="unknown-nested-key",
        ),
        pytest.param(
            'privacy_email = "privacy@acme.example"\n',
            "",
            "privacy_email",
            "required key is missing",
            id="missing-key",
        ),
        pytest.param(
            '["+14155550100"]',
            '["+14155550100", "0300 1234567"]',
            "channels.whatsapp_numbers[1]",
            "'0300 1234567' is not an E.164 phone number",
            id="bad-whatsapp-number",
        ),
        pytest.param(
            '["+14155550100"]',
            '["+14155550100", "+14155550100"]',
            "channels.whatsapp_numbers",
            "listed twice",
            id="number-twice-in-one-file",
        ),
        pytest.param(
            'telegram_start = "acme"',
            'telegram_start = "acme optics"',
            "channels.telegram_start",
            "not a Telegram start parameter",
            id="bad-start-parameter",
        ),
        pytest.param(
            "staff_chat_id = -1001",
            "staff_chat_id = 1001",
            "channels.staff_chat_id",
            "not a Telegram group chat id",
            id="positive-staff-chat",
        ),
        pytest.param(
            'ref_prefix = "AC"',
            'ref_prefix = "acme-optics"',
            "ref_prefix",
            "not a reference prefix",
            id="bad-ref-prefix",
        ),
        pytest.param(
            'languages = ["en", "ur"]',
            'languages = ["en", "fr"]',
            "languages[1]",
            "'fr'",
            id="unsupported-language",
        ),
        pytest.param(
            'languages = ["en", "ur"]',
            "languages = []",
            "languages",
            "at least one",
            id="no-language",
        ),
        pytest.param(
            'clock_starts = "received"',
            'clock_starts = "sometime"',
            "clock_starts",
            "'sometime'",
            id="bad-clock-start",
        ),
        pytest.param(
            'clock_starts = "received"',
            'clock_starts = "received"\npause_while_awaiting_requester = "yes"',
            "pause_while_awaiting_requester",
            "expected true or false",
            id="string-for-bool",
        ),
        pytest.param(
            'access = "7 business days"\nerasure = "1 month"\nmarketing_opt_out = "immediate"\n',
            "",
            "requests",
            "at least one request type",
            id="no-request-types",
        ),
        pytest.param(
            "[reminders]",
            '[regulator]\nurl = "https://authority.example"\n\n[reminders]',
            "regulator.name",
            "required key is missing",
            id="regulator-without-name",
        ),
        pytest.param(
            'clock_starts = "received"',
            'clock_starts = "received"\nwebhook_url = "ftp://acme.example/hook"',
            "webhook_url",
            "not an http(s) URL",
            id="bad-webhook-url",
        ),
        pytest.param(
            "[reminders]",
            '[extensions]\nmax = "2 months"\nnotify_requester = "no"\n\n[reminders]',
            "extensions.notify_requester",
            "expected true or false",
            id="bad-extension-flag",
        ),
        pytest.param(
            'name = "Acme Optics"',
            'name = "Acme Optics"\nslug = "other"',
            "slug",
            "the slug is the file name",
            id="slug-in-file",
        ),
    ],
)
def test_a_bad_value_is_reported_with_file_and_key(
    tmp_path: Path, old: str, new: str, key: str, reason: str
) -> None:
    path = write(tmp_path, "acme.toml", variant(old, new))
    problem = only_problem(tmp_path)
    assert problem.file == path
    assert problem.key == key
    assert reason in problem.reason
    assert str(path) in str(problem) and key in str(problem)


def test_a_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    broken = variant('calendar = "PK"', 'calendar = "PK', VALID)  # line 4: unterminated string
    path = write(tmp_path, "acme.toml", broken)
    problem = only_problem(tmp_path)
    assert problem.file == path
    assert problem.line == 4
    assert "TOML syntax error at line 4" in problem.reason
    assert str(problem).startswith(f"{path}:4: ")


def test_a_table_declared_twice_is_a_syntax_error(tmp_path: Path) -> None:
    write(tmp_path, "acme.toml", VALID + "\n[channels]\n")
    problem = only_problem(tmp_path)
    assert problem.line == VALID.count("\n") + 2
    assert "TOML syntax error" in problem.reason


def test_a_file_that_is_not_utf8_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "acme.toml"
    path.write_bytes(b'name = "\xff"\n')
    problem = only_problem(tmp_path)
    assert problem.file == path
    assert "cannot read" in problem.reason


def test_a_file_name_that_is_not_a_slug_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "Acme_Optics.toml", VALID)
    problem = only_problem(tmp_path)
    assert problem.file == path
    assert "'Acme_Optics' is not a slug" in problem.reason


def test_a_whatsapp_number_claimed_twice_names_both_files(tmp_path: Path) -> None:
    first = write(tmp_path, "acme.toml", VALID)
    second_text = variant('"+14155550101"', '"+14155550199", "+14155550100"', other_tenant())
    second = write(tmp_path, "bx.toml", second_text)
    problem = only_problem(tmp_path)
    assert problem.file == second
    assert problem.key == "channels.whatsapp_numbers[1]"
    assert str(first) in problem.reason and "channels.whatsapp_numbers[0]" in problem.reason
    assert "'+14155550100'" in problem.reason


def test_a_telegram_start_parameter_claimed_twice_names_both_files(tmp_path: Path) -> None:
    first = write(tmp_path, "acme.toml", VALID)
    second = write(
        tmp_path,
        "bx.toml",
        variant('telegram_start = "bx"', 'telegram_start = "acme"', other_tenant()),
    )
    problem = only_problem(tmp_path)
    assert (problem.file, problem.key) == (second, "channels.telegram_start")
    assert str(first) in problem.reason


def test_a_reference_prefix_claimed_twice_names_both_files(tmp_path: Path) -> None:
    first = write(tmp_path, "acme.toml", VALID)
    second = write(
        tmp_path, "bx.toml", variant('ref_prefix = "BX"', 'ref_prefix = "AC"', other_tenant())
    )
    problem = only_problem(tmp_path)
    assert (problem.file, problem.key) == (second, "ref_prefix")
    assert str(first) in problem.reason


def test_a_staff_chat_shared_by_two_tenants_names_both_files(tmp_path: Path) -> None:
    first = write(tmp_path, "acme.toml", VALID)
    second = write(
        tmp_path,
        "bx.toml",
        variant("staff_chat_id = -1002", "staff_chat_id = -1001", other_tenant()),
    )
    problem = only_problem(tmp_path)
    assert (problem.file, problem.key) == (second, "channels.staff_chat_id")
    assert str(first) in problem.reason


def test_every_problem_in_every_file_is_reported_at_once(tmp_path: Path) -> None:
    bad_duration = write(tmp_path, "acme.toml", variant('"1 month"', '"1 fortnight"'))
    bad_country = write(
        tmp_path,
        "bx.toml",
        variant(
            'calendar = "PK"',
            'calendar = "ZZ"',
            variant('timezone = "Asia/Karachi"', 'timezone = "Nowhere"', other_tenant()),
        ),
    )
    broken = write(tmp_path, "cx.toml", "name = \n")
    problems = problems_of(tmp_path)
    reported = {(problem.file, problem.key) for problem in problems}
    assert reported == {
        (bad_duration, "requests.erasure"),
        (bad_country, "timezone"),
        (bad_country, "calendar"),
        (broken, ""),
    }


def test_an_empty_directory_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "README.md", "not a policy")
    problem = only_problem(tmp_path)
    assert problem.file == tmp_path
    assert "no tenant policy files" in problem.reason


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    problem = only_problem(missing)
    assert problem.file == missing
    assert "does not exist" in problem.reason
    assert str(missing) in str(problem)
