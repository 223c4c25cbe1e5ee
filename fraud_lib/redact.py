"""Credentials hidden from text meant for people: settings, error messages, log lines.

:func:`redact` is the one place that knows what a credential looks like in a database URL, a
libpq DSN or an MLflow tracking URI; everything that can print or log such a string passes it
through here first (``fraud config``, the CLI's ``error:`` line, the entry points' log
formatter, the database errors of :mod:`fraud_lib.store`).
"""

from __future__ import annotations

import logging
import re

MASK = "***"

# password=..., sslpassword=..., PGPASSWORD=..., any case: a URL query parameter
# (up to & or #) or a libpq keyword/value pair (up to a space, or a quoted value).
_KEY_VALUE = re.compile(
    r"(?P<head>(?<![A-Za-z0-9])(?:ssl|pg)?pass(?:word|wd)\s*=\s*)"
    r"(?P<secret>'(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?|[^\s&#'\"]+)",
    re.IGNORECASE,
)
_WORDS = re.compile(r"(\s+)")
_USER_END = re.compile(r"[:/?#@]")


def _mask_userinfo(word: str) -> str:
    """``word`` (no whitespace) with the password of each ``scheme://user:password@`` in it
    masked; the password runs to the first "@" after it, as SQLAlchemy and libpq read it (an
    "@" inside a password is written %40). One pass: no search restarts inside a password."""
    out, emitted, pos = [], 0, 0
    while (sep := word.find("://", pos)) != -1:
        end = _USER_END.search(word, sep + 3)
        if end is None:
            break
        if end.group() != ":":  # user@, or no userinfo at all
            pos = end.start()
            continue
        at = word.find("@", end.end())
        if at == -1:
            break  # no "@" further on: no later URL in this word has a password either
        out += [word[emitted : end.end()], MASK]
        emitted = pos = at
    return "".join(out) + word[emitted:]


def redact(text: str) -> str:
    """``text`` with every password in it replaced by ``***``: the userinfo password of any
    ``scheme://user:password@host`` URL and the value of ``password``/``sslpassword`` (any
    case) as a URL query parameter or a libpq ``key=value`` pair. Linear in ``len(text)``."""
    if "://" in text:
        text = "".join(_mask_userinfo(w) if "://" in w else w for w in _WORDS.split(text))
    return _KEY_VALUE.sub(rf"\g<head>{MASK}", text)


class RedactingFormatter(logging.Formatter):
    """A log formatter that passes every formatted record (traceback included) through
    :func:`redact`; the entry points install it on their handlers."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def log_handler(fmt: str) -> logging.Handler:
    """A stderr handler whose output is redacted, for ``logging.basicConfig(handlers=...)``."""
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter(fmt))
    return handler
