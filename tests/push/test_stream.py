"""The archive's way to the hosts' ssh processes (stream.py): the chunks keep the
archive's bytes in order, a host's backlog is bounded in bytes, and every process gets
the same archive as tar_stream writes."""

from __future__ import annotations

import io
import os
import subprocess
import threading
from pathlib import Path

from sshcluster.push.manifest import local_manifest
from sshcluster.push.stream import _WHOLE, CHUNK, Fanout, _Backlog, _Chunks, tar_stream


def test_chunks_keep_the_order_and_hand_big_writes_on_whole() -> None:
    got: list[bytes] = []
    sink = _Chunks(got.append)
    small, big, bigger = b"h" * 512, os.urandom(_WHOLE), os.urandom(CHUNK + 1)
    for piece in (small, b"x" * 100, big, small, bigger, small):
        sink.write(piece)
    sink.flush()
    assert got[0] == small + b"x" * 100  # gathered, then handed on before the big one
    assert got[1] is big                  # as it was written: not copied
    assert b"".join(got) == small + b"x" * 100 + big + small + bigger + small
    assert len(got) == 5


def test_a_backlog_holds_a_bounded_number_of_bytes() -> None:
    backlog = _Backlog(16 << 20)
    chunk = b"\0" * (4 << 20)
    for _ in range(4):
        backlog.put(chunk)  # 16 MiB: none of these waits
    fifth = threading.Thread(target=backlog.put, args=(chunk,), daemon=True)
    fifth.start()
    fifth.join(0.5)
    assert fifth.is_alive()  # full: it waits for the writer
    assert backlog.get() is chunk
    fifth.join(10)
    assert not fifth.is_alive()
    # one chunk bigger than the limit still goes (alone)
    for _ in range(4):
        backlog.get()
    backlog.put(b"\0" * (20 << 20))
    assert len(backlog.get() or b"") == 20 << 20


def test_every_process_gets_the_same_archive(tmp_path: Path) -> None:
    src = tmp_path / "data"
    (src / "d").mkdir(parents=True)
    for i, size in enumerate((0, 100, _WHOLE - 1, _WHOLE, 512 << 10, 3 * CHUNK + 7)):
        (src / "d" / f"f{i}").write_bytes(os.urandom(size))
    manifest = local_manifest([src])
    dirs = [e for e in manifest.entries if e.kind == "d"]
    want = io.BytesIO()
    tar_stream(manifest.files, dirs, want, False)
    outs = [tmp_path / f"out{i}" for i in range(3)]
    procs = [subprocess.Popen(["sh", "-c", f"cat > {o}"], stdin=subprocess.PIPE)
             for o in outs]
    stream = Fanout(procs, b"PREFIX\n", manifest.files, dirs, lambda i, n: None, False)
    stream.run()
    for p in procs:
        assert p.wait(30) == 0
    assert stream.error is None
    for o in outs:
        assert o.read_bytes() == b"PREFIX\n" + want.getvalue()
