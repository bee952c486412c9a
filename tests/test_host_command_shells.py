"""The one-line host command means the same in every login shell, for any inventory value.

ssh hands the command line to the account's login shell: dash, bash, tcsh, csh or fish.
Hypothesis generates values for every inventory field that reaches that line (each
host's ``rscript``, the primary's address in direct mode, ``locale``). A value the
inventory refuses must be refused with a clear error; for one it takes, the real
generated R builds each host's command line, each shell runs it with a stand-in for the
host's script on stdin (it prints the words it was given), and every shell must hand over
exactly the intended words and run nothing else (a marker file, which the hostile values
try to create, never appears).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from sshcluster.bootstrap import END_OF_SCRIPT, RenderOptions, render
from sshcluster.check.locale import launch_locale
from sshcluster.errors import InventoryError
from sshcluster.inventory import Inventory, parse_inventory

SHELLS = ["dash", "bash", "tcsh", "csh", "fish"]
MARKER = "/tmp/sshcluster-h30-PWNED"
#: Values meant to break out of the quotes in one shell or another.
HOSTILE = [
    f"/usr/bin/Rscript\\'(touch {MARKER})\\'",
    f"/usr/bin/Rscript'(touch {MARKER})'",
    f"x'; touch {MARKER}; '", f"$(touch {MARKER})", f"`touch {MARKER}`",
    f"(touch {MARKER})", f"{{$(touch {MARKER})}}", "a\\\\", "a\\", "!!", "!-1", "~root",
    "$HOME", "'", "''", "\"", "*", "a b", "%1", "^", "#x", "\u00e9\u4e2d\U0001f600",
]
#: Inventory text: no control characters (YAML and the inventory refuse those anyway).
value_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")),
                     min_size=1, max_size=40)
#: (most without a backslash, which the inventory refuses: so that most lists get through)
no_backslash = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"),
                                              blacklist_characters="\\"),
                       min_size=1, max_size=40)
rscripts = st.one_of(st.sampled_from([h for h in HOSTILE if "\\" not in h]), no_backslash,
                     no_backslash, value_text)


def _inventory(rscripts: list[str], primary: str, locale: str | None) -> Inventory:
    data: dict[str, object] = {
        "primary": {"host": primary},
        "hosts": [{"host": f"10.0.0.{i + 2}", "ncore": 1, "rscript": r}
                  for i, r in enumerate(rscripts)],
    }
    if locale is not None:
        data["locale"] = locale
    return parse_inventory(yaml.safe_dump(data, allow_unicode=True), "hosts.yaml")


def _command_lines(inv: Inventory, tmp: Path) -> list[str]:
    """Each host's command line, as the generated R builds it (its start() call is
    replaced by one that prints them)."""
    text = render(inv, RenderOptions(tunnel="none"))
    assert text.count("\nstart(list(") == 1
    text = text.replace("\nstart(list(", (
        "\nprint_commands <- function(config) {\n"
        "  S <- new.env(); S$config <- config; S$port <- 11999L\n"
        "  for (h in seq_along(config$machines))\n"
        "    cat(remote_command(S, h, S$port), '\\n', sep = '', file = stdout())\n"
        "}\nprint_commands(list("))
    f = tmp / "commands.R"
    f.write_text(text, encoding="utf-8")
    out = subprocess.run(["Rscript", str(f)], capture_output=True, timeout=60,
                         env={**os.environ, "LANG": "C.UTF-8"})
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    return out.stdout.decode("utf-8").splitlines()


def _words(shell: str, line: str, home: Path) -> list[str]:
    """The words ``line`` hands the host's script when ``shell`` runs it."""
    script = f"printf '%s\\0' \"$@\"\n{END_OF_SCRIPT}\n"
    out = subprocess.run([shutil.which(shell) or shell, "-c", line], input=script.encode(),
                         capture_output=True, timeout=30,
                         env={"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    assert out.returncode == 0, (shell, line, out.stderr)
    return out.stdout.decode("utf-8", "surrogateescape").split("\0")[:-1]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for shell in SHELLS:
        if shutil.which(shell) is None:
            pytest.fail(f"{shell} is not installed")
    return tmp_path_factory.mktemp("home")


def test_the_examples_reach_the_shells() -> None:
    """The property test's own examples are inventories the shells then read (a refusal
    would let them pass without reaching a shell)."""
    assert len(_inventory([h for h in HOSTILE if "\\" not in h], "10.0.0.1", None).hosts) > 10
    assert _inventory(["/usr/lib/R/bin/Rscript"], "primary-1.example", "C.UTF-8").hosts


@pytest.mark.slow  # a property test through five shells: about a minute
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(rscript=[h for h in HOSTILE if "\\" not in h], primary="10.0.0.1", locale=None)
@example(rscript=["/usr/lib/R/bin/Rscript"], primary="primary-1.example", locale="C.UTF-8")
@given(rscript=st.lists(rscripts, min_size=1, max_size=6),
       primary=st.one_of(st.sampled_from(["10.0.0.1", "primary.example"]), value_text),
       locale=st.one_of(st.none(), st.just("en_US.UTF-8"), st.just("C"), value_text))
def test_every_login_shell_reads_the_same_words(home: Path, tmp_path: Path,
                                                rscript: list[str], primary: str,
                                                locale: str | None) -> None:
    try:
        inv = _inventory(rscript, primary, locale)
    except InventoryError as e:
        # refused at the edge, with a message that names the field: a host's rscript only
        # for a backslash (any other path reaches the shells), else the primary's name or
        # the locale
        assert e.field, str(e)
        at = re.fullmatch(r"hosts\[(\d+)\]\.rscript", e.field)
        if at:
            assert "\\" in rscript[int(at.group(1))] and "backslash" in str(e), str(e)
        else:
            assert e.field in ("primary.host", "locale"), str(e)
        event(f"refused: {e.field}")
        return
    event("the shells ran it")
    lines = _command_lines(inv, tmp_path)
    assert len(lines) == len(rscript)
    locale_words = launch_locale(locale) if locale else None
    for h, (line, r) in enumerate(zip(lines, rscript, strict=True), start=1):
        for shell in SHELLS:
            words = _words(shell, line, home)
            expected = [r, primary, "11999", str(h), "120", "direct", "fork", "40"]
            assert words[:8] == expected, (shell, line)
            if locale_words is not None:
                assert words[8:] == [*locale_words, "SSHCLUSTER_OUTPUT=none"], (shell, line)
    assert not Path(MARKER).exists()


def test_a_backslash_in_rscript_is_refused_at_render() -> None:
    with pytest.raises(InventoryError, match="backslash"):
        _inventory([HOSTILE[0]], "10.0.0.1", None)
