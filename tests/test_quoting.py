"""The two quoting functions, tested with hostile strings against the real R and sh."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sshcluster.errors import QuotingError
from sshcluster.quoting import r_string, r_vector, shell_join, shell_quote

HOSTILE = [
    "",
    "plain",
    'double "quotes"',
    "single 'quotes'",
    "back\\slash\\",
    "$(rm -rf ~)",
    "`reboot`",
    "${HOME}",
    "new\nline",
    "tab\tand\rreturn",
    "\x01\x1b[31mescape\x7f",
    "semi;colon && pipe | amp &",
    "glob * ? [a]",
    "-leading-dash",
    "non-ASCII: é ü ß 漢字 🙂",
    "mixed \x01 and é",
    '\\"',
    "\\u{41}",
    "%d %u %%",
]

# Strings R can hold: no NUL, no lone surrogates.
r_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))


def _r_round_trip(values: list[str], tmp_path: Path) -> list[str]:
    """Have R parse a file of literals and print each value back as UTF-8 hex."""
    script = tmp_path / "lits.R"
    script.write_text(
        f"x <- {r_vector(values)}\n"
        "for (v in x) cat(paste(as.character(charToRaw(enc2utf8(v))), collapse = ''), '\\n',"
        " sep = '')\n",
        encoding="ascii",  # r_string output is pure ASCII
    )
    out = subprocess.run(["Rscript", str(script)], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    return [bytes.fromhex(line).decode("utf-8") for line in out.splitlines()]


def test_hostile_strings_survive_r(tmp_path: Path) -> None:
    assert _r_round_trip(HOSTILE, tmp_path) == HOSTILE


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(st.lists(r_text, min_size=1, max_size=20))
def test_any_string_survives_r(tmp_path_factory: pytest.TempPathFactory,
                               values: list[str]) -> None:
    assert _r_round_trip(values, tmp_path_factory.mktemp("r")) == values


@given(r_text)
def test_r_literal_is_ascii_and_one_line(value: str) -> None:
    lit = r_string(value)
    assert lit.isascii()
    assert "\n" not in lit
    assert lit.startswith('"') and lit.endswith('"')


@pytest.mark.parametrize("bad", ["a\x00b", "\ud800"])
def test_r_refuses_what_r_cannot_hold(bad: str) -> None:
    with pytest.raises(QuotingError):
        r_string(bad)


def test_r_vector_empty() -> None:
    assert r_vector([]) == "character(0)"


def _sh_echo(words: list[str]) -> list[str]:
    """Let a real /bin/sh split the quoted command line and print each word NUL-terminated."""
    out = subprocess.run(["sh", "-c", "printf '%s\\0' " + shell_join(words)],
                         capture_output=True, timeout=10, check=True).stdout
    return out.decode("utf-8", "surrogateescape").split("\0")[:-1]


def test_hostile_strings_survive_sh() -> None:
    assert _sh_echo(HOSTILE) == HOSTILE


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                               blacklist_characters="\x00")),
                min_size=1, max_size=10))
def test_any_string_survives_sh(words: list[str]) -> None:
    assert _sh_echo(words) == words


def test_shell_refuses_nul() -> None:
    with pytest.raises(QuotingError):
        shell_quote("a\x00b")
