"""Bringing results back, with each host's sending side a real local process (the tar
stream a host's ``tar -cf -`` sends, written by a child process here) in place of ssh:
how long a sender may be silent, names that would meet in one directory, a results
directory that cannot be written, and a job record cut short. (The whole path over
ssh is in test_results.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sshcluster.cli import cli
from sshcluster.inventory import Host, Inventory, load_inventory
from sshcluster.jobs import results
from sshcluster.jobs.control import list_jobs
from sshcluster.jobs.job import RunOptions, run

#: A sender: writes a tar of FILES (name -> text), sleeping PAUSE seconds before each
#: member, then ends.
SENDER = """
import io, sys, tarfile, time, json
files, pause = json.loads(sys.argv[1]), float(sys.argv[2])
out = sys.stdout.buffer
for name, text in files.items():
    time.sleep(pause)
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    out.write(info.tobuf(tarfile.USTAR_FORMAT) + data + bytes(-len(data) % 512))
    out.flush()
out.write(bytes(1024))
out.flush()
"""


def _inventory(tmp_path: Path, labels: list[str]) -> Inventory:
    path = tmp_path / "hosts.yaml"
    path.write_text("hosts:\n" + "".join(f"  - host: {label}\n" for label in labels))
    return load_inventory(path)


def _senders(monkeypatch: pytest.MonkeyPatch,
             plan: dict[str, tuple[dict[str, str], float]]) -> None:
    """Each host (by label) sends its files with its pause."""
    def argv(inventory: Inventory, host: Host) -> list[str]:
        files, pause = plan[host.label]
        return [sys.executable, "-c", f"import sys; sys.stdin.read(); exec({SENDER!r})",
                json.dumps(files), str(pause)]
    monkeypatch.setattr(results, "argv", argv)


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_a_sender_that_keeps_sending_is_never_cut_off(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The silence allowed is 1 s; a host sends for about 2.5 s, a file every 0.5 s:
    all of it comes (a limit on the whole transfer cut it off part-way)."""
    monkeypatch.setattr(results, "SILENCE_TIMEOUT", 1.0)
    files = {f"part{i}.txt": f"part {i}\n" for i in range(5)}
    _senders(monkeypatch, {"node1": (files, 0.5)})
    got = results.fetch_results(_inventory(tmp_path, ["node1"]), tmp_path / "out")
    assert got.errors == {} and got.files == {"node1": 5}
    assert _files(tmp_path / "out") == files


def test_a_sender_silent_too_long_is_given_up_and_named(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "SILENCE_TIMEOUT", 1.0)
    _senders(monkeypatch, {"node1": ({"a.txt": "a\n"}, 0.0),
                           "node2": ({"late.txt": "late\n"}, 4.0)})
    got = results.fetch_results(_inventory(tmp_path, ["node1", "node2"]), tmp_path / "out")
    assert got.files == {"node1": 1} and set(got.errors) == {"node2"}
    assert _files(tmp_path / "out") == {"a.txt": "a\n"}


def test_a_file_where_another_host_has_a_directory_is_kept_apart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """node1 wrote results/fit (a file), node2 results/fit/part1.rds: both come back,
    each under its host's directory; names no other host has stay where they are."""
    _senders(monkeypatch, {"node1": ({"fit": "one\n", "solo1.txt": "s1\n"}, 0.0),
                           "node2": ({"fit/part1.rds": "two\n", "sub/solo2.txt": "s2\n"}, 0.0)})
    got = results.fetch_results(_inventory(tmp_path, ["node1", "node2"]), tmp_path / "out")
    assert got.errors == {} and got.files == {"node1": 2, "node2": 2}
    assert _files(tmp_path / "out") == {"node1/fit": "one\n", "node2/fit/part1.rds": "two\n",
                                        "solo1.txt": "s1\n", "sub/solo2.txt": "s2\n"}


