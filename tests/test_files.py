"""Safe file writes: one helper for every file sshcluster writes, safe in shared directories.

The attacker is a real other user (``nobody``) planting symlinks in a world-writable,
sticky directory, as in ``/tmp``; the victim is this test's user (root here, which is
the worst case: root can write anywhere the link points).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sshcluster.errors import UnsafePathError
from sshcluster.files import append_line, atomic_write

NOBODY = 65534


def _as_nobody(*argv: str) -> None:
    subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                    *argv], check=True)


@pytest.fixture
def shared_dir(root: None) -> Iterator[Path]:
    """A directory like /tmp: everyone may create files in it (0777 and sticky); acting as
    another user needs root."""
    top = Path(tempfile.mkdtemp(prefix="sshcluster-shared-"))
    top.chmod(0o755)  # the other user must reach the shared directory
    d = top / "shared"
    d.mkdir()
    d.chmod(0o1777)
    yield d
    shutil.rmtree(top)


def test_replaces_whole_file_with_mode(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    atomic_write(target, "new text\n")
    assert target.read_text() == "new text\n"
    assert not [p for p in tmp_path.iterdir() if p.name != "out.txt"]  # no temporary left


def test_secret_is_private_from_its_first_byte(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The temporary file already has mode 0600 when the secret is in it, before the
    rename, whatever the umask allows."""
    seen: list[int] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    old = os.umask(0)
    try:
        atomic_write(tmp_path / "k.pem", "SECRET", mode=0o600)
    finally:
        os.umask(old)
    assert seen == [0o600]
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600


def test_own_symlink_is_followed(tmp_path: Path) -> None:
    real = tmp_path / "real.R"
    real.write_text("old")
    link = tmp_path / "link.R"
    link.symlink_to(real)
    assert atomic_write(link, "new") == real
    assert link.is_symlink() and real.read_text() == "new"


def test_planted_symlink_is_refused(shared_dir: Path, tmp_path: Path) -> None:
    """Another user links cluster.R in a shared directory to the victim's file: writing
    cluster.R must not touch that file."""
    victim_file = tmp_path / "victim_bashrc"
    victim_file.write_text("precious\n")
    link = shared_dir / "cluster.R"
    _as_nobody("ln", "-s", str(victim_file), str(link))
    assert link.lstat().st_uid == NOBODY
    with pytest.raises(UnsafePathError, match="belongs to another user"):
        atomic_write(link, "evil")
    with pytest.raises(UnsafePathError):
        append_line(link, "evil")
    assert victim_file.read_text() == "precious\n"
    assert os.readlink(link) == str(victim_file)


def test_planted_symlink_through_the_cli(shared_dir: Path, tmp_path: Path) -> None:
    """`sshcluster render -o` into a shared directory with a planted link: exit 2, a
    message, no traceback, the link's target untouched."""
    inv = tmp_path / "hosts.yaml"
    inv.write_text("primary: 10.0.0.1\nhosts:\n  - host: 10.0.0.2\n    ncore: 2\n")
    victim_file = tmp_path / "victim.txt"
    victim_file.write_text("precious\n")
    link = shared_dir / "cluster.R"
    _as_nobody("ln", "-s", str(victim_file), str(link))
    out = subprocess.run([sys.executable, "-m", "sshcluster", "render", str(inv), "-o",
                          str(link)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "belongs to another user" in out.stderr and "Traceback" not in out.stderr
    assert victim_file.read_text() == "precious\n"


def test_a_file_another_user_planted_is_not_written_into(shared_dir: Path) -> None:
    """A world-writable file of the attacker's at the target path: the new text goes into
    a new file of the caller's (the attacker keeps no handle on it); the attacker's file
    is never written into, so a reader the attacker left open sees nothing of it."""
    target = shared_dir / "cluster.R"
    _as_nobody("sh", "-c", f"echo mine > {target}; chmod 666 {target}")
    with open(target) as attackers:  # what the attacker's open file descriptor would see
        atomic_write(target, "secret stuff\n", mode=0o600)
        assert attackers.read() == "mine\n"
    st = target.stat()
    assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o600
    assert target.read_text() == "secret stuff\n"
    assert [p.name for p in shared_dir.iterdir()] == ["cluster.R"]  # no temporary left


def test_attacker_cannot_read_the_temporary(shared_dir: Path) -> None:
    """A key written into a shared directory is never readable by the other user."""
    target = shared_dir / "rwork.pem"
    atomic_write(target, "SECRET KEY\n", mode=0o600)
    probe = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                            "--clear-groups", "cat", str(target)], capture_output=True)
    assert probe.returncode != 0 and b"SECRET" not in probe.stdout


