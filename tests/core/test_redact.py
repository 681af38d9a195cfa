"""One redaction function keeps passwords and tokens out of every message and log line."""

from __future__ import annotations

import logging

import pytest

from bot.core.redact import MASK, RedactingFilter, redact, register_secret


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("connecting to postgresql://app:hunter2-xyz@db:5432/crm failed", "hunter2-xyz"),
        ("host=db user=app password=s3cr3t-value dbname=crm", "s3cr3t-value"),
        ("password='quoted secret' host=db", "quoted secret"),
        ("token xoxb-1234567890-abcdefghij leaked", "xoxb-1234567890-abcdefghij"),
        ("app token xapp-1-A0123-456-abcdef", "xapp-1-A0123-456-abcdef"),
        ("AWS key AKIAABCDEFGHIJKLMNOP in env", "AKIAABCDEFGHIJKLMNOP"),
        ("AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ", "AGE-SECRET-KEY-1QQQQ"),
        ("Authorization: Bearer sbp_abcdef0123456789", "sbp_abcdef0123456789"),
        ("PGPASSWORD=topsecret pg_dump", "topsecret"),
    ],
)
def test_known_secret_shapes_are_masked(text, secret):
    out = redact(text)
    assert secret not in out and MASK in out


def test_registered_secret_is_masked_anywhere_even_out_of_context():
    register_secret("Pl41n-Odd-Value")
    assert redact("FATAL: role said Pl41n-Odd-Value twice: Pl41n-Odd-Value") == f"FATAL: role said {MASK} twice: {MASK}"


def test_host_and_database_names_survive():
    assert redact("postgresql://app:pw1234@db.example.com:5432/crm") == f"postgresql://app:{MASK}@db.example.com:5432/crm"


def test_log_filter_redacts_message_args_and_traceback():
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "url %s", ("postgresql://u:zz-secret-99@h/db",), None)
    try:
        raise RuntimeError("password=zz-secret-99")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record)
    assert "zz-secret-99" not in record.getMessage() and "zz-secret-99" not in (record.exc_text or "")
