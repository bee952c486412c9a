"""Every command's --help at a narrow and a normal width splits no word and cuts no
summary: each word of the narrow page is a word of the page printed with room to spare."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from sshcluster.cli import cli
from sshcluster.helpformat import first_sentence, wrap


def _paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # (the root's sub-systems load when asked for)
        cmd = group.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            found += _paths(cmd, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


PATHS = _paths(cli)


def _help(path: tuple[str, ...], width: int) -> str:
    result = CliRunner().invoke(cli, [*path, "--help"], terminal_width=width,
                                max_content_width=width)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("path", PATHS, ids=[" ".join(p) or "sshcluster" for p in PATHS])
@pytest.mark.parametrize("width", [40, 60, 80])
def test_help_splits_no_word(path: tuple[str, ...], width: int) -> None:
    wide = _help(path, 2000)
    page = _help(path, width)
    broken = [w for w in page.split() if w not in set(wide.split())]
    assert broken == [], f"words split or cut at width {width}:\n{page}"
    assert page.count("...") == wide.count("..."), "a summary was cut"


def test_the_known_breaks_are_gone() -> None:
    narrow = "".join(_help(p, 50) for p in PATHS)
    assert "doParallel::registerDoParallel(parallelCluster)." in narrow
    top = _help((), 60)
    assert "(root,\n           network namespaces)." in top and "network..." not in top


def test_wrap_keeps_long_words_and_raw_blocks() -> None:
    text = "Run doParallel::registerDoParallel(parallelCluster) now.\n\n\b\n  keep   this\n"
    assert wrap(text, 20, "  ") == ("  Run\n  doParallel::registerDoParallel(parallelCluster)\n"
                                    "  now.\n\n    keep   this")
    assert wrap("--allow-partial is one word", 20) == "--allow-partial is\none word"


def test_first_sentence() -> None:
    assert first_sentence("Check it. Then more.\n\nAnd more.") == "Check it."
    assert first_sentence("No dot here\n\nsecond") == "No dot here"
