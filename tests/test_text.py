"""contract/text.py: what reaches a terminal (printable) and what a run masks (its secrets)."""
from __future__ import annotations

import base64

import pytest

from deployer.contract.text import MASK, Masker, printable, run_masker

# What a hostile service or host sends: clear screen, cursor moves, a window title (OSC 0), a
# hyperlink (OSC 8), a bell, backspaces and a carriage return that overwrite what was printed,
# 8-bit CSI and OSC (C1), DEL, NUL, a lone surrogate (which would crash the terminal's encoder).
HOSTILE = ("\x1b[2J\x1b[H\x1b[10;10H\x1b]0;pwned\x07\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\"
           "ok\b\b\bFAILED\rsafe\x9b31m\x9d0;t\x9c\x7f\x00\ud800")


@pytest.mark.parametrize("newlines", [False, True])
def test_printable_leaves_no_control_character(newlines):
    shown = printable(HOSTILE + "\tend\nnext", newlines=newlines)
    assert not [c for c in shown if (ord(c) < 0x20 and c not in "\t\n") or 0x7f <= ord(c) <= 0x9f
                or 0xd800 <= ord(c) <= 0xdfff]
    assert ("\n" in shown) is newlines and "\t" in shown
    assert shown.startswith("\\e[2J\\e[H") and "\\a" in shown and "\\b\\b\\bFAILED\\rsafe" in shown
    assert "\\x9b31m" in shown and "\\x7f" in shown and "\\udb00" not in shown and "\\ud800" in shown
    assert printable(shown, newlines=newlines) == shown, "escaping twice changes nothing"


def test_printable_keeps_ordinary_text():
    assert printable("settle: ok — 结算完成 (200)") == "settle: ok — 结算完成 (200)"
    assert printable(None) == ""


def test_a_masker_hides_each_secret_in_the_forms_a_service_echoes():
    hide = run_masker("https://svc:p%40ss-word@h.example/x?api_key=KEY-123456&page=2",
                      headers=(("Authorization", "Bearer tok-SECRET-1"), ("X-Api-Key", "k-SECRET-2")),
                      sign_secret="sign-SECRET-3")
    basic = base64.b64encode(b"svc:p@ss-word").decode()
    for secret in ("Bearer tok-SECRET-1", "tok-SECRET-1", "k-SECRET-2", "sign-SECRET-3", "p@ss-word",
                   "p%40ss-word", basic, "KEY-123456", '{"authorization": "Bearer tok-SECRET-1"}'):
        assert "SECRET" not in hide(f"echo: {secret}!") and "ss-word" not in hide(secret) \
            and "123456" not in hide(secret) and basic not in hide(secret), secret
    assert hide("authorization: Bearer tok-SECRET-1") == f"authorization: {MASK}"
    assert hide("page=2") == "page=2", "a query value not named like a secret stays"


def test_a_masker_of_nothing_changes_nothing():
    hide = Masker(["", "ab", None])
    assert not hide and hide("ab ab") == "ab ab"