def test_a_name_taken_by_a_directory_in_dest_is_named_and_the_rest_come(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    (out / "x.txt").mkdir(parents=True)  # (left by an earlier run, say)
    _senders(monkeypatch, {"node1": ({"x.txt": "x\n", "y.txt": "y\n"}, 0.0)})
    got = results.fetch_results(_inventory(tmp_path, ["node1"]), out)
    assert got.files == {"node1": 1}
    assert "could not write 1 of its files" in got.errors["node1"]
    assert str(out / "x.txt") in got.errors["node1"]
    assert (out / "y.txt").read_text() == "y\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".incoming")]


def test_results_into_a_file_is_refused_before_the_job_starts(tmp_path: Path) -> None:
    """--results naming a file: a clear error (exit 2) before any host is asked, and
    no job record left half made."""
    inv = tmp_path / "hosts.yaml"
    inv.write_text("hosts:\n  - host: 192.0.2.1\n")  # (never reached: refused first)
    script = tmp_path / "job.R"
    script.write_text("1\n")
    taken = tmp_path / "taken"
    taken.write_text("a file\n")
    state = tmp_path / "state"
    done = subprocess.run([sys.executable, "-m", "sshcluster", "run", "--results",
                           str(taken / "out"), str(inv), str(script)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SSHCLUSTER_STATE_DIR": str(state),
                               "NO_COLOR": "1"})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"cannot make the results' directory {taken / 'out'}" in done.stderr
    assert not (state / "runs").exists() or not list((state / "runs").iterdir())


@pytest.mark.parametrize("text", ["", "{\"status\": 0", "{\"status\": 0}\n", "[1, 2]\n"])
def test_a_record_cut_short_is_listed_as_unknown(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 text: str) -> None:
    """One run.json that a full disk cut short (or that lacks a field): that job is
    listed as unknown, saying why, and every other job still is listed."""
    monkeypatch.setenv("SSHCLUSTER_STATE_DIR", str(tmp_path))
    bad = tmp_path / "runs" / "20260101-000000-dddddd"
    good = tmp_path / "runs" / "20260101-000000-eeeeee"
    for d in (bad, good):
        d.mkdir(parents=True)
    (bad / "run.json").write_text(text)
    (good / "run.json").write_text(json.dumps({"status": 0, "script": "/x/fit.R",
                                               "phases": {"script": 1.0}}))
    jobs = {j.job: j for j in list_jobs()}
    assert jobs[bad.name].state == "unknown"
    assert "cannot be read" in str(jobs[bad.name].detail)
    assert jobs[good.name].state == "done"
    shown = CliRunner().invoke(cli, ["jobs"])
    assert shown.exit_code == 0, shown.output
    assert bad.name in shown.output and good.name in shown.output



def _inventory_never_reached(tmp_path: Path) -> Path:
    inv = tmp_path / "never.yaml"
    # (never reached: refused first; and were it reached, it is this machine)
    inv.write_text("hosts:\n  - host: 127.0.0.1\n    ssh_port: 9\n")
    return inv


def test_results_naming_a_file_is_refused_as_not_a_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--results naming a file that is there: refused at once, before any host is
    asked, saying it is not a directory (the command line's own check, and the Python
    call's); the file is left as it was."""
    monkeypatch.setenv("SSHCLUSTER_STATE_DIR", str(tmp_path / "state"))
    script = tmp_path / "job.R"
    script.write_text("1\n")
    taken = tmp_path / "taken"
    taken.write_text("a file\n")
    inv = _inventory_never_reached(tmp_path)
    done = CliRunner().invoke(cli, ["run", "--results", str(taken), str(inv), str(script)])
    assert done.exit_code == 2 and "is a file" in done.output, done.output
    with pytest.raises(results.ResultsError) as e:
        run(inv, script, RunOptions(results=str(taken)))
    assert e.value.message == (f"cannot make the results' directory {taken}: it is there "
                            "and not a directory")
    assert taken.read_text() == "a file\n"
    assert not (tmp_path / "state" / "runs").exists()


def test_the_results_directory_is_proven_and_not_left(tmp_path: Path) -> None:
    """Before a job starts, the results' directory is proven by making it (and its
    missing parents) and removing again what was made; one that was there stays."""
    deep = tmp_path / "a" / "b" / "out"
    assert results.results_dir(deep, keep=False) == deep
    assert not (tmp_path / "a").exists()
    (tmp_path / "had").mkdir()
    results.results_dir(tmp_path / "had" / "x" / "y", keep=False)
    assert (tmp_path / "had").is_dir() and not list((tmp_path / "had").iterdir())
    results.results_dir(tmp_path / "had", keep=False)
    assert (tmp_path / "had").is_dir()
    # (keep=True, as fetch_results asks for it: made, with its parents)
    results.results_dir(deep)
    assert deep.is_dir()
    # a path that climbs back out of a directory it makes (new/../out): as mkdir -p
    back = tmp_path / "new" / ".." / "out"
    results.results_dir(back, keep=False)
    assert not (tmp_path / "new").exists() and not (tmp_path / "out").exists()
    results.results_dir(back)
    assert (tmp_path / "out").is_dir()


def test_a_job_whose_script_is_missing_makes_no_results_directory(tmp_path: Path) -> None:
    """No such script: refused (exit 2) before anything, and --results DIR not made."""
    done = CliRunner().invoke(cli, ["run", "--results", str(tmp_path / "new" / "out"),
                                    str(_inventory_never_reached(tmp_path)),
                                    str(tmp_path / "missing.R")])
    assert done.exit_code == 2, done.output
    assert not (tmp_path / "new").exists()
