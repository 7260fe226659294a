"""What a customer's message means: normalisation and intent classification, in en/ar/ur.

Pure functions, no I/O. `normalise` folds the many ways people type the same word
(case, Arabic diacritics and letter variants, Urdu letters typed on an Arabic keyboard,
Arabic-Indic digits, emoji and punctuation). `classify` maps one message to an `Intent`:
a command (stop, start, menu, status, cancel, language...), an answer (yes, no, skip, a
menu number, an email address, a 6-digit code) or one of the ten request types, scored from
keywords and phrases in English, Arabic, Urdu and Roman Urdu, tolerant of small typos.

The keyword lists that customers rely on (opt-out, opt-in) are module constants so that
the README can cite them: `STOP_WORDS`, `START_WORDS`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from storage.enums import RequestType

__all__ = [
    "CANCEL_WORDS",
    "COOKIE_CATEGORIES",
    "LANGUAGE_NAMES",
    "REF_PATTERN",
    "START_WORDS",
    "STOP_WORDS",
    "WITHDRAW_WORDS",
    "Intent",
    "IntentKind",
    "classify",
    "cookie_categories",
    "find_ref",
    "normalise",
    "normalise_email",
    "normalise_phone",
    "score_requests",
]


class IntentKind(StrEnum):
    REQUEST = "request"  # one of the ten request types, in `Intent.request`
    YES = "yes"
    NO = "no"
    STOP = "stop"  # marketing opt-out keyword
    START = "start"  # opt back in
    MENU = "menu"  # hi, menu, help, /start
    STATUS = "status"
    CANCEL = "cancel"  # leave the current step; with `ref`: withdraw that request
    LANGUAGE = "language"  # switch language; `language` set when named
    VERIFY = "verify"  # resume the identity check of a request left unverified
    RESEND = "resend"  # send the verification code again
    THANKS = "thanks"
    SKIP = "skip"  # leave out an optional answer (the identity a cookie opt-out applies to)
    NUMBER = "number"  # a menu number, in `number`
    EMAIL = "email"
    CODE = "code"  # six digits, in `code`
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Intent:
    """What one message means, with whatever it carried: a number, a code, an address, a ref."""

    kind: IntentKind
    request: RequestType | None = None
    number: int | None = None
    code: str | None = None
    email: str | None = None
    ref: str | None = None
    language: str | None = None


# --- normalisation --------------------------------------------------------------------

# Harakat, Quranic annotation marks, superscript alef, Urdu diacritics, tatweel.
_DIACRITICS = re.compile("[\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed\u0640]")
# One spelling per letter for matching. Urdu letters fold into their Arabic look-alikes,
# because Pakistani customers on an Arabic keyboard (and Arabs typing Urdu loanwords) mix them.
_LETTERS = str.maketrans(
    {
        "أ": "ا",
        "إ": "ا",
        "آ": "ا",
        "ٱ": "ا",
        "ٲ": "ا",
        "ٳ": "ا",
        "ى": "ي",
        "ی": "ي",
        "ې": "ي",
        "ێ": "ي",
        "ے": "ي",
        "ۓ": "ي",
        "ئ": "ي",
        "ة": "ه",
        "ۃ": "ه",
        "ہ": "ه",
        "ۂ": "ه",
        "ھ": "ه",
        "ە": "ه",
        "ک": "ك",
        "ڪ": "ك",
        "ؤ": "و",
        "ں": "ن",
        "ء": "",
    }
)
_JOINERS = frozenset("\u200c\u200d")  # zero-width (non-)joiner: inside a word, not between
_APOSTROPHES = frozenset("'’‘ʼ`´")


def _fold_digits(text: str) -> str:
    """Any decimal digit (Arabic-Indic ٠١٢, Extended ۰۱۲, ...) to its ASCII digit."""
    return "".join(
        str(unicodedata.decimal(char)) if char.isdecimal() and not char.isascii() else char
        for char in text
    )


def _plain(text: str) -> str:
    """Compatibility forms folded, digits in ASCII, bidi controls gone; punctuation kept."""
    text = _fold_digits(unicodedata.normalize("NFKC", text))
    return "".join(char for char in text if unicodedata.category(char) != "Cf")


def normalise(text: str) -> str:
    """Fold `text` to the one spelling keywords are matched against, words one space apart."""
    text = _DIACRITICS.sub("", unicodedata.normalize("NFKC", _plain(text).casefold()))
    text = text.translate(_LETTERS)
    out: list[str] = []
    for char in text:
        if char in _JOINERS or char in _APOSTROPHES:
            continue
        category = unicodedata.category(char)
        if category[0] in "LN":
            out.append(char)
        elif category != "Mn":
            out.append(" ")
    return " ".join("".join(out).split())


# --- fuzzy word matching --------------------------------------------------------------

# Arabic proclitics (and, by, for, the ...) that glue onto the next word: "وبياناتي", "للتسويق".
_PROCLITICS = ("وال", "بال", "فال", "كال", "لل", "ال", "و", "ف", "ب", "ل")


def _candidates(token: str) -> tuple[str, ...]:
    """The token and the token without one leading Arabic proclitic."""
    found = [token]
    for prefix in _PROCLITICS:
        if token.startswith(prefix) and len(token) - len(prefix) >= 2:
            found.append(token[len(prefix) :])
    return tuple(found)


def _allowed_edits(word: str) -> int:
    """Typos tolerated in a word: none in short words, fewer in Arabic script, where one
    letter more often makes another word (تصديق, to verify; تصدير, to export)."""
    length = len(word) - (0 if word.isascii() else 1)
    return 0 if length <= 4 else 1 if length <= 7 else 2


def _distance(a: str, b: str, limit: int) -> int:
    """Optimal string alignment distance (adjacent swaps count once), capped at limit + 1."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cost = 0 if ca == cb else 1
            value = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                value = min(value, previous2[j - 2] + 1)
            current[j] = value
        if min(current) > limit and min(previous) > limit:  # a swap reaches back two rows
            return limit + 1
        previous2, previous = previous, current
    return previous[-1]


