"""The generated R bootstrap: the same spec R users write by hand, deterministic and safe."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from sshcluster import InventoryError, RenderError
from sshcluster.bootstrap import (
    _R_SOURCES,
    WORKER_CODE,
    RenderOptions,
    render,
    spec_entries,
)
from sshcluster.inventory import Host, Inventory, Primary, parse_inventory
from sshcluster.quoting import r_long_string, r_string
from sshcluster.ssh.command import ssh_command
from sshcluster.statements import LAUNCH_ENV
from sshcluster.testing.modes import LAUNCH_MODES

ROOT = Path(__file__).resolve().parent.parent
CLASSIC = RenderOptions(launch="classic")

MISSION = """
primary:
  host: 192.168.1.235
  user: johnmount
port: 11234
defaults:
  user: johnmount
hosts:
  - host: 192.168.1.235
    ncore: 4
  - host: 192.168.1.70
    ncore: 4
  - host: 192.168.1.200
    ncore: 2
"""

# The snippet R users copy by hand (win-vector's "running R jobs quickly on many machines").
HAND_WRITTEN = """
primary <- '192.168.1.235'
machineAddresses <- list(
  list(host=primary,user='johnmount', ncore=4),
  list(host='192.168.1.70',user='johnmount', ncore=4),
  list(host='192.168.1.200',user='johnmount', ncore=2)
)
hand <- lapply(machineAddresses, function(machine) {
  rep(list(list(host=machine$host, user=machine$user)), machine$ncore)
})
hand <- unlist(hand, recursive=FALSE)
"""


#: R: evaluate a generated file's top level (primary, machineAddresses, spec), and the
#: data its last statement passes to start() or start_classic() as `config`, without
#: defining or starting anything of the launcher's (its statements are evalq()s).
EVAL_DATA = """
eval_data <- function(path) {
  env <- new.env()
  for (e in parse(path)) {
    if (is.call(e) && identical(e[[1]], as.name("if")) && is.call(e[[3]]) &&
        identical(e[[3]][[1]], as.name("evalq"))) e <- e[[3]]  # (a part of the launcher's)
    if (is.call(e) && identical(e[[1]], as.name("evalq"))) {
      block <- if (identical(e[[2]][[1]], as.name("{"))) as.list(e[[2]])[-1L]
      for (call in block) if (is.call(call) &&
                              as.character(call[[1]]) %in% c("start", "start_classic")) {
        env$entry <- as.character(call[[1]])
        env$config <- eval(call[[2]], env)
      }
    } else eval(e, env)
  }
  env
}
"""


def _eval_generated(text: str, tmp_path: Path, extra: str) -> str:
    """Evaluate the generated file's data (see EVAL_DATA) into ``d``, then run ``extra``."""
    gen = tmp_path / "cluster.R"
    gen.write_text(text, encoding="ascii")
    script = tmp_path / "run.R"
    script.write_text(EVAL_DATA + f"d <- eval_data({json.dumps(str(gen))})\n" + extra)
    return subprocess.run(["Rscript", str(script)], capture_output=True, text=True,
                          timeout=60, check=True).stdout


def _config(text: str, tmp_path: Path) -> dict[str, str]:
    """The scalar and character fields of the generated file's start() data, as text
    (``register``: the registrations, without what each needs)."""
    out = _eval_generated(text, tmp_path, (
        "cat('entry=', d$entry, '\\n', sep = '')\n"
        "for (k in names(d$config)) { v <- d$config[[k]]\n"
        "  if (k == 'register') v <- v$what\n"
        "  if (is.atomic(v) && length(v) <= 2 && !any(grepl('\\n', v)))\n"
        "    cat(k, '=', paste(v, collapse = ' '), '\\n', sep = '') }\n"))
    return dict(line.split("=", 1) for line in out.splitlines())


