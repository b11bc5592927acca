"""Atomic writes and clean interrupts: no stage leaves a half-written file behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from utils.io import atomic_path, read_json, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _leftovers(folder) -> list[str]:
    return sorted(f for f in os.listdir(folder) if ".tmp" in f)


def test_atomic_path_renames_on_success_with_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "out.json"
    write_json(target, {"a": 1})
    assert read_json(target) == {"a": 1}
    umask = os.umask(0)
    os.umask(umask)
    assert (os.stat(target).st_mode & 0o777) == 0o666 & ~umask
    assert _leftovers(target.parent) == []


def test_atomic_path_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "out.ply"
    target.write_bytes(b"old complete file")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.endswith(".ply") and os.path.dirname(tmp) == str(tmp_path)
            with open(tmp, "wb") as f:
                f.write(b"half of the new")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old complete file"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_a_write_leaves_no_file(tmp_path, sig, status):
    """A stage killed while writing (run_main turns SIGTERM / SIGINT into an exception) removes the
    temporary file and leaves the previous version of the output untouched."""
    target = tmp_path / "out.ply"
    target.write_bytes(b"old complete file")
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {ROOT!r})
        from utils.cli import run_main
        from utils.io import atomic_path

        def main():
            with atomic_path({str(target)!r}) as tmp:
                with open(tmp, "wb") as f:
                    f.write(b"half of the new")
                    f.flush()
                    print("writing", flush=True)
                    time.sleep(60)

        run_main(main)
        """
    )
    # the child starts with the default SIGINT action, as a stage started from a terminal does (a test run in the
    # background inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline().strip() == "writing"
        assert len(_leftovers(tmp_path)) == 1  # the temporary file exists while writing
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == status, err
    assert target.read_bytes() == b"old complete file"
    assert _leftovers(tmp_path) == []