def _same_start(word: str, pattern: str) -> bool:
    """Typos rarely touch the first letter; checking it keeps fuzzy matching cheap."""
    if word[:1] == pattern[:1]:
        return True
    return len(word) > 1 and len(pattern) > 1 and word[0] == pattern[1] and word[1] == pattern[0]


@dataclass(frozen=True, slots=True)
class _Pattern:
    """One word of a cue: a whole word, a stem (`delet*`) or an Arabic root inside (`*حذف*`)."""

    text: str
    mode: str  # "word" | "stem" | "infix"
    fuzzy: bool = True

    def matches(self, token: str) -> bool:
        return _pattern_matches(self.text, self.mode, self.fuzzy, token)


@lru_cache(maxsize=100_000)
def _pattern_matches(text: str, mode: str, fuzzy: bool, token: str) -> bool:
    for word in _candidates(token):
        if mode == "infix":
            if text in word:
                return True
            continue
        if mode == "stem":
            if word.startswith(text):
                return True
            limit = _allowed_edits(text) if fuzzy else 0
            if limit and _same_start(word, text):
                for cut in (len(text) - 1, len(text), len(text) + 1):
                    if 0 < cut <= len(word) and _distance(word[:cut], text, limit) <= limit:
                        return True
            continue
        if word == text:
            return True
        limit = _allowed_edits(text) if fuzzy else 0
        if limit and _same_start(word, text) and _distance(word, text, limit) <= limit:
            return True
    return False


def _pattern(spec: str) -> _Pattern:
    """'delet*' → stem, '*حذف*' → infix, '!export*' → no typo tolerance, else a whole word."""
    fuzzy = not spec.startswith("!")
    spec = spec.lstrip("!")
    if spec.startswith("*") and spec.endswith("*"):
        return _Pattern(normalise(spec.strip("*")), "infix", fuzzy)
    if spec.endswith("*"):
        return _Pattern(normalise(spec.rstrip("*")), "stem", fuzzy)
    return _Pattern(normalise(spec), "word", fuzzy)


def _words(*specs: str) -> tuple[_Pattern, ...]:
    return tuple(_pattern(spec) for spec in specs)


def _any(patterns: Iterable[_Pattern], token_list: Iterable[str]) -> bool:
    return any(pattern.matches(token) for token in token_list for pattern in patterns)


# Word classes a cue can name with "@data" or "@pii".
# fmt: off
_CLASSES: Mapping[str, tuple[_Pattern, ...]] = {
    # The personal data itself.
    "data": _words(
        "data", "database", "information", "info", "details", "personal", "record*",
        "account", "profile", "maloomat", "malumat", "maalumat",
        "بيانات*", "معلومات*", "داتا", "حساب*", "ملف*", "سجل*", "شخصيه",
        "ڈیٹا", "ڈیٹے", "ڈاٹا", "ڈیٹہ", "تفصیلات", "اکاؤنٹ", "اکاونٹ", "ریکارڈ", "ذاتی",
    ),
    # The items people ask to have corrected.
    "pii": _words(
        "name", "surname", "address", "phone", "mobile", "number", "email",
        "birth", "dob", "birthday", "spelling", "naam", "pata",
        "اسم*", "عنوان*", "رقم*", "هاتف*", "جوال*", "موبايل*", "ايميل*", "بريد*", "ميلاد*",
        "نام", "پتہ", "پتا", "نمبر", "فون", "موبائل", "میل", "ایمیل", "پیدائش",
    ),
}
# fmt: on


def _cue(spec: str) -> tuple[tuple[_Pattern, ...], ...]:
    """A cue is words that must all appear (any order); "@data" stands for any data word."""
    return tuple(
        _CLASSES[part[1:]] if part.startswith("@") else (_pattern(part),) for part in spec.split()
    )


Cue = tuple[tuple[tuple[_Pattern, ...], ...], int]