@pytest.mark.parametrize("options", [CLASSIC, RenderOptions()], ids=["classic", "fast"])
def test_spec_is_the_hand_written_spec(tmp_path: Path, options: RenderOptions) -> None:
    """Both launches define primary, machineAddresses and spec as R users write them."""
    inv = parse_inventory(MISSION)
    out = _eval_generated(
        render(inv, options), tmp_path,
        HAND_WRITTEN
        + "strip <- function(s) lapply(s, function(e) list(host = e$host, user = e$user))\n"
        "cat(identical(strip(d$spec), hand), identical(d$spec, hand), length(d$spec), '\\n')\n"
        "cat(d$primary, '\\n')\n",
    )
    lines = out.splitlines()
    assert lines[0] == "TRUE TRUE 10 "
    assert lines[1] == "192.168.1.235 "


def test_classic_passes_spec_to_make_cluster(tmp_path: Path) -> None:
    out = _eval_generated(
        render(parse_inventory(MISSION), CLASSIC), tmp_path,
        "cat(d$entry, d$config$master, d$config$port, identical(d$config$spec, d$spec), "
        "'\\n')\n")
    assert out == "start_classic 192.168.1.235 11234 TRUE \n"


def test_spec_entries_repeat_hosts_in_order() -> None:
    inv = parse_inventory(MISSION)
    hosts = [e["host"] for e in spec_entries(inv)]
    assert hosts == ["192.168.1.235"] * 4 + ["192.168.1.70"] * 4 + ["192.168.1.200"] * 2


def test_deterministic_and_parses(tmp_path: Path) -> None:
    inv = parse_inventory(MISSION, str(tmp_path / "hosts.yaml"))
    a, b = render(inv), render(parse_inventory(MISSION, str(tmp_path / "hosts.yaml")))
    assert a == b
    f = tmp_path / "cluster.R"
    f.write_text(a)
    subprocess.run(["Rscript", "-e", f"invisible(parse({json.dumps(str(f))}))"], check=True,
                   timeout=60)


def test_header_says_what_and_how_to_stop(tmp_path: Path) -> None:
    text = render(parse_inventory(MISSION, str(tmp_path / "hosts.yaml")))
    head = text.split("\n\n")[0]
    assert "generated by sshcluster" in head
    assert str(tmp_path / "hosts.yaml") in head
    assert "3 hosts, 10 R workers" in head
    assert "through an ssh reverse tunnel on port 11234" in head
    direct = render(parse_inventory(MISSION.replace("port: 11234", "port: 11234\ntunnel: none"),
                                    str(tmp_path / "hosts.yaml"))).split("\n\n")[0]
    assert "192.168.1.235 on port 11234" in direct
    assert "sshcluster_stop()" in head


def test_ssh_command_is_non_interactive_and_verifies_host_keys() -> None:
    inv = parse_inventory(MISSION)
    words = ssh_command(inv)
    assert "BatchMode=yes" in words
    assert "StrictHostKeyChecking=yes" in words
    assert any(w.startswith("ConnectTimeout=") for w in words)
    for options in (CLASSIC, RenderOptions(launch="fast"), RenderOptions(tunnel="reverse")):
        text = render(inv, options)
        assert "StrictHostKeyChecking=no" not in text
        assert "StrictHostKeyChecking=accept-new" not in text
        assert "KnownHostsFile=/dev/null" not in text


def test_the_inventory_known_hosts_is_added_to_the_users_files(tmp_path: Path) -> None:
    """ssh itself, asked what it would do (ssh -G), keeps the files the user's config
    names and adds the inventory's through KnownHostsCommand."""
    config = tmp_path / "config"
    config.write_text("Host *\n  UserKnownHostsFile /u/one /u/two\n"
                      "  GlobalKnownHostsFile /g/global\n")
    weird = str(tmp_path / 'kh 100% "x" \\ y')
    inv = Inventory(primary=Primary(host="p"), hosts=(Host(host="a"),),
                    known_hosts=weird.replace('"', ""))
    words = ssh_command(inv, inv.hosts[0])
    out = subprocess.run(["ssh", "-G", "-F", str(config), *words[1:], "a"],
                         capture_output=True, text=True, check=True).stdout
    settings = dict(line.split(" ", 1) for line in out.splitlines())
    assert settings["userknownhostsfile"] == "/u/one /u/two"
    assert settings["globalknownhostsfile"] == "/g/global"
    quoted = weird.replace('"', "").replace("%", "%%").replace("\\", "\\\\")
    assert settings["knownhostscommand"] == (
        f"/bin/sh -c 'cat -- \"$0\" 2>/dev/null; exit 0' \"{quoted}\"")
    assert settings["stricthostkeychecking"] == "true"
    with pytest.raises(RenderError, match="would expand"):
        ssh_command(Inventory(primary=Primary(host="p"), hosts=(Host(host="a"),),
                              known_hosts="/tmp/${HOME}/kh"))


