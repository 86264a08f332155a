from __future__ import annotations

import shlex

import pytest

from deployer import systemd


@pytest.mark.parametrize("value, quoted", [
    ("plain", '"plain"'),
    ("a b", '"a b"'),
    ("100%", '"100%%"'),
    ("$HOME ${X}", '"$$HOME $${X}"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("back\\slash", '"back\\\\slash"'),
    ("it's", '"it\'s"'),
    ("é中", '"é中"'),
])
def test_quote_exec_arg(value, quoted):
    assert systemd.quote_exec_arg(value) == quoted


@pytest.mark.parametrize("value", ["a\nExecStartPre=/bin/evil", "tab\there", "nul\x00", "cr\r"])
def test_control_characters_never_reach_a_unit(value):
    with pytest.raises(systemd.UnsafeValue):
        systemd.quote_exec_arg(value)
    with pytest.raises(systemd.UnsafeValue):
        systemd.escape_specifiers(value)


def test_description_doubles_percent_only():
    assert systemd.escape_specifiers("http://h/a%20b?$x") == "http://h/a%%20b?$x"


def test_exec_line_splits_back_into_the_same_words_for_plain_values():
    argv = ["/usr/bin/python3", "/var/lib/deployer/lib/trigger.pyz", "--url", "http://h/x?a=1&b=2"]
    assert shlex.split(systemd.exec_line(argv)) == argv
