"""Keeping secrets out of what the harness prints: passwords in URLs, raw codes and tokens in log lines.

The targets under review may log secrets (the faithful port logs the raw code
on a replay, as the seed does: ``replay.log-secrets`` reports it as a
finding). What the harness itself prints goes through
:func:`redact_fields` (``harness.logs.FieldsFormatter``), so a verbose
``harness serve`` or a Locust run never repeats them, while a check that
captures the target's raw events still sees what the target emitted.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"

#: Log fields that carry a secret in the targets' events (the seed's ``code = %code_str``) or could.
SECRET_FIELDS = frozenset({
    "code", "code_verifier", "verifier", "refresh_token", "access_token", "token", "client_secret",
    "secret", "password", "pepper",
})

_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (URL form and ``key=value`` conninfo form)."""
    if "://" not in url:
        return _KEYWORD_PASSWORD.sub(lambda m: m.group(1) + REDACTED, url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", lambda m: m.group(1) + m.group(2) + REDACTED,
                   parts.query)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":" + REDACTED
        netloc = f"{userinfo}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def fingerprint(value: object) -> str:
    """What may be printed in place of a secret: a SHA-256 prefix (tells values apart, reveals nothing)."""
    text = value if isinstance(value, str) else repr(value)
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def redact_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` with every secret-bearing value replaced by its fingerprint."""
    return {k: (fingerprint(v) if k in SECRET_FIELDS and v is not None else v) for k, v in fields.items()}
