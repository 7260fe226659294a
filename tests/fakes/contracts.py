"""Check calls to the fakes against the published Bot API and Twilio REST descriptions."""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


def _contracts_dir() -> Path:
    """RIGHTSDESK_CONTRACTS_DIR, else the workplace's `../shared/contracts` beside the
    checkout, else the copy kept in `tests/contracts` (a clone on its own)."""
    if configured := os.environ.get("RIGHTSDESK_CONTRACTS_DIR"):
        return Path(configured)
    repo = Path(__file__).resolve().parents[2]
    shared = repo.parent / "shared" / "contracts"
    return shared if shared.is_dir() else repo / "tests" / "contracts"


CONTRACTS_DIR = _contracts_dir()

_INTEGER = re.compile(r"-?\d+")
_BOOLEANS = {"true": True, "false": False, "True": True, "False": False, "1": True, "0": False}


@dataclass(frozen=True)
class ContractViolation:
    """One call the real API would have refused, or whose use breaks its published rules."""

    api: Literal["telegram", "twilio"]
    call: str
    problems: tuple[str, ...]
    params: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.api} {self.call}: {'; '.join(self.problems)}"


@dataclass(frozen=True)
class UploadedFile:
    """A file part of a multipart request."""

    filename: str | None
    content_type: str | None
    data: bytes


# --------------------------------------------------------------------------- Telegram


@dataclass
class TelegramCheck:
    """The method's canonical name, its decoded parameters and what is wrong with the call."""

    method: str | None
    params: dict[str, Any]
    problems: list[str]


@functools.cache
def telegram_spec() -> dict[str, Any]:
    """The Bot API description, with methods also reachable by lower-cased name."""
    spec: dict[str, Any] = json.loads((CONTRACTS_DIR / "telegram_bot_api.json").read_text())
    spec["methods_by_lower_name"] = {name.lower(): m for name, m in spec["methods"].items()}
    return spec


def check_telegram_call(
    method: str, params: Mapping[str, Any], *, tolerated: Collection[str] = ()
) -> TelegramCheck:
    """Validate one Bot API call; string values (as in forms) are decoded to their type.

    Names in `tolerated` pass even where the method does not take them (Telegram ignores
    unknown parameters; the check is stricter except for these).

    Files from a multipart body come as `UploadedFile` values, under their field name or
    the name an `attach://<name>` value refers to.
    """
    spec = telegram_spec()
    entry = spec["methods_by_lower_name"].get(method.lower())
    if entry is None:
        return TelegramCheck(None, dict(params), [f"unknown method {method!r}"])
    fields = {f["name"]: f for f in entry.get("fields", [])}
    problems: list[str] = []
    decoded: dict[str, Any] = {}
    attached = _attach_names(params)
    for name, value in params.items():
        spec_field = fields.get(name)
        if spec_field is None:
            if name not in tolerated and not (isinstance(value, UploadedFile) and name in attached):
                problems.append(f"unknown parameter {name!r}")
            decoded[name] = value
            continue
        decoded[name], errors = _telegram_value(value, spec_field["types"], name)
        problems += errors
    for name in attached - params.keys():
        problems.append(f"attach://{name} refers to no uploaded file")
    problems += [
        f"missing required parameter {name!r}"
        for name, f in fields.items()
        if f["required"] and name not in params
    ]
    return TelegramCheck(entry["name"], decoded, problems)


def _attach_names(value: Any) -> set[str]:
    if isinstance(value, str):
        if value.startswith("attach://"):
            return {value.removeprefix("attach://")}
        if value[:1] in "[{":
            try:
                return _attach_names(json.loads(value))
            except ValueError:
                return set()
        return set()
    if isinstance(value, Mapping):
        return set().union(*map(_attach_names, value.values()))
    if isinstance(value, list):
        return set().union(*map(_attach_names, value))
    return set()


def _telegram_value(value: Any, types: Sequence[str], where: str) -> tuple[Any, list[str]]:
    """Decode `value` as the first of `types` it fits; report why it fits none."""
    best: tuple[Any, list[str]] | None = None
    for type_name in types:
        decoded, errors = _telegram_single(value, type_name, where)
        if not errors:
            return decoded, []
        if best is None or len(errors) < len(best[1]):
            best = (decoded, errors)
    assert best is not None
    return best


def _telegram_single(value: Any, type_name: str, where: str) -> tuple[Any, list[str]]:
    wrong = [f"{where}: expected {type_name}, got {value!r:.80}"]
    if isinstance(value, UploadedFile) or type_name == "InputFile":
        return value, [] if isinstance(value, UploadedFile) and type_name == "InputFile" else wrong
    if isinstance(value, str) and type_name != "String":  # form values are all strings
        if type_name == "Integer":
            return (int(value), []) if _INTEGER.fullmatch(value) else (value, wrong)
        if type_name == "Float":
            try:
                return float(value), []
            except ValueError:
                return value, wrong
        if type_name == "Boolean":
            return (_BOOLEANS[value], []) if value in _BOOLEANS else (value, wrong)
        try:  # objects and arrays arrive JSON-serialised
            value = json.loads(value)
        except ValueError:
            return value, [f"{where}: expected JSON-serialised {type_name}, got {value!r:.80}"]
    return value, _json_errors(value, type_name, where)