def test_append_line_keeps_mode_and_content(tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text("a ssh-ed25519 AAAA")  # no final newline
    kh.chmod(0o640)
    append_line(kh, "b ssh-ed25519 BBBB")
    assert kh.read_text() == "a ssh-ed25519 AAAA\nb ssh-ed25519 BBBB\n"
    assert stat.S_IMODE(kh.stat().st_mode) == 0o640
    fresh = tmp_path / "new_known_hosts"
    append_line(fresh, "c ssh-ed25519 CCCC", mode=0o600)
    assert fresh.read_text() == "c ssh-ed25519 CCCC\n"
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600


def test_a_non_regular_target_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UnsafePathError, match="is a FIFO"):
        atomic_write(fifo, "through the pipe\n")
    with pytest.raises(UnsafePathError, match="is a character device"):
        atomic_write("/dev/null", "x")
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path, "x")


def _planted_fifo(shared_dir: Path, name: str) -> Path:
    fifo = shared_dir / name
    _as_nobody("mkfifo", "-m", "666", str(fifo))
    assert fifo.lstat().st_uid == NOBODY
    return fifo


def _fifo_reader(fifo: Path) -> subprocess.Popen[bytes]:
    """The other user, reading whatever is written into ``fifo`` (until killed)."""
    return subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                             "--clear-groups", "cat", str(fifo)], stdout=subprocess.PIPE)


def test_a_planted_fifo_never_receives_a_key(shared_dir: Path) -> None:
    """Another user's FIFO at the key's path, with the other user reading it: the key is
    refused there, and nothing of it comes out of the FIFO."""
    fifo = _planted_fifo(shared_dir, "rwork.pem")
    reader = _fifo_reader(fifo)
    try:
        with pytest.raises(UnsafePathError, match="FIFO"):
            atomic_write(fifo, "SECRET KEY\n", mode=0o600)
    finally:
        # (the reader's open waits for a writer: one empty write lets it see the end)
        with open(os.open(fifo, os.O_WRONLY), "wb"):
            pass
        out, _ = reader.communicate(timeout=10)
    assert out == b""
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_append_line_reads_no_planted_fifo_nor_foreign_file(shared_dir: Path) -> None:
    """known_hosts at a shared path: a FIFO another user writes into (to choose the
    trusted keys) is refused without waiting for it, and so is a file of theirs."""
    fifo = _planted_fifo(shared_dir, "known_hosts")
    writer = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                               "--clear-groups", "sh", "-c",
                               f"echo 'evil ssh-ed25519 AAAAevil' > {fifo}"])
    try:
        with pytest.raises(UnsafePathError, match="FIFO"):
            append_line(fifo, "good ssh-ed25519 AAAAgood")
    finally:
        writer.kill()
        writer.wait(timeout=10)
    other = shared_dir / "known_hosts2"
    _as_nobody("sh", "-c", f"echo 'evil ssh-ed25519 AAAAevil' > {other}")
    with pytest.raises(UnsafePathError, match="belongs to another user"):
        append_line(other, "good ssh-ed25519 AAAAgood")
    assert other.read_text() == "evil ssh-ed25519 AAAAevil\n"


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_render_onto_a_fifo_or_device_is_a_clear_error(tmp_path: Path, kind: str) -> None:
    """`render -o FIFO` (nobody reading it) and a FIFO or device as the inventory: an
    error at once, no traceback, no hang (the subprocess timeout is only a hang guard)."""
    inv = tmp_path / "hosts.yaml"
    inv.write_text("primary: 10.0.0.1\nhosts:\n  - host: 10.0.0.2\n    ncore: 2\n")
    special = tmp_path / "special"
    if kind == "fifo":
        os.mkfifo(special)
    else:
        special = Path("/dev/zero")
    run = [sys.executable, "-m", "sshcluster", "render"]
    out = subprocess.run([*run, str(inv), "-o", str(special)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "not a regular file" in out.stderr and "Traceback" not in out.stderr
    for command in (["render"], ["check"]):
        out = subprocess.run([sys.executable, "-m", "sshcluster", *command, str(special)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
        assert ("a FIFO" if kind == "fifo" else "a character device") in out.stderr