HOSTILE_PATH = "/tmp/we'ird $(touch pwned) `x` %d é\\dir/id_key"


def test_hostile_paths_reach_ssh_and_r_intact(tmp_path: Path) -> None:
    inv = Inventory(
        primary=Primary(host="10.0.0.1"),
        hosts=(Host(host="a", user="u", ncore=1, ssh_port=2222, identity_file=HOSTILE_PATH,
                    rscript="/opt/R's/bin/Rscript $(x)"),),
        known_hosts="/tmp/known hosts/kh'$(y)",
    )
    out = _eval_generated(
        render(inv, CLASSIC), tmp_path,
        "cat(d$spec[[1]]$rshcmd, '\\n', sep = '')\ncat(d$spec[[1]]$rscript, '\\n', sep = '')\n",
    )
    rshcmd, rscript = out.splitlines()
    words = shlex.split(rshcmd)
    assert words[words.index("-i") + 1] == HOSTILE_PATH.replace("%", "%%")
    assert words[words.index("-p") + 1] == "2222"
    assert ("KnownHostsCommand=/bin/sh -c 'cat -- \"$0\" 2>/dev/null; exit 0' "
            '"/tmp/known hosts/kh\'$(y)"') in words
    assert rscript == "/opt/R's/bin/Rscript $(x)"
    assert not (tmp_path / "pwned").exists()


def test_secret_material_is_not_written(tmp_path: Path) -> None:
    key = tmp_path / "id"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA\n")
    inv = Inventory(primary=Primary(host="p"), hosts=(Host(host="a", identity_file=str(key)),))
    text = render(inv)
    assert "PRIVATE KEY" not in text and "b3BlbnNzaC1rZXktdjEAAAA" not in text


@pytest.mark.parametrize("options", [RenderOptions(), CLASSIC], ids=["fast", "classic"])
def test_no_environment_variable_changes_the_launch(options: RenderOptions) -> None:
    """The only variables the generated file reads are the locale's, passed to the
    workers: no undocumented switch (a SSHCLUSTER_KEEP_DIR once copied the launch
    directory, with the ssh commands and the hosts' logs, wherever it named) changes
    where the launch's files go."""
    text = render(parse_inventory(MISSION), options)
    # The workers' own code reads what the launch itself hands each host's command line
    # (SSHCLUSTER_OUTPUT, where worker_output goes); the primary's side reads nothing.
    worker = r_long_string(WORKER_CODE)
    text = text.replace(worker, "")
    # (a long string's pieces joined again, so that no name is cut in two)
    text = text.replace('",\n"', "")
    # (the host script hands the workers' code to R in SSHCLUSTER_CODE)
    text = text.replace('Sys.getenv(\\"SSHCLUSTER_CODE\\")', "")
    reads = re.findall(r"Sys\.getenv\(([^)]*)\)", text)
    assert reads in ([], ["LOCALE_VARS"])
    # SSHCLUSTER_OUTPUT and _WORKDIR are the launch's own words to each host (on its
    # command line), and so are SSHCLUSTER_LEASE (lease: true) and SSHCLUSTER_CONTAINER*
    # (a host's container: its engine, image, pull policy, options and name; see
    # sshcluster/containers); SSHCLUSTER_CODE is the workers' code, handed to R (remote.sh),
    # and SSHCLUSTER_HOST_TMPDIR the host's own TMPDIR, set for the workers (never read)
    ours = {"SSHCLUSTER_OUTPUT", "SSHCLUSTER_WORKDIR", "SSHCLUSTER_CONTAINER",
            "SSHCLUSTER_LEASE", "SSHCLUSTER_CODE", "SSHCLUSTER_HOST_TMPDIR",
            *(f"SSHCLUSTER_CONTAINER_{k}" for k in ("IMAGE", "PULL", "OPTIONS", "NAME"))}
    assert set(re.findall(r"SSHCLUSTER_[A-Z_]+", text)) <= ours