def _cues(pairs: Iterable[tuple[str, int]]) -> tuple[Cue, ...]:
    """Cues that normalise to the same words (كوكيز, کوکیز) count once."""
    unique: dict[tuple[tuple[_Pattern, ...], ...], int] = {}
    for spec, weight in pairs:
        unique.setdefault(_cue(spec), weight)
    return tuple(unique.items())


# --- request vocabulary ---------------------------------------------------------------

# Each cue adds its weight once when all its words appear. A request needs a score of at
# least `_THRESHOLD` and must beat the runner-up; a verb alone is weak, a verb with its object
# strong, the name of the right itself strongest.
_THRESHOLD = 2

# fmt: off
_REQUEST_CUES: Mapping[RequestType, tuple[Cue, ...]] = {
    RequestType.ERASURE: _cues([
        ("delet*", 3), ("eras*", 3), ("wipe", 2), ("remov* @data", 3), ("remov* me", 2),
        ("forget me", 3), ("forgotten", 3), ("destroy*", 2), ("purge", 2),
        ("close account", 3), ("get rid @data", 3),
        ("*حذف*", 3), ("*حزف*", 3), ("*مسح*", 2), ("*مسح* @data", 1), ("ازاله", 3),
        ("*شيل* @data", 3), ("الغ* حساب*", 3), ("نسيان", 3), ("*تمسح*", 1),
        ("ڈیلیٹ*", 3), ("ڈلیٹ*", 3), ("مٹا*", 3), ("ختم @data", 3), ("ہٹا* @data", 3),
        ("ہٹا*", 1), ("mita*", 2), ("hata* @data", 3), ("khatam @data", 3),
    ]),
    RequestType.ACCESS: _cues([
        ("access", 3), ("copy", 1), ("copy @data", 3), ("dsar", 4), ("sar", 3),
        ("see @data", 2), ("show @data", 2), ("view @data", 2), ("what @data", 1),
        ("which @data", 1), ("have about me", 3), ("hold about me", 3), ("store about me", 3),
        ("know about me", 3), ("have on me", 2), ("keep about me", 3), ("dikha* @data", 3),
        ("@data you have", 2), ("@data you hold", 3), ("@data you keep", 3), ("دکھا* @data", 3),
        ("نسخه", 2), ("نسخه @data", 1), ("اطلاع", 3), ("اطلع @data", 3), ("وصول @data", 3),
        ("عندكم عني", 3), ("*حتفظ* عني", 3), ("*عرف* عني", 3), ("*عرف* @data", 2),
        ("*شوف* @data", 3), ("عرض @data", 2), ("@data عني", 1),
        ("کاپی", 2), ("کاپی @data", 1), ("رسائی", 3), ("دیکھ* @data", 3), ("پاس @data", 2),
        ("کیا @data", 1), ("کون @data", 2), ("بارے @data", 2),
    ]),
    RequestType.PORTABILITY: _cues([
        ("portab*", 4), ("!export*", 3), ("transfer*", 3), ("move @data", 3),
        ("download*", 3), ("machine readable", 3), ("csv", 3), ("json", 3), ("migrat*", 3),
        ("another company", 1), ("!port @data", 3), ("اور کمپنی @data", 3), ("*نقل*", 3),
        ("!تصدير", 3), ("تحميل* @data", 3),
        ("*حمل* @data", 3), ("تنزيل @data", 3), ("شركه ثانيه", 2), ("جهه اخري", 2),
        ("منتقل", 3), ("ٹرانسفر", 3), ("ایکسپورٹ", 3), ("ڈاؤن لوڈ", 3), ("ڈاؤنلوڈ", 3),
        ("دوسری کمپنی", 2), ("پورٹیبل*", 4),
    ]),
    RequestType.RECTIFICATION: _cues([
        ("correct*", 1), ("correction", 3), ("correct* @data", 2), ("correct* @pii", 2),
        ("rectif*", 4), ("fix @data", 3), ("fix @pii", 3), ("updat* @data", 3),
        ("updat* @pii", 3), ("chang* @pii", 3), ("chang* @data", 3), ("edit* @pii", 3),
        ("edit* @data", 3), ("amend*", 3), ("wrong", 1), ("@pii wrong", 2), ("@data wrong", 2),
        ("incorrect", 2), ("@pii incorrect", 1), ("mistake", 1), ("misspel*", 3),
        ("spelt wrong", 1), ("spelled wrong", 1), ("typo", 2), ("outdated", 2),
        ("*صحح*", 3), ("تصحيح*", 3), ("*عدل*", 1), ("*عدل* @data", 2), ("*عدل* @pii", 2),
        ("تحديث* @data", 3), ("تحديث* @pii", 3), ("*حدث* @pii", 3), ("*غير* @pii", 3),
        ("غلط", 1), ("@pii غلط", 2), ("@data غلط", 2), ("خطا", 1), ("@pii خطا", 2),
        ("@data خاطي*", 3), ("غير صحيح*", 2),
        ("درست @data", 3), ("درست @pii", 3), ("درستگی", 3), ("تبدیل @pii", 3),
        ("تبدیل @data", 3), ("اپڈیٹ", 3), ("اپ ڈیٹ", 3), ("ٹھیک @pii", 3), ("ٹھیک @data", 3),
        ("theek @data", 3), ("sahi @data", 3), ("ghalat", 1), ("@pii ghalat", 2),
    ]),
    RequestType.RESTRICTION: _cues([
        ("restrict*", 4), ("limit*", 3), ("pause", 2), ("freez*", 2), ("suspend*", 2),
        ("*قيد*", 4), ("*تقييد*", 4), ("حد استخدام*", 3), ("حد معالج*", 3), ("موقت*", 2),
        ("*جمد*", 3),
        ("محدود", 4), ("پابندی", 3), ("عارضی", 2), ("mehdood", 4), ("mahdood", 4),
    ]),
    RequestType.OBJECTION: _cues([
        ("object", 4), ("objection", 4), ("objecting", 4), ("oppose", 3),
        ("stop using", 3), ("stop processing", 3), ("dont use", 3), ("not use", 3),
        ("profiling", 3), ("legitimate interest*", 3), ("dont process*", 3), ("not process*", 3),
        ("*عترض*", 4), ("*عتراض*", 4), ("*رفض* معالج*", 3), ("*وقف* استخدام*", 3),
        ("لا تستخدم*", 3), ("ما تستخدم*", 3), ("بلاش تستخدم*", 3),
        ("استعمال* روک*", 3), ("استعمال* بند", 3), ("استعمال* نہ", 3), ("مت استعمال*", 3),
        ("istemal band", 3), ("istemal na", 3),
    ]),
    RequestType.CONSENT_WITHDRAWAL: _cues([
        ("consent", 4), ("withdraw*", 2), ("revok*", 2), ("permission", 3),
        ("take back", 1),
        ("موافق*", 2), ("الغ* موافق*", 2), ("*سحب* موافق*", 2), ("اذن*", 2), ("*سحب* اذن*", 2),
        ("رضامندی", 4), ("اجازت", 3), ("منظوری", 2), ("واپس", 1), ("ijazat", 3),
        ("razamandi", 4),
    ]),
    RequestType.MARKETING_OPT_OUT: _cues([
        ("marketing", 4), ("promo*", 4), ("newsletter*", 4), ("advert*", 3), ("ads", 3),
        ("spam", 3), ("offers", 3), ("mailing list", 4), ("unsubscrib*", 4),
        ("opt out", 2), ("optout", 2), ("stop sending", 3), ("stop messag*", 3), ("sms", 2),
        ("dont message", 3), ("dont contact", 3), ("cancel* subscri*", 4),
        ("تسويق*", 4), ("ترويج*", 4), ("اعلان*", 3), ("عروض", 3), ("*وقف* رسايل", 3),
        ("*وقف* رساله", 3), ("اشتراك*", 1), ("الغ* اشتراك*", 3), ("*زعج*", 2), ("نشره*", 3),
        ("مارکیٹنگ", 4), ("اشتہار*", 3), ("پروموشن*", 4), ("میسج* بند", 3),
        ("پیغامات بند", 3), ("ایس ایم ایس", 2), ("سبسکرپشن", 2), ("ان سبسکرائب", 4),
        ("انسبسکرائب", 4), ("تنگ", 2), ("msg* band", 3), ("messages band", 3),
    ]),
    RequestType.COOKIE_OPT_OUT: _cues([
        ("cookie*", 5), ("tracking", 2), ("tracker*", 2), ("pixel", 2),
        ("كوكيز", 5), ("كوكي*", 5), ("*رتباط* تعريف", 5), ("*تتبع*", 2),
        ("کوکیز", 5), ("کوکی*", 5), ("ٹریکنگ", 2),
    ]),
    RequestType.COMPLAINT: _cues([
        ("complain*", 5), ("unhappy", 2), ("not happy", 2), ("disappoint*", 2),
        ("angry", 2), ("terrible", 2), ("awful", 2), ("bad service", 3), ("breach", 3),
        ("leak*", 3), ("misus*", 3), ("regulator", 3), ("lawyer", 2),
        ("شكوي", 5), ("*شتكي*", 5), ("*شكو*", 5), ("تسريب", 4), ("*سرب*", 3), ("زعلان", 2),
        ("غاضب", 2),
        ("شکایت", 5), ("ناراض", 2), ("لیک", 3), ("غلط استعمال", 3), ("shikayat", 5),
    ]),
}
# fmt: on


