"""Turn one raw jsonl line into a validated document, or say precisely why it was rejected."""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass

DOMAIN_FIELD = ("meta", "redpajama_set_name")
UNKNOWN_DOMAIN = "unknown"
_SAFE_DOMAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# Rejection reasons, in the order the summary lists them.
REJECTION_REASONS = (
    "invalid_utf8",
    "malformed_json",
    "missing_key",
    "non_string_text",
    "empty_text",
    "missing_domain",
    "unreadable_file",
    "truncated_zst",
    "corrupt_zst",
    "no_context",
    "target_boundary",
)


@dataclass(frozen=True)
class Document:
    texts: dict[str, str]  # json key -> text
    domain: str


@dataclass(frozen=True)
class Rejection:
    reason: str
    message: str


def parse_document(
    data: bytes, json_keys: tuple[str, ...], require_domain: bool
) -> Document | Rejection:
    """Decode, parse and check one line.

    Every key in ``json_keys`` must hold a non-empty string. The domain is
    ``meta.redpajama_set_name``; when ``require_domain`` is set it must exist and be a plain name
    usable in a file name.
    """
    record = load_record(data)
    if isinstance(record, Rejection):
        return record
    texts = {}
    for key in json_keys:
        text = text_field(record, key)
        if isinstance(text, Rejection):
            return text
        texts[key] = text
    domain = _domain_of(record)
    if require_domain and domain is None:
        field = ".".join(DOMAIN_FIELD)
        return Rejection("missing_domain", f"no usable {field} (needed by --split-by-domain)")
    return Document(texts, domain or UNKNOWN_DOMAIN)


def load_record(data: bytes) -> dict | Rejection:
    """Decode and parse one line into a JSON object. A UTF-8 byte order mark before it (at the start
    of a file, or of a line where files were concatenated) is not part of the record: dropped."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        line = data.decode("utf-8")
    except UnicodeDecodeError as error:
        return Rejection("invalid_utf8", f"invalid UTF-8 at byte {error.start}")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        return Rejection("malformed_json", f"malformed JSON: {error.msg} (column {error.colno})")
    if not isinstance(record, dict):
        return Rejection("malformed_json", f"expected a JSON object, got {type(record).__name__}")
    return record


def text_field(record: dict, key: str) -> str | Rejection:
    """``record[key]`` if it is a non-empty string."""
    if key not in record:
        return Rejection("missing_key", f"no {key!r} key")
    text = record[key]
    if not isinstance(text, str):
        return Rejection("non_string_text", f"{key!r} is {type(text).__name__}, not a string")
    if not text.strip():
        return Rejection("empty_text", f"{key!r} is empty")
    return text


def _domain_of(record: dict) -> str | None:
    meta = record.get(DOMAIN_FIELD[0])
    name = meta.get(DOMAIN_FIELD[1]) if isinstance(meta, dict) else None
    if isinstance(name, str) and _SAFE_DOMAIN.match(name):
        return name
    return None