def test_auto_values_must_be_checked_first() -> None:
    with pytest.raises(RenderError, match="ncore is 'auto' for a"):
        render(parse_inventory("primary: p\nhosts:\n  - host: a\n    ncore: auto\n"))
    with pytest.raises(RenderError, match=r"primary is 'auto'"):
        render(parse_inventory("primary: auto\ntunnel: none\nhosts: [a]\n"))
    # through the (default) tunnel the workers need not know the primary's address
    assert "primary <- \"127.0.0.1\"" in render(parse_inventory("primary: auto\nhosts: [a]\n"))


@pytest.mark.slow
def test_fast_is_the_default_and_options_override_the_inventory(tmp_path: Path) -> None:
    inv = parse_inventory(MISSION)
    fast = render(inv)
    assert "# fast launch: one ssh per host, workers forked from one R per host." in fast
    c = _config(fast, tmp_path)
    assert (c["entry"], c["tunnel"], c["fork"], c["setup_timeout"], c["port"]) == \
        ("start", "TRUE", "TRUE", "120", "11234")  # through ssh, by default
    assert (c["workers_reach"], c["register"]) == ("127.0.0.1", "")
    direct = _config(render(inv, RenderOptions(tunnel="none")), tmp_path)
    assert (direct["tunnel"], direct["workers_reach"]) == ("FALSE", "192.168.1.235")
    fresh = render(inv, RenderOptions(fork=False))
    assert "# fast launch: one ssh per host, one Rscript per worker." in fresh
    assert _config(fresh, tmp_path)["fork"] == "FALSE"
    no_fork = parse_inventory(MISSION.replace("port: 11234", "port: 11234\nfork: false"))
    assert _config(render(no_fork), tmp_path)["fork"] == "FALSE"
    assert _config(render(no_fork, RenderOptions(fork=True)), tmp_path)["fork"] == "TRUE"
    tunnelled = _config(render(inv, RenderOptions(tunnel="reverse",
                                                  register=("doparallel", "future"))), tmp_path)
    assert (tunnelled["tunnel"], tunnelled["workers_reach"]) == ("TRUE", "127.0.0.1")
    assert tunnelled["register"] == "doparallel future"
    classic = parse_inventory(MISSION.replace("port: 11234", "port: 11234\nlaunch: classic"))
    assert _config(render(classic), tmp_path)["entry"] == "start_classic"
    assert _config(render(classic, RenderOptions(launch="fast")), tmp_path)["entry"] == "start"
    with pytest.raises(RenderError, match="classic launch cannot use a reverse tunnel"):
        render(classic, RenderOptions(tunnel="reverse"))


def test_reverse_tunnel_does_not_need_the_primary_address() -> None:
    inv = parse_inventory("primary: auto\ntunnel: reverse\nhosts: [a]\n")
    assert 'primary <- "127.0.0.1"' in render(inv)
    known = parse_inventory("primary: 10.0.0.1\ntunnel: reverse\nhosts: [a]\n")
    assert 'primary <- "10.0.0.1"' in render(known)  # still the primary, as users mean it


def test_fast_machine_entries_are_what_users_write(tmp_path: Path) -> None:
    """The same machineAddresses as by hand; per-host ssh and rscript only where needed."""
    inv = Inventory(
        primary=Primary(host="10.0.0.1"),
        hosts=(Host(host="a", user="u", ncore=2), Host(host="b", user="u", ncore=3),
               Host(host="c", ncore=1, ssh_port=2222, rscript=HOSTILE_PATH)),
    )
    out = _eval_generated(render(inv), tmp_path, (
        "for (i in seq_along(d$machineAddresses)) { m <- d$machineAddresses[[i]]\n"
        "  cat(m$host, m$ncore, is.null(d$config$host_ssh[[i]]), m$rscript, '\\n') }\n"
    )).splitlines()
    assert out == ["a 2 TRUE ", "b 3 TRUE ", f"c 1 FALSE {HOSTILE_PATH} "]