def score_requests(text: str) -> dict[RequestType, int]:
    """How strongly `text` names each request type (types scoring 0 are left out)."""
    words = normalise(text).split()
    scores: dict[RequestType, int] = {}
    for kind, cues in _REQUEST_CUES.items():
        total = sum(weight for cue, weight in cues if all(_any(group, words) for group in cue))
        if total:
            scores[kind] = total
    return scores


def _request(text: str) -> RequestType | None:
    """The one request type `text` clearly names, or None when none (or two) stand out."""
    ranked = sorted(score_requests(text).items(), key=lambda item: item[1], reverse=True)
    if not ranked or ranked[0][1] < _THRESHOLD:
        return None
    if len(ranked) > 1 and ranked[1][1] == ranked[0][1]:
        return None
    return ranked[0][0]


# --- commands and answers -------------------------------------------------------------


def _phrases(*phrases: str) -> frozenset[tuple[str, ...]]:
    return frozenset(tuple(normalise(phrase).split()) for phrase in phrases)


def _vocabulary(*words: str) -> frozenset[str]:
    return frozenset(token for word in words for token in normalise(word).split())


# Marketing opt-out: the whole message (politeness words aside) must be one of these.
# Twilio's SMS opt-out keywords minus CANCEL, which is a dialogue command here.
# fmt: off
STOP_WORDS: Mapping[str, tuple[str, ...]] = {
    "en": ("STOP", "STOPALL", "STOP ALL", "UNSUBSCRIBE", "END", "QUIT", "REVOKE", "OPTOUT",
           "OPT OUT", "OPT-OUT"),
    "ar": ("إيقاف", "ايقاف", "توقف", "أوقف", "اوقف", "وقف", "قف", "إلغاء الاشتراك",
           "الغاء الاشتراك", "ألغِ الاشتراك", "إيقاف الرسائل", "أوقفوا الرسائل"),
    "ur": ("بند", "بند کریں", "بند کرو", "بند کر دیں", "روکیں", "روک دیں", "ان سبسکرائب",
           "ان سبسکرائب کریں", "انسبسکرائب", "میسج بند کریں", "پیغامات بند کریں", "band",
           "band karo", "band karein"),
}
# fmt: on