def _json_errors(value: Any, type_name: str, where: str) -> list[str]:
    """Problems of an already JSON-decoded value against a Bot API type."""
    wrong = [f"{where}: expected {type_name}, got {value!r:.80}"]
    if type_name == "String":
        return [] if isinstance(value, str) else wrong
    if type_name == "Integer":
        return [] if isinstance(value, int) and not isinstance(value, bool) else wrong
    if type_name == "Float":
        return [] if isinstance(value, int | float) and not isinstance(value, bool) else wrong
    if type_name == "Boolean":
        return [] if isinstance(value, bool) else wrong
    if type_name == "InputFile":
        return wrong
    if type_name.startswith("Array of "):
        if not isinstance(value, list):
            return wrong
        item_type = type_name.removeprefix("Array of ")
        return [e for i, v in enumerate(value) for e in _json_errors(v, item_type, f"{where}[{i}]")]
    spec_type = telegram_spec()["types"].get(type_name)
    if spec_type is None:
        return [f"{where}: unknown type {type_name}"]
    if not isinstance(value, dict):
        return wrong
    if "subtypes" in spec_type:
        return _fewest([_json_errors(value, sub, where) for sub in spec_type["subtypes"]])
    fields = {f["name"]: f for f in spec_type.get("fields", [])}
    if not fields:  # placeholder types such as CallbackGame
        return []
    problems = [f"{where}: unknown field {k!r} of {type_name}" for k in value if k not in fields]
    problems += [
        f"{where}: missing field {k!r} of {type_name}"
        for k, f in fields.items()
        if f["required"] and k not in value
    ]
    for k, v in value.items():
        if k in fields:
            problems += _fewest([_json_errors(v, t, f"{where}.{k}") for t in fields[k]["types"]])
    return problems


def _fewest(candidates: list[list[str]]) -> list[str]:
    """No problems when one alternative type fits, else those of the closest one."""
    return min(candidates, key=lambda problems: len(problems)) if all(candidates) else []


# --------------------------------------------------------------------------- Twilio


@dataclass
class TwilioCheck:
    """The matched path template and operation, its path parameters and the problems found."""

    template: str | None
    operation: dict[str, Any] | None
    path_params: dict[str, str]
    problems: list[str]
    status: int = 400


@dataclass(frozen=True)
class _PathTemplate:
    template: str
    regex: re.Pattern[str]
    item: dict[str, Any]


@functools.cache
def twilio_spec() -> dict[str, Any]:
    """The Twilio 2010-04-01 OpenAPI description."""
    spec: dict[str, Any] = json.loads((CONTRACTS_DIR / "twilio_api_v2010.json").read_text())
    return spec


@functools.cache
def _twilio_paths() -> tuple[_PathTemplate, ...]:
    templates = []
    for template, item in twilio_spec()["paths"].items():
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
        templates.append(_PathTemplate(template, re.compile(pattern), item))
    return tuple(templates)


def check_twilio_call(
    http_method: str,
    path: str,
    query: Mapping[str, Sequence[str]],
    form: Mapping[str, Sequence[str]],
) -> TwilioCheck:
    """Validate one REST call: path and method, path parameters, query and form parameters.

    `query` and `form` map each name to all the values sent under it.
    """
    for candidate in _twilio_paths():
        match = candidate.regex.fullmatch(path)
        if match:
            break
    else:
        return TwilioCheck(None, None, {}, [f"no such resource {path}"], status=404)
    path_params = match.groupdict()
    operation = candidate.item.get(http_method.lower())
    if operation is None:
        return TwilioCheck(
            candidate.template, None, path_params, [f"{http_method} not allowed"], status=405
        )
    problems: list[str] = []
    declared = {p["name"]: p for p in operation.get("parameters", [])}
    for name, value in path_params.items():
        problems += _schema_errors([value], declared[name]["schema"], name)
    query_params = {n: p for n, p in declared.items() if p["in"] == "query"}
    problems += _params_errors(
        query,
        {n: p["schema"] for n, p in query_params.items()},
        {n for n, p in query_params.items() if p.get("required")},
    )
    body = operation.get("requestBody", {}).get("content", {})
    schema = _resolve(body.get("application/x-www-form-urlencoded", {}).get("schema", {}))
    problems += _params_errors(form, schema.get("properties", {}), set(schema.get("required", [])))
    return TwilioCheck(candidate.template, operation, path_params, problems)


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    node: Any = twilio_spec()
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return _resolve(node)


def _params_errors(
    sent: Mapping[str, Sequence[str]], properties: Mapping[str, Any], required: set[str]
) -> list[str]:
    problems = [f"unknown parameter {name!r}" for name in sent if name not in properties]
    problems += [f"missing required parameter {name!r}" for name in required - sent.keys()]
    for name, values in sent.items():
        if name in properties:
            problems += _schema_errors(values, _resolve(properties[name]), name)
    return problems


def _schema_errors(values: Sequence[str], schema: dict[str, Any], name: str) -> list[str]:
    """Problems of the string values sent under `name` against its schema."""
    if schema.get("type") == "array":
        item = _resolve(schema.get("items", {}))
        return [e for v in values for e in _schema_errors([v], item, name)]
    if len(values) != 1:
        return [f"{name}: sent {len(values)} times but takes one value"]
    value = values[0]
    kind = schema.get("type", "string")
    if kind == "integer" and not _INTEGER.fullmatch(value):
        return [f"{name}: expected an integer, got {value!r:.80}"]
    if kind == "number":
        try:
            float(value)
        except ValueError:
            return [f"{name}: expected a number, got {value!r:.80}"]
    if kind == "boolean" and value not in ("true", "false", "True", "False"):
        return [f"{name}: expected true or false, got {value!r:.80}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{name}: {value!r:.80} is not one of {schema['enum']}"]
    if "pattern" in schema and not re.search(schema["pattern"], value):
        return [f"{name}: {value!r:.80} does not match {schema['pattern']}"]
    if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 1 << 30):
        return [f"{name}: length {len(value)} outside the allowed range"]
    return []