def test_cli_render_flags(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sshcluster.cli import cli

    inv = tmp_path / "hosts.yaml"
    inv.write_text(MISSION)
    runner = CliRunner()
    res = runner.invoke(cli, ["render", str(inv), "--tunnel", "reverse", "--future",
                              "--doparallel"])
    assert res.exit_code == 0, res.output
    c = _config(res.output, tmp_path)
    assert (c["tunnel"], c["fork"], c["register"]) == ("TRUE", "TRUE", "future doparallel")
    res = runner.invoke(cli, ["render", str(inv), "--no-fork"])
    assert res.exit_code == 0 and _config(res.output, tmp_path)["fork"] == "FALSE"
    res = runner.invoke(cli, ["render", str(inv), "--launch", "classic"])
    assert res.exit_code == 0 and _config(res.output, tmp_path)["entry"] == "start_classic"
    res = runner.invoke(cli, ["render", str(inv), "--launch", "classic", "--tunnel", "reverse"])
    assert res.exit_code == 2
    assert "error: the classic launch cannot use a reverse tunnel" in res.output


@pytest.mark.parametrize("options", [CLASSIC, RenderOptions()], ids=["classic", "fast"])
def test_old_r_stops_at_once_with_a_clear_message(tmp_path: Path, options: RenderOptions
                                                  ) -> None:
    """R 3.x must be able to parse the file, so that the version check can run first: no
    raw strings, no \\(x) lambdas, no |> pipes anywhere. Then nothing else runs."""
    text = render(parse_inventory(MISSION), options)
    assert not re.search(r'\br"[-(\[{]|\\\(|\|>', text)
    f = tmp_path / "cluster.R"
    f.write_text(text)
    out = subprocess.run(["Rscript", "-e", "getRversion <- function() package_version('3.6.3')\n"
                          f"r <- tryCatch(source({json.dumps(str(f))}), error = conditionMessage)\n"
                          "cat(r, '\\n'); cat(sort(ls(all.names = TRUE)), '\\n')"],
                         capture_output=True, text=True, timeout=60)
    lines = out.stdout.splitlines()
    assert lines[0] == "sshcluster: this file needs R 4.1.0 or later; this is R 3.6.3 "
    assert lines[1].split() == ["getRversion", "r"]


def test_connection_limits_are_known_at_render(tmp_path: Path) -> None:
    """An inventory beyond any R's connections is refused; one beyond R < 4.4's says how."""
    from click.testing import CliRunner

    from sshcluster.cli import cli

    huge = tmp_path / "huge.yaml"
    huge.write_text("primary: 10.0.0.1\nhosts:\n" + "".join(
        f"  - host: 10.0.{i // 250}.{i % 250 + 1}\n    ncore: 4096\n" for i in range(320)))
    res = CliRunner().invoke(cli, ["render", str(huge)])
    assert res.exit_code == 2
    # (a relay per 100 workers: 41 connections per host)
    assert "1,310,720 workers need 13,127 R connections" in res.output
    assert "Traceback" not in res.output
    # behind the hosts' relays (the default), 200 workers on two hosts hold 2 connections
    relayed = tmp_path / "relayed.yaml"
    relayed.write_text("primary: 10.0.0.1\nhosts:\n  - host: a\n    ncore: 100\n"
                       "  - host: b\n    ncore: 100\n")
    res = CliRunner().invoke(cli, ["render", str(relayed), "-o", str(tmp_path / "r.R")])
    assert res.exit_code == 0 and "warning" not in res.output, res.output
    big = tmp_path / "big.yaml"
    big.write_text("primary: 10.0.0.1\nrelay: false\nhosts:\n  - host: a\n    ncore: 100\n"
                   "  - host: b\n    ncore: 100\n")
    res = CliRunner().invoke(cli, ["render", str(big), "-o", str(tmp_path / "c.R")])
    assert res.exit_code == 0
    assert "warning: 200 workers need 207 R connections" in res.output
    assert "--max-connections=207" in res.output
    assert "--max-connections=207" in (tmp_path / "c.R").read_text()
    fits = parse_inventory("primary: p\nhosts:\n  - host: a\n    ncore: 121\n")
    assert "--max-connections=" not in render(fits).split("\n\n")[0]


def test_the_worker_code_reaches_r_whole(tmp_path: Path) -> None:
    """Rscript drops an ``-e`` expression of 10000 characters or more once each space
    and newline is written as three (then the workers read their tokens as their
    program): the workers' code reaches R in the environment, and the host script's
    ``-e`` only evaluates it and calls what it evaluates to, a function."""
    code = WORKER_CODE
    assert "#" not in [line[:1] for line in code.splitlines()]
    remote = _R_SOURCES["remote.sh"]
    boot = re.search(r"^boot='([^']*)'$", remote, re.M)
    assert boot and len(boot.group(1)) < 200 and '-e "$boot"' in remote
    out = subprocess.run(
        ["Rscript", "-e", "f <- eval(parse(text = Sys.getenv('SSHCLUSTER_CODE')))",
         "-e", "cat(class(f), length(formals(f)))"],
        env={**os.environ, "SSHCLUSTER_CODE": code}, capture_output=True, text=True,
        timeout=60)
    assert out.stdout == "function 0", out.stderr


def test_worker_output_is_read_and_checked() -> None:
    """worker_output: none (default), console, or an absolute directory; the render option
    overrides it; the classic launch refuses it."""
    def inv(**top: object) -> Inventory:
        return parse_inventory(json.dumps({"primary": {"host": "10.0.0.1"},
                                           "hosts": [{"host": "10.0.0.2", "ncore": 1}],
                                           **top}))
    assert inv().worker_output == "none"
    assert inv(worker_output="console").worker_output == "console"
    assert inv(worker_output="/var/log/r").worker_output == "/var/log/r"
    for bad in ("relative/dir", "", 3, "/a\nb"):
        with pytest.raises(InventoryError, match="worker_output"):
            inv(worker_output=bad)
    assert "worker_output = \"console\"" in render(inv(), RenderOptions(worker_output="console"))
    assert "worker_output = \"none\"" in render(inv())
    with pytest.raises(RenderError, match="fast launch"):
        render(inv(launch="classic"), RenderOptions(worker_output="console"))


@pytest.mark.parametrize(("options", "message"), [
    ("sshcluster.heartbeat_seconds = 'ten'",
     "option sshcluster.heartbeat_seconds must be one whole number of seconds, 1 to 86400"),
    ("sshcluster.heartbeat_seconds = 2.5",
     "option sshcluster.heartbeat_seconds must be one whole number of seconds"),
    ("sshcluster.silence_seconds = 1e6",
     "option sshcluster.silence_seconds must be one whole number of seconds, 1 to 86400"),
    ("sshcluster.keepalive_count = 0",
     "option sshcluster.keepalive_count must be one whole number, 1 to 86400"),
    ("sshcluster.heartbeat_seconds = 5, sshcluster.silence_seconds = 6",
     "option sshcluster.silence_seconds must be at least twice"),
])
@pytest.mark.parametrize("how", ["source", "console"])
def test_a_bad_timing_option_stops_before_anything_starts(tmp_path: Path, options: str,
                                                          message: str, how: str) -> None:
    """The timings a fault test may shorten (options() before source()) are checked
    before any ssh starts: a bad value is named, and nothing of the launch runs, whether
    the file is source()d or its lines are given to R's console (which goes on to the
    next statement after an error); nothing of the launcher's is left behind."""
    f = tmp_path / "cluster.R"
    text = render(parse_inventory(MISSION), RenderOptions())
    f.write_text(text)
    head = f"options({options})\nsystem <- system2 <- pipe <- function(...) stop('started')\n"
    tail = "cat('LEFT', ls(all.names = TRUE), '\\n')\n"
    if how == "source":
        out = subprocess.run(["Rscript", "-e", head + (
            f"r <- tryCatch(source({json.dumps(str(f))}), error = conditionMessage)\n"
            "cat(r, '\\n')\n") + tail], capture_output=True, text=True, timeout=60)
        said = out.stdout
    else:
        out = subprocess.run(["R", "--interactive", "--no-save", "--quiet"],
                             input=head + text + tail, capture_output=True, text=True,
                             timeout=60)
        said = out.stderr  # (its stdout echoes the input)
    assert message in said, said
    assert "started" not in said and "not found" not in said, said
    left = [ln for ln in out.stdout.splitlines() if ln.startswith("LEFT")]
    assert len(left) == 1 and LAUNCH_ENV not in left[0], said


#: 40 hosts, each with ssh options of its own (a port, a key under a path with a quote
#: and a non-ASCII letter, which the file writes as escapes) and a container whose
#: options have quotes: the values of all hosts together are far over 4,095 bytes.
MANY = "primary: 10.0.0.1\nknown_hosts: /srv/kn'own/h\u00f6sts\nhosts:\n" + "".join(
    f"  - host: h{i}.example\n    ncore: 2\n    ssh_port: {2200 + i}\n"
    f"    identity_file: \"/home/zo\u00eb/it's key/{'x' * 30}{i}\"\n"
    f"    container: {{image: \"r:{i}\", options: [--label, \"it's \\\"{i}\\\"\"]}}\n"
    for i in range(40))


@pytest.mark.parametrize("inventory", ["mission", "many"])
@pytest.mark.parametrize("options", list(LAUNCH_MODES.values()), ids=list(LAUNCH_MODES))
def test_rscript_reads_the_file_whole(tmp_path: Path, options: RenderOptions,
                                      inventory: str) -> None:
    """No line of the generated file is as long as the 4,095 bytes R reads of a line at a
    time when Rscript runs a file (an escape cut there did not parse: long values are
    pieces, one per line, and each host's own ssh options and container a line of its
    own), and run that way (its start() call replaced by one that prints what it got)
    the workers' code, the supervisor's script and each host's values arrive whole."""
    inv = parse_inventory(MISSION if inventory == "mission" else MANY)
    if inventory == "many" and options.launch == "classic":
        return  # (containers are refused there: the fast launch only)
    text = render(inv, options)
    assert max(len(line.encode()) for line in text.splitlines()) < 4095
    # Rscript parses a statement again from its start for each line it adds to it (a
    # local() of the whole launcher took it seconds): every statement is short
    # (and so with the library a sync made, which brings library.R)
    whole, synced = tmp_path / "whole.R", tmp_path / "synced.R"
    whole.write_text(text, encoding="ascii")
    synced.write_text(render(inv, dataclasses.replace(options, library_digest="0" * 64)),
                      encoding="ascii")
    spans = subprocess.run(["Rscript", "-e", (
        f"for (f in c({r_string(str(whole))}, {r_string(str(synced))})) {{\n"
        "  e <- parse(f, keep.source = TRUE)\n"
        "  n <- vapply(attr(e, 'srcref'), function(s) s[3L] - s[1L] + 1L, 1L)\n"
        "  cat(length(e), max(n), '\\n') }")], capture_output=True, text=True, timeout=60)
    for line in (spans.stdout.splitlines() or [""]):
        count, longest = map(int, line.split())
        assert count > 5 and longest <= 250, spans.stdout + spans.stderr
    assert spans.stdout.count("\n") == 2, spans.stdout + spans.stderr
    if "\nstart(list(" not in text:
        return  # (the classic launch: R's makeCluster, no script of ours)
    f = tmp_path / "cluster.R"
    f.write_text(text.replace("\nstart(list(", (
        "\nshow <- function(config) cat(nchar(config$worker_code),"
        " nchar(config$supervisor_script), length(config$host_ssh),"
        " vapply(config$containers, function(c) if (is.null(c)) '-' else c$options, ''),"
        " sep = '\\n')\nshow(list(")) + "cat(ls(all.names = TRUE), '\\n')\n", encoding="ascii")
    out = subprocess.run(["Rscript", str(f)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "LANG": "C.UTF-8"})
    assert out.returncode == 0, out.stderr
    *lines, names = out.stdout.splitlines()
    # (the launcher's environment is gone from the caller's once the file has run)
    assert [n for n in names.split() if n != ".Random.seed"] == [
        "machineAddresses", "primary", "spec"], names
    assert lines[:3] == [str(len(WORKER_CODE)), str(len(_R_SOURCES["supervisor.sh"])),
                         str(len(inv.hosts))]
    assert lines[3:] == [c.options_line if c else "-" for c in (h.container for h in inv.hosts)
                         ] or not any(h.container for h in inv.hosts)