# Opt back in after STOP.
START_WORDS: Mapping[str, tuple[str, ...]] = {
    "en": ("START", "UNSTOP", "SUBSCRIBE"),
    "ar": ("اشتراك", "ابدأ", "تفعيل", "استئناف"),
    "ur": ("شروع", "شروع کریں", "سبسکرائب", "سبسکرائب کریں", "دوبارہ شروع کریں"),
}

# Leave the current step (in a short message); with a reference, withdraw that request.
CANCEL_WORDS: Mapping[str, tuple[str, ...]] = {
    "en": ("cancel", "abort", "exit"),
    "ar": ("إلغاء", "الغاء", "ألغِ", "الغي", "كنسل", "تراجع", "خروج"),
    "ur": ("منسوخ", "منسوخ کریں", "کینسل", "کینسل کریں"),
}
# With a reference ("withdraw OD-2026-00042"), these withdraw that request too.
WITHDRAW_WORDS: Mapping[str, tuple[str, ...]] = {
    "en": ("withdraw",),
    "ar": ("اسحب", "سحب"),
    "ur": ("واپس",),
}

# Language names a customer may type, by the language they name.
# fmt: off
LANGUAGE_NAMES: Mapping[str, tuple[str, ...]] = {
    "en": ("english", "eng", "en", "انجليزي", "إنجليزية", "الانجليزية", "انكليزي", "انگریزی",
           "انگلش", "angrezi", "inglizi"),
    "ar": ("arabic", "ar", "عربي", "العربية", "عربية", "عربی", "arbi"),
    "ur": ("urdu", "ur", "اردو", "الأوردية", "الأردية", "أوردو"),
}
# fmt: on

_STOP = _phrases(*(word for words in STOP_WORDS.values() for word in words))
_START = _phrases(*(word for words in START_WORDS.values() for word in words))
_CANCEL = tuple(
    _pattern(normalise(word).split()[0]) for words in CANCEL_WORDS.values() for word in words
)
_WITHDRAW = _words("withdraw*", "*سحب*", "واپس")
_SUBSCRIPTION = _words("subscri*", "اشتراك*", "سبسکرپشن", "سبسکرائب")
_LANGUAGE_BY_TOKEN: Mapping[str, str] = {
    token: language
    for language, names in LANGUAGE_NAMES.items()
    for name in names
    for token in normalise(name).split()
}
_LANGUAGE_WORDS = _vocabulary("language", "languages", "lang", "لغة", "اللغة", "لغات", "زبان")

