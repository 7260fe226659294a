"""Normalisation and intent tables: how customers actually write, in English, Arabic and Urdu."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.understanding import (
    CANCEL_WORDS,
    LANGUAGE_NAMES,
    START_WORDS,
    STOP_WORDS,
    Intent,
    IntentKind,
    classify,
    cookie_categories,
    find_ref,
    normalise,
    normalise_phone,
)
from storage.enums import RequestType

ACCESS = RequestType.ACCESS
RECTIFICATION = RequestType.RECTIFICATION
ERASURE = RequestType.ERASURE
PORTABILITY = RequestType.PORTABILITY
RESTRICTION = RequestType.RESTRICTION
OBJECTION = RequestType.OBJECTION
CONSENT = RequestType.CONSENT_WITHDRAWAL
MARKETING = RequestType.MARKETING_OPT_OUT
COOKIES = RequestType.COOKIE_OPT_OUT
COMPLAINT = RequestType.COMPLAINT


# --- normalise ------------------------------------------------------------------------

NORMALISED = [
    ("  Delete   MY Data!!! 🙏 ", "delete my data"),
    ("STOP.", "stop"),
    ("don't", "dont"),
    ("opt-out", "opt out"),
    ("Straße", "strasse"),
    # Arabic: diacritics, tatweel, alef variants, alef maqsura, teh marbuta, hamza.
    ("أَرِيدُ حَذْفَ بياناتي", "اريد حذف بياناتي"),
    ("احـــذف", "احذف"),
    ("إلغاء", "الغا"),
    ("آسف", "اسف"),
    ("شكوى", "شكوي"),
    ("الشخصية", "الشخصيه"),
    ("رسائل", "رسايل"),
    # Urdu letters fold into their Arabic look-alikes, whichever keyboard was used.
    ("میرا ڈیٹا حذف کریں", "ميرا ڈيٹا حذف كرين"),
    ("ميرا ڈيٹا حذف كريں", "ميرا ڈيٹا حذف كرين"),
    ("شکایت", "شكايت"),
    ("براہِ کرم", "براه كرم"),
    ("رضامندی واپس", "رضامندي واپس"),
    ("بھیجیں", "بهيجين"),
    ("صلوٰۃ", "صلوه"),
    # Digits of every script become ASCII.
    ("١٢٣٤٥٦", "123456"),
    ("۱۲۳۴۵۶", "123456"),
    ("رقم ٣", "رقم 3"),
    # Bidi controls and zero-width joiners vanish; ligature forms unfold.
    ("\u2068OD-2026-00042\u2069", "od 2026 00042"),
    ("ان\u200cسبسکرائب", "انسبسكرايب"),
    ("ﻻ", "لا"),
    ("", ""),
    ("🙂👍", ""),
]


@pytest.mark.parametrize(("text", "expected"), NORMALISED)
def test_normalise(text: str, expected: str) -> None:
    assert normalise(text) == expected


@given(st.text())
def test_normalise_is_idempotent_and_never_raises(text: str) -> None:
    once = normalise(text)
    assert normalise(once) == once
    assert "  " not in once
    assert once == once.strip()


# --- the ten request types, as people write them --------------------------------------

ENGLISH = [
    ("delete my data", ERASURE),
    ("Please erase all my personal information", ERASURE),
    ("I want you to remove me from your database", ERASURE),
    ("pls delte my acount", ERASURE),
    ("right to be forgotten", ERASURE),
    ("close my account and wipe everything you have", ERASURE),
    ("DELETE MY ACCOUNT!!!", ERASURE),
    ("What personal data do you hold about me?", ACCESS),
    ("Send me a copy of my data", ACCESS),
    ("I'd like to make a subject access request", ACCESS),
    ("can i see what info u have on me", ACCESS),
    ("I want a copy of all the informaton you keep about me", ACCESS),
    ("My address is wrong, please correct it", RECTIFICATION),
    ("update my phone number", RECTIFICATION),
    ("my name is spelt wrong on your records", RECTIFICATION),
    ("I need to corect my email adress", RECTIFICATION),
    ("export my data as a csv", PORTABILITY),
    ("transfer my data to another optician", PORTABILITY),
    ("i want to download all my data", PORTABILITY),
    ("Please restrict the processing of my data", RESTRICTION),
    ("limit how you use my information", RESTRICTION),
    ("restirct my data while you check it", RESTRICTION),
    ("I object to you using my data for profiling", OBJECTION),
    ("stop using my data", OBJECTION),
    ("I withdraw my consent", CONSENT),
    ("I no longer give you permission to use my data", CONSENT),
    ("stop sending me promotional messages", MARKETING),
    ("unsubscribe me from your newsletter", MARKETING),
    ("no more marketing emails please", MARKETING),
    ("turn off analytics cookies", COOKIES),
    ("I dont want your website cookies", COOKIES),
    ("I want to complain about how you handled my data", COMPLAINT),
    ("you leaked my data, this is unacceptable", COMPLAINT),
    ("Complaint: my optometrist shared my prescription", COMPLAINT),
    ("i wnat to complane", COMPLAINT),
    # Mixed languages and Roman Urdu, as Pakistani customers often write.
    ("please delete my data بياناتي", ERASURE),
    ("mera data delete kar do", ERASURE),
    ("meri maloomat ki copy chahiye", ACCESS),
    ("Marketing SMS band karo", MARKETING),
    ("mujhe shikayat karni hai", COMPLAINT),
]

ARABIC = [
    ("احذف بياناتي", ERASURE),
    ("أرجو حذف جميع بياناتي الشخصية", ERASURE),
    ("ابغى تمسحون بياناتي", ERASURE),
    ("بدي تشيلوا معلوماتي من عندكم", ERASURE),
    ("امسحو حسابي لو سمحت", ERASURE),
    ("إلغاء حسابي وحذف كل معلوماتي", ERASURE),
    ("حذف البيانات", ERASURE),
    ("احزف بياناتي", ERASURE),
    ("احذفو بيناتي", ERASURE),
    ("أريد نسخة من بياناتي", ACCESS),
    ("ما هي المعلومات التي تحتفظون بها عني؟", ACCESS),
    ("شو البيانات اللي عندكم عني", ACCESS),
    ("ابي اعرف وش عندكم من معلومات عني", ACCESS),
    ("طلب الوصول إلى بياناتي الشخصية", ACCESS),
    ("ابغى اشوف بياناتي", ACCESS),
    ("اسمي مكتوب غلط", RECTIFICATION),
    ("أرجو تصحيح عنواني", RECTIFICATION),
    ("بدي عدل رقم جوالي", RECTIFICATION),
    ("تحديث بريدي الإلكتروني", RECTIFICATION),
    ("انقل بياناتي إلى شركة ثانية", PORTABILITY),
    ("أريد تصدير بياناتي بصيغة قابلة للقراءة آليًا", PORTABILITY),
    ("ابي احمل كل بياناتي", PORTABILITY),
    ("أرجو تقييد معالجة بياناتي", RESTRICTION),
    ("جمدوا بياناتي لحين التحقق", RESTRICTION),
    ("أريد الحد من استخدام بياناتي", RESTRICTION),
    ("أعترض على معالجة بياناتي", OBJECTION),
    ("لا تستخدموا معلوماتي", OBJECTION),
    ("أسحب موافقتي على معالجة بياناتي", CONSENT),
    ("ابي الغي الموافقة اللي عطيتكم", CONSENT),
    ("وقفوا الرسائل التسويقية", MARKETING),
    ("ما ابي اعلانات", MARKETING),
    ("الغاء الاشتراك في العروض", MARKETING),
    ("لا أريد ملفات تعريف الارتباط", COOKIES),
    ("اوقفوا الكوكيز", COOKIES),
    ("عندي شكوى بخصوص بياناتي", COMPLAINT),
    ("أريد أن أشتكي، تم تسريب معلوماتي", COMPLAINT),
    ("please احذف my data", ERASURE),
    ("delete بياناتي please", ERASURE),
]

URDU = [
    ("میرا ڈیٹا حذف کریں", ERASURE),
    ("براہ کرم میری تمام معلومات ڈیلیٹ کر دیں", ERASURE),
    ("میرا اکاؤنٹ ختم کر دیں", ERASURE),
    ("میرا ڈیٹا مٹا دیں", ERASURE),
    ("مجھے اپنے ریکارڈ سے ہٹا دیں", ERASURE),
    ("میری معلومات ڈلیٹ کرو", ERASURE),
    ("میرا ڈیٹہ ڈلیٹ کرو", ERASURE),
    ("آپ کے پاس میرا کیا ڈیٹا ہے؟", ACCESS),
    ("مجھے اپنے ڈیٹا کی کاپی چاہیے", ACCESS),
    ("میں دیکھنا چاہتا ہوں کہ آپ کے پاس میری کون سی معلومات ہیں", ACCESS),
    ("میرے بارے میں جو معلومات ہیں ان تک رسائی چاہیے", ACCESS),
    ("میری معلومات کی کاپی ای میل کر دیں", ACCESS),
    ("میرا نام غلط لکھا ہے", RECTIFICATION),
    ("میرا پتہ تبدیل کرنا ہے", RECTIFICATION),
    ("میرا فون نمبر اپڈیٹ کر دیں", RECTIFICATION),
    ("میری معلومات درست کریں", RECTIFICATION),
    ("میرا ڈیٹا دوسری کمپنی کو منتقل کریں", PORTABILITY),
    ("مجھے اپنا سارا ڈیٹا ڈاؤن لوڈ کرنا ہے", PORTABILITY),
    ("ڈیٹا پورٹیبلٹی کی درخواست", PORTABILITY),
    ("میرے ڈیٹا کا استعمال محدود کریں", RESTRICTION),
    ("فی الحال میرے ڈیٹا کے استعمال پر پابندی لگائیں", RESTRICTION),
    ("مجھے اعتراض ہے کہ آپ میرا ڈیٹا استعمال کرتے ہیں", OBJECTION),
    ("میرا ڈیٹا استعمال نہ کریں", OBJECTION),
    ("میں اپنی رضامندی واپس لیتا ہوں", CONSENT),
    ("میں نے جو اجازت دی تھی وہ واپس لینا چاہتا ہوں", CONSENT),
    ("مارکیٹنگ کے میسج بند کریں", MARKETING),
    ("مجھے اشتہار والے پیغامات نہ بھیجیں", MARKETING),
    ("پروموشنل ایس ایم ایس بند کرو", MARKETING),
    ("ویب سائٹ پر کوکیز بند کریں", COOKIES),
    ("میں کوکیز کی اجازت نہیں دیتا", COOKIES),
    ("مجھے شکایت درج کرانی ہے", COMPLAINT),
    ("آپ نے میرا ڈیٹا لیک کیا، میں شکایت کرنا چاہتا ہوں", COMPLAINT),
    ("میرا data delete کر دیں", ERASURE),
    ("please میری معلومات حذف کر دیں", ERASURE),
    ("میرا ڈیٹا ڈیلیٹ کریں plz", ERASURE),
    # Typed on an Arabic keyboard: ك and ي for ک and ی.
    ("ميرا ڈيٹا حذف كريں", ERASURE),
]


@pytest.mark.parametrize(("text", "kind"), ENGLISH)
def test_english_requests(text: str, kind: RequestType) -> None:
    assert classify(text) == Intent(IntentKind.REQUEST, request=kind)


@pytest.mark.parametrize(("text", "kind"), ARABIC)
def test_arabic_requests(text: str, kind: RequestType) -> None:
    assert classify(text) == Intent(IntentKind.REQUEST, request=kind)


@pytest.mark.parametrize(("text", "kind"), URDU)
def test_urdu_requests(text: str, kind: RequestType) -> None:
    assert classify(text) == Intent(IntentKind.REQUEST, request=kind)


def test_every_type_in_every_language() -> None:
    for table in (ENGLISH, ARABIC, URDU):
        assert len(table) >= 30
        assert {kind for _, kind in table} == set(RequestType)


# Things customers of an optician write that are not privacy requests.
NOT_REQUESTS = [
    "what time do you open?",
    "I want to buy new glasses",
    "how much are contact lenses",
    "my order hasn't arrived yet",
    "can I change my appointment to Friday",
    "is this the right number for the shop?",
    "do you have an eye test available tomorrow",
    "where is your branch in Lahore",
    "send me the price list",
    "what information do you need for my booking",
    "the date on my receipt",
    "I need an expert opinion on my prescription",
    "كم سعر النظارة؟",
    "متى تفتحون؟",
    "ابغى احجز موعد فحص نظر",
    "وين فرعكم في عمان",
    "هل عندكم عدسات لاصقة",
    "طلبي ما وصل لليوم",
    "بدي غير موعدي",
    "عینک کی قیمت کیا ہے؟",
    "آپ کی دکان کب کھلتی ہے؟",
    "میرا آرڈر کہاں ہے",
    "مجھے نئی عینک چاہیے",
    "کیا آج آنکھوں کا معائنہ ہو سکتا ہے",
    "لاہور میں آپ کی برانچ کہاں ہے",
    "میں اپنی اپائنٹمنٹ تبدیل کرنا چاہتا ہوں",
    "my data",
    "بياناتي",
    "asdfgh",
    "🙂",
]


@pytest.mark.parametrize("text", NOT_REQUESTS)
def test_not_a_request(text: str) -> None:
    assert classify(text).kind is not IntentKind.REQUEST


# --- commands and answers -------------------------------------------------------------

COMMANDS = [
    # yes / no, in every language, with politeness and emoji
    ("yes", Intent(IntentKind.YES)),
    ("Yes please", Intent(IntentKind.YES)),
    ("yep that's right", Intent(IntentKind.YES)),
    ("ok", Intent(IntentKind.YES)),
    ("👍", Intent(IntentKind.YES)),
    ("نعم", Intent(IntentKind.YES)),
    ("ايوه صح", Intent(IntentKind.YES)),
    ("اكيد", Intent(IntentKind.YES)),
    ("ہاں", Intent(IntentKind.YES)),
    ("جی ہاں", Intent(IntentKind.YES)),
    ("ٹھیک ہے", Intent(IntentKind.YES)),
    ("haan ji", Intent(IntentKind.YES)),
    ("no", Intent(IntentKind.NO)),
    ("No, that's wrong", Intent(IntentKind.NO)),
    ("nope", Intent(IntentKind.NO)),
    ("لا", Intent(IntentKind.NO)),
    ("لأ", Intent(IntentKind.NO)),
    ("مش صحيح", Intent(IntentKind.NO)),
    ("نہیں", Intent(IntentKind.NO)),
    ("جی نہیں", Intent(IntentKind.NO)),
    ("nahi", Intent(IntentKind.NO)),
    ("👎", Intent(IntentKind.NO)),
    # opt-out and opt-in keywords
    ("STOP", Intent(IntentKind.STOP)),
    ("stop please", Intent(IntentKind.STOP)),
    ("Unsubscribe", Intent(IntentKind.STOP)),
    ("STOPALL", Intent(IntentKind.STOP)),
    ("/stop", Intent(IntentKind.STOP)),
    ("إيقاف", Intent(IntentKind.STOP)),
    ("إلغاء الاشتراك", Intent(IntentKind.STOP)),
    ("بند کریں", Intent(IntentKind.STOP)),
    ("ان سبسکرائب", Intent(IntentKind.STOP)),
    ("START", Intent(IntentKind.START)),
    ("unstop", Intent(IntentKind.START)),
    ("شروع کریں", Intent(IntentKind.START)),
    # cancel is a dialogue command, not an opt-out
    ("cancel", Intent(IntentKind.CANCEL)),
    ("Cancle", Intent(IntentKind.CANCEL)),
    ("cancel please", Intent(IntentKind.CANCEL)),
    ("إلغاء", Intent(IntentKind.CANCEL)),
    ("كنسل", Intent(IntentKind.CANCEL)),
    ("منسوخ کریں", Intent(IntentKind.CANCEL)),
    ("cancel OD-2026-00042", Intent(IntentKind.CANCEL, ref="OD-2026-00042")),
    ("please cancel my request od-2026-00042", Intent(IntentKind.CANCEL, ref="OD-2026-00042")),
    ("withdraw JOO-2026-12345", Intent(IntentKind.CANCEL, ref="JOO-2026-12345")),
    ("إلغاء الطلب OD-٢٠٢٦-٠٠٠٤٢", Intent(IntentKind.CANCEL, ref="OD-2026-00042")),
    ("درخواست OD-2026-00042 منسوخ کر دیں", Intent(IntentKind.CANCEL, ref="OD-2026-00042")),
    ("/cancel OD-2026-00042", Intent(IntentKind.CANCEL, ref="OD-2026-00042")),
    # menu, help, greetings, Telegram's /start (a greeting, never an opt-in)
    ("hi", Intent(IntentKind.MENU)),
    ("Hello!", Intent(IntentKind.MENU)),
    ("menu", Intent(IntentKind.MENU)),
    ("help", Intent(IntentKind.MENU)),
    ("/start", Intent(IntentKind.MENU)),
    ("/start optician-dynamics", Intent(IntentKind.MENU)),
    ("السلام عليكم", Intent(IntentKind.MENU)),
    ("مرحبا", Intent(IntentKind.MENU)),
    ("القائمة", Intent(IntentKind.MENU)),
    ("السلام علیکم", Intent(IntentKind.MENU)),
    ("مدد", Intent(IntentKind.MENU)),
    ("aoa", Intent(IntentKind.MENU)),
    # status
    ("status", Intent(IntentKind.STATUS)),
    ("what's the status of my request?", Intent(IntentKind.STATUS)),
    ("حالة طلبي", Intent(IntentKind.STATUS)),
    ("الحالة", Intent(IntentKind.STATUS)),
    ("میری درخواست کا اسٹیٹس", Intent(IntentKind.STATUS)),
    ("صورتحال", Intent(IntentKind.STATUS)),
    # language
    ("language", Intent(IntentKind.LANGUAGE)),
    ("language urdu", Intent(IntentKind.LANGUAGE, language="ur")),
    ("change language to English", Intent(IntentKind.LANGUAGE, language="en")),
    ("لغة", Intent(IntentKind.LANGUAGE)),
    ("اللغة العربية", Intent(IntentKind.LANGUAGE, language="ar")),
    ("بالعربي", Intent(IntentKind.LANGUAGE, language="ar")),
    ("زبان", Intent(IntentKind.LANGUAGE)),
    ("زبان اردو", Intent(IntentKind.LANGUAGE, language="ur")),
    ("اردو", Intent(IntentKind.LANGUAGE, language="ur")),
    ("English please", Intent(IntentKind.LANGUAGE, language="en")),
    # numbers, codes, email addresses
    ("2", Intent(IntentKind.NUMBER, number=2)),
    ("٣", Intent(IntentKind.NUMBER, number=3)),
    ("۴", Intent(IntentKind.NUMBER, number=4)),
    ("option 5", Intent(IntentKind.NUMBER, number=5)),
    ("رقم ٦", Intent(IntentKind.NUMBER, number=6)),
    ("10.", Intent(IntentKind.NUMBER, number=10)),
    ("123456", Intent(IntentKind.CODE, code="123456")),
    ("123 456", Intent(IntentKind.CODE, code="123456")),
    ("١٢٣٤٥٦", Intent(IntentKind.CODE, code="123456")),
    ("۰۱۲۳۴۵", Intent(IntentKind.CODE, code="012345")),
    ("ali@example.com", Intent(IntentKind.EMAIL, email="ali@example.com")),
    ("my email is Sara.K@Mail.COM", Intent(IntentKind.EMAIL, email="Sara.K@mail.com")),
    ("بريدي هو \u2068ahmad@example.jo\u2069", Intent(IntentKind.EMAIL, email="ahmad@example.jo")),
    ("میرا ای میل zain@example.pk ہے", Intent(IntentKind.EMAIL, email="zain@example.pk")),
    # verification helpers, thanks
    ("verify", Intent(IntentKind.VERIFY)),
    ("تحقق", Intent(IntentKind.VERIFY)),
    ("تصدیق", Intent(IntentKind.VERIFY)),
    ("resend", Intent(IntentKind.RESEND)),
    ("send me a new code", Intent(IntentKind.RESEND)),
    ("ما وصلني الرمز", Intent(IntentKind.RESEND)),
    ("کوڈ نہیں آیا", Intent(IntentKind.RESEND)),
    ("thanks!", Intent(IntentKind.THANKS)),
    ("شكرا جزيلا", Intent(IntentKind.THANKS)),
    ("شکریہ", Intent(IntentKind.THANKS)),
    # nothing recognisable
    ("", Intent(IntentKind.UNKNOWN)),
    ("   ", Intent(IntentKind.UNKNOWN)),
    ("1234", Intent(IntentKind.UNKNOWN)),
    ("OD-2026-00042", Intent(IntentKind.STATUS, ref="OD-2026-00042")),
    ("please OD-2026-00042", Intent(IntentKind.STATUS, ref="OD-2026-00042")),
]


@pytest.mark.parametrize(("text", "intent"), COMMANDS)
def test_commands(text: str, intent: Intent) -> None:
    assert classify(text) == intent


def test_documented_keywords_are_understood() -> None:
    for words in STOP_WORDS.values():
        for word in words:
            assert classify(word).kind is IntentKind.STOP, word
    for words in START_WORDS.values():
        for word in words:
            assert classify(word).kind is IntentKind.START, word
    for words in CANCEL_WORDS.values():
        for word in words:
            assert classify(word).kind is IntentKind.CANCEL, word
    for language, names in LANGUAGE_NAMES.items():
        for name in names:
            assert classify(name) == Intent(IntentKind.LANGUAGE, language=language), name


def test_cancel_is_not_an_opt_out() -> None:
    assert "CANCEL" not in STOP_WORDS["en"]
    assert classify("CANCEL").kind is IntentKind.CANCEL


def test_a_cancelled_subscription_is_a_marketing_request() -> None:
    assert classify("cancel my subscription") == Intent(IntentKind.REQUEST, request=MARKETING)


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("OD-2026-00042", "OD-2026-00042"),
        ("joo-2026-123456", "JOO-2026-123456"),
        ("ref: OD - 2026 - 00042.", "OD-2026-00042"),
        ("الطلب ‎OD-٢٠٢٦-٠٠٠٤٢‎", "OD-2026-00042"),
        ("OD-2026-0042", None),
        ("no reference here", None),
    ],
)
def test_find_ref(text: str, ref: str | None) -> None:
    assert find_ref(text) == ref


@pytest.mark.parametrize(
    ("text", "categories"),
    [
        ("1", ("analytics",)),
        ("1 2", ("analytics", "advertising")),
        ("2,3", ("advertising", "functional")),
        ("12", ("analytics", "advertising")),
        ("4", ("analytics", "advertising", "functional")),
        ("٢", ("advertising",)),
        ("analytics and advertising cookies", ("analytics", "advertising")),
        ("all of them", ("analytics", "advertising", "functional")),
        ("turn off analytics cookies", ("analytics",)),
        ("الإعلانية", ("advertising",)),
        ("ملفات التحليل والإعلانات", ("analytics", "advertising")),
        ("الكل", ("analytics", "advertising", "functional")),
        ("اشتہارات والی کوکیز", ("advertising",)),
        ("سب", ("analytics", "advertising", "functional")),
        ("ترجیحات", ("functional",)),
        ("hello", ()),
        ("9", ()),
    ],
)
def test_cookie_categories(text: str, categories: tuple[str, ...]) -> None:
    assert cookie_categories(text) == categories


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("skip", IntentKind.SKIP),
        ("SKIP please", IntentKind.SKIP),
        ("skip it", IntentKind.SKIP),
        ("تخطي", IntentKind.SKIP),
        ("تجاوز", IntentKind.SKIP),
        ("چھوڑیں", IntentKind.SKIP),
        ("چھوڑ دیں", IntentKind.SKIP),
        ("اسکپ", IntentKind.SKIP),
        ("chhoro", IntentKind.SKIP),
        ("no", IntentKind.NO),  # declining stays a "no"; the cookie step reads both
        ("skip the marketing messages", IntentKind.REQUEST),
    ],
)
def test_skip(text: str, kind: IntentKind) -> None:
    assert classify(text).kind is kind


@pytest.mark.parametrize(
    ("text", "phone"),
    [
        ("+923001234567", "+923001234567"),
        ("+92 300 1234567", "+923001234567"),
        ("+92 (300) 123-4567", "+923001234567"),
        ("0092 300 1234567", "+923001234567"),
        ("my number is +962 79 123 4567.", "+962791234567"),
        ("+٩٢٣٠٠١٢٣٤٥٦٧", "+923001234567"),
        ("۰۰۹۲۳۰۰۱۲۳۴۵۶۷", "+923001234567"),
        ("03001234567", None),  # no country code: which country?
        ("+0300 1234567", None),
        ("+92 300", None),
        ("+1234567890123456", None),  # longer than E.164 allows
        ("+92 300 1234567 or +962 79 123 4567", None),
        ("OD-2026-00042", None),
        ("ali@example.com", None),
    ],
)
def test_normalise_phone(text: str, phone: str | None) -> None:
    assert normalise_phone(text) == phone


@given(st.text(max_size=200))
def test_classify_never_raises(text: str) -> None:
    intent = classify(text)
    assert isinstance(intent.kind, IntentKind)
    assert (intent.kind is IntentKind.REQUEST) == (intent.request is not None)