# fmt: off
_FILLER = _vocabulary(
    "please", "pls", "plz", "plzz", "kindly", "sir", "madam", "dear", "just", "now", "me", "i",
    "want", "to", "the", "a", "my", "for", "in", "bro", "bhai", "yaar", "jee", "ji", "sahab",
    "من فضلك", "لو سمحت", "رجاء", "الرجاء", "ارجو", "يا", "ريت", "اخي", "حبيبي", "لي", "الان",
    "براہ کرم", "مہربانی", "پلیز", "سر", "بھائی", "یار", "صاحب", "ابھی",
)
_NEUTRAL = _vocabulary(
    "that", "thats", "is", "it", "its", "this", "thanks", "thank", "you", "all", "ok", "very",
    "much", "so", "go", "ahead", "هذا", "هو", "شكرا", "ہے", "یہ", "شکریہ", "hai", "bilkul",
)
_YES = _vocabulary(
    "yes", "y", "yeah", "yea", "ya", "yep", "yup", "ok", "okay", "okey", "k", "sure", "correct",
    "right", "confirm", "confirmed", "true", "exactly", "absolutely", "definitely", "proceed",
    "نعم", "ايوه", "ايوا", "اي", "ايه", "اه", "اكيد", "صح", "صحيح", "تمام", "موافق", "اوكي",
    "اوك", "بالضبط", "طبعا", "يب", "مظبوط", "مضبوط",
    "ہاں", "ہان", "جی", "ٹھیک", "درست", "بالکل", "صحیح", "اوکے", "haan", "han", "ha", "theek",
    "thik", "sahi", "g",
)
_NO = _vocabulary(
    "no", "n", "nope", "nah", "not", "wrong", "incorrect", "dont", "never",
    "لا", "كلا", "غلط", "خطا", "مش", "مو", "لاء",
    "نہیں", "نہ", "نا", "nahi", "nahin", "nai", "na",
)
_MENU = _vocabulary(
    "hi", "hello", "hey", "hiya", "helo", "hallo", "menu", "help", "options", "option",
    "start over", "good", "morning", "afternoon", "evening", "salam", "salaam", "assalam",
    "assalamualaikum", "assalamu", "alaikum", "aoa", "slm",
    "مرحبا", "اهلا", "هلا", "السلام", "عليكم", "سلام", "قائمة", "القائمة", "مساعدة", "ساعدني",
    "صباح", "الخير", "مساء", "هاي", "مينو", "النور",
    "مینو", "مدد", "ہیلو", "علیکم", "ہیلپ", "آداب",
)
_THANKS = _vocabulary(
    "thanks", "thank", "thx", "ty", "cheers", "shukriya", "shukria", "jazakallah",
    "شكرا", "جزيلا", "مشكور", "مشكورين", "يعطيك", "العافية", "جزاك", "الله", "خيرا", "تسلم",
    "شکریہ", "مہربانی", "جزاک", "اللہ", "خیر",
)
# fmt: on
_STATUS_ALONE = _words("status", "اسٹیٹس", "سٹیٹس", "صورتحال", "ستاتس", "halat")
_STATUS_CUES = (
    _cue("حاله طلب*"),
    _cue("وين طلب*"),
    _cue("where request*"),
    _cue("track request*"),
    _cue("صورت حال"),
    _cue("کہاں درخواست*"),
    _cue("درخواست کیا بنا"),
)
_STATUS_SHORT = _vocabulary("حاله", "الحاله", "وضع", "طلباتي", "درخواستیں", "requests")
_VERIFY = _words("verify", "verification", "تحقق", "التحقق", "تصدیق", "ویریفائی")
_RESEND_CUES = (
    _cue("resend"),
    _cue("send again"),
    _cue("new code"),
    _cue("another code"),
    _cue("code again"),
    _cue("didnt get code"),
    _cue("no code"),
    _cue("اعد* ارسال"),
    _cue("اعاده ارسال"),
    _cue("رمز جديد"),
    _cue("كود جديد"),
    _cue("ما وصل* رمز"),
    _cue("ما وصل* كود"),
    _cue("لم يصل*"),
    _cue("دوبارہ بھیج*"),
    _cue("نیا کوڈ"),
    _cue("کوڈ نہیں"),
    _cue("code nahi"),
)
_SKIP = _vocabulary(
    "skip",
    "skp",
    "تخطي",
    "تخطى",
    "تخط",
    "تجاوز",
    "اسكب",
    "اسکپ",
    "چھوڑیں",
    "چھوڑ",
    "چھوڑو",
    "chhoro",
    "chorein",
    "chorain",
)
_SKIP_ALONG = _vocabulary("دیں", "دو", "de", "dein", "do")  # "چھوڑ دیں", "chhor do"
_NUMBER_WORDS = _vocabulary("number", "option", "no", "رقم", "خيار", "نمبر", "آپشن")
_THUMBS_UP = frozenset("👍✅✔☑👌")
_THUMBS_DOWN = frozenset("👎❌✖")

REF_PATTERN = re.compile(r"(?<![A-Za-z0-9])([A-Za-z0-9]{1,8})\s*-\s*(\d{4})\s*-\s*(\d{5,})(?!\d)")
_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
_DIGITS = re.compile(r"^[\d\s\-.]+$")
_SLASH = re.compile(r"^/([a-z_]+)(?:@\w+)?(?:\s+(.*))?$", re.DOTALL)
_SLASH_COMMANDS: Mapping[str, IntentKind] = {
    "start": IntentKind.MENU,
    "help": IntentKind.MENU,
    "menu": IntentKind.MENU,
    "status": IntentKind.STATUS,
    "cancel": IntentKind.CANCEL,
    "stop": IntentKind.STOP,
    "language": IntentKind.LANGUAGE,
    "verify": IntentKind.VERIFY,
    "resend": IntentKind.RESEND,
}
_SHORT = 4  # commands such as "cancel" or "language" are recognised in messages this short


def find_ref(text: str) -> str | None:
    """A ticket reference anywhere in `text` (any case, Arabic digits), in canonical form."""
    match = REF_PATTERN.search(_plain(text))
    if match is None:
        return None
    return f"{match[1].upper()}-{match[2]}-{match[3]}"


def _email(text: str) -> str | None:
    match = _EMAIL.search(_plain(text))
    if match is None:
        return None
    local, _, domain = match[0].partition("@")
    return f"{local}@{domain.lower()}"


# --- email addresses and phone numbers -----------------------------------------------

_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_TLD = re.compile(r"(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})")
_STRIP = "<>()[]\"'«»“”‘’,;:.!?،؛؟"


def normalise_email(text: str) -> str | None:
    """The one email address in `text`, with its domain lower-cased; None when there is none.

    "my email is Sara@Example.COM." gives `Sara@example.com`. The local part keeps its case
    (it is the mail server's to interpret) and must be plain ASCII (dot-atom); the domain
    needs at least two labels and a real top-level part; internationalised domains are
    turned into their ASCII (punycode) form. Text with two addresses is ambiguous: None.
    """
    cleaned = "".join(
        char for char in unicodedata.normalize("NFKC", text) if unicodedata.category(char) != "Cf"
    )
    tokens = [token.strip(_STRIP) for token in cleaned.split() if "@" in token]
    if len(tokens) != 1:
        return None
    candidate = tokens[0].removeprefix("mailto:")
    local, at, domain = candidate.rpartition("@")
    if not at or not _LOCAL.fullmatch(local) or len(local) > 64:
        return None
    try:
        domain = domain.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        return None
    if not _TLD.fullmatch(labels[-1]):
        return None
    address = f"{local}@{domain}"
    return address if len(address) <= 254 else None


# "+" or "00", then the country code (never 0) and the rest: spaces, dashes, dots, brackets.
_PHONE = re.compile(r"(?<![\w+])(?:\+|00)[\s\-.()]*[1-9](?:[\s\-.()]*\d)+")
_PHONE_DIGITS = range(8, 16)  # E.164 allows 15 digits with the country code


def normalise_phone(text: str) -> str | None:
    """The one international phone number in `text` in E.164 form (`+923001234567`), else None.

    It must start with + (or 00) and its country code: a local number ("0300 1234567") names
    no country. Arabic-Indic digits are read; two numbers in one message are ambiguous.
    """
    found = _PHONE.findall(_plain(text))
    if len(found) != 1:
        return None
    digits = "".join(char for char in found[0].strip().removeprefix("+") if char.isdigit())
    if found[0].strip().startswith("00"):
        digits = digits[2:]
    return f"+{digits}" if len(digits) in _PHONE_DIGITS else None


def _only(words: tuple[str, ...], allowed: frozenset[str]) -> bool:
    return bool(words) and all(word in allowed for word in words)


def _yes_no(words: tuple[str, ...]) -> IntentKind | None:
    """Yes or no when the whole message is made of such words ("yes please", "جی نہیں")."""
    if not _only(words, _YES | _NO | _NEUTRAL | _FILLER):
        return None
    if any(word in _NO for word in words):
        return IntentKind.NO
    if any(word in _YES for word in words):
        return IntentKind.YES
    return None


def _language_named(words: tuple[str, ...]) -> str | None:
    named = {_LANGUAGE_BY_TOKEN[word] for word in words if word in _LANGUAGE_BY_TOKEN}
    if len(named) == 1:
        return named.pop()
    for word in words:  # "بالعربي", "انگریزی"
        for candidate in _candidates(word):
            if candidate in _LANGUAGE_BY_TOKEN:
                return _LANGUAGE_BY_TOKEN[candidate]
    return None


def _number(words: tuple[str, ...]) -> int | None:
    """A menu number: "2", "٢", "option 2", "رقم ٣", "نمبر 4"."""
    rest = [word for word in words if word not in _NUMBER_WORDS and word not in _FILLER]
    if len(rest) == 1 and rest[0].isdigit() and len(rest[0]) <= 2:
        return int(rest[0])
    return None


def _slash(text: str) -> Intent | None:
    """Telegram commands: /start greets (it is not an opt-in), /stop opts out, and so on."""
    match = _SLASH.match(text.strip().casefold())
    if match is None:
        return None
    kind = _SLASH_COMMANDS.get(match[1])
    if kind is None:
        return None
    argument = match[2] or ""
    if kind is IntentKind.CANCEL:
        return Intent(kind, ref=find_ref(argument))
    if kind is IntentKind.LANGUAGE:
        return Intent(kind, language=_language_named(tuple(normalise(argument).split())))
    return Intent(kind)


def classify(text: str) -> Intent:
    """The one thing a customer's message most likely means; UNKNOWN when unsure."""
    raw = text.strip()
    if not raw:
        return Intent(IntentKind.UNKNOWN)
    command = _slash(raw)
    if command is not None:
        return command
    ref = find_ref(raw)
    email = _email(raw)
    words = tuple(normalise(raw).split())
    if not words:
        symbols = set(raw) - {" ", "\ufe0f"} - {chr(c) for c in range(0x1F3FB, 0x1F400)}
        if symbols and symbols <= _THUMBS_UP:
            return Intent(IntentKind.YES)
        if symbols and symbols <= _THUMBS_DOWN:
            return Intent(IntentKind.NO)
        return Intent(IntentKind.UNKNOWN)
    content = tuple(word for word in words if word not in _FILLER) or words
    if content in _STOP or words in _STOP:
        return Intent(IntentKind.STOP)
    if content in _START or words in _START:
        return Intent(IntentKind.START)
    if email is None and ref is None:
        answer = _yes_no(words)
        if answer is not None:
            return Intent(answer)
        if _only(words, _MENU | _FILLER | _NEUTRAL) and any(word in _MENU for word in words):
            return Intent(IntentKind.MENU)
        if _only(words, _THANKS | _FILLER | _NEUTRAL):
            return Intent(IntentKind.THANKS)
        if _only(words, _SKIP | _SKIP_ALONG | _FILLER | _NEUTRAL) and any(
            word in _SKIP for word in words
        ):
            return Intent(IntentKind.SKIP)
        language = _language_named(content)
        if language is not None and len(content) <= 2:
            return Intent(IntentKind.LANGUAGE, language=language)
        if _DIGITS.match(_plain(raw)):
            digits = "".join(words)
            if len(digits) == 6:
                return Intent(IntentKind.CODE, code=digits)
        number = _number(words)
        if number is not None:
            return Intent(IntentKind.NUMBER, number=number)
    if email is not None:
        return Intent(IntentKind.EMAIL, email=email)
    if ref is not None and all(w in _FILLER or w in normalise(ref).split() for w in words):
        return Intent(IntentKind.STATUS, ref=ref)  # a reference alone: how is it going?
    short = len(words) <= _SHORT
    if (
        (_any(_CANCEL, words) and (short or ref is not None))
        or (ref is not None and _any(_WITHDRAW, words))
    ) and not _any(_SUBSCRIPTION, words):
        return Intent(IntentKind.CANCEL, ref=ref)
    if len(words) <= 10 and (
        _any(_STATUS_ALONE, words)
        or any(all(_any(group, words) for group in cue) for cue in _STATUS_CUES)
        or (len(words) <= 2 and _only(words, _STATUS_SHORT | _FILLER))
    ):
        return Intent(IntentKind.STATUS, ref=ref)
    if short and any(word in _LANGUAGE_WORDS for word in words):
        return Intent(IntentKind.LANGUAGE, language=_language_named(content))
    if len(words) <= 7 and any(all(_any(group, words) for group in cue) for cue in _RESEND_CUES):
        return Intent(IntentKind.RESEND)
    request = _request(raw)
    if request is not None:
        return Intent(IntentKind.REQUEST, request=request, ref=ref)
    if short and _any(_VERIFY, words):
        return Intent(IntentKind.VERIFY, ref=ref)
    return Intent(IntentKind.UNKNOWN, ref=ref)


# --- cookie categories ----------------------------------------------------------------

COOKIE_CATEGORIES = ("analytics", "advertising", "functional")

# fmt: off
_COOKIE_WORDS: Mapping[str, tuple[_Pattern, ...]] = {
    "analytics": _words(
        "analytic*", "statistic*", "stats", "tracking", "performance", "measurement",
        "*تحليل*", "احصاي*", "*قياس*", "اینالیٹکس", "تجزیاتی", "تجزیہ", "شماریات",
    ),
    "advertising": _words(
        "advert*", "ads", "marketing", "targeted", "targeting",
        "اعلان*", "تسويق*", "دعاي*", "اشتہار*", "مارکیٹنگ", "ایڈز",
    ),
    "functional": _words(
        "functional", "preference*", "personalis*", "personaliz*",
        "وظيف*", "تفضيل*", "تخصيص", "ترجیحات", "فنکشنل",
    ),
}
# fmt: on
_COOKIE_ALL = _words(
    "all", "everything", "both", "كل", "الكل", "جميع", "جميعها", "سب", "تمام", "sab"
)


def cookie_categories(text: str) -> tuple[str, ...]:
    """Cookie categories named by number (1-3, 4 = all) or by word, in canonical order."""
    words = tuple(normalise(text).split())
    chosen: set[str] = set()
    for word in words:  # "1 2", "1,2", "12", "٤"
        if word.isdigit() and len(word) <= 4 and set(word) <= set("1234"):
            for digit in word:
                number = int(digit)
                if number <= len(COOKIE_CATEGORIES):
                    chosen.add(COOKIE_CATEGORIES[number - 1])
                else:
                    chosen.update(COOKIE_CATEGORIES)
    for category, patterns in _COOKIE_WORDS.items():
        if _any(patterns, words):
            chosen.add(category)
    if _any(_COOKIE_ALL, words):
        chosen.update(COOKIE_CATEGORIES)
    return tuple(category for category in COOKIE_CATEGORIES if category in chosen)
