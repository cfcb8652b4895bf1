"""Stopping pmfsd while a process still uses the mount: SIGTERM unmounts lazily, so the kernel keeps the
connection while anyone holds a file or a working directory there. pmfsd gives them a short grace, then ends
the connection (fusectl's abort, as a libfuse daemon's exit would), writes back and exits 0; the holder's next
call fails with ENOTCONN and what it wrote before is kept."""
import errno
import os
import time

import pytest

from conftest import mount_entry, serve

GRACE = 5   # FUSEMount.stopGrace


@pytest.mark.parametrize("sandbox", ["namespace", "none"])
def test_stop_ends_a_mount_that_a_file_keeps_busy(sandbox):
    def configure(fs):
        fs.start_args += ["--sandbox", sandbox]
    for fs in serve(f"pmfs-stop-{sandbox}", configure):
        held = os.open(fs.path("held"), os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            os.write(held, b"written before the stop\n")
            start = time.monotonic()
            fs.stop(timeout=GRACE + 25)   # exit 0, mount gone
            took = time.monotonic() - start
            assert GRACE - 0.5 < took < GRACE + 20, f"stopped after {took:.1f} s"
            log = fs.this_start_log()
            assert "is still in use" in log and "ending the FUSE connection" in log, log
            assert "unmount helper" not in log, log
            with pytest.raises(OSError) as e:
                os.fstat(held)
            assert e.value.errno in (errno.ENOTCONN, errno.ECONNABORTED), e.value
        finally:
            try:
                os.close(held)   # the flush at close may fail too: the connection is gone
            except OSError:
                pass
        fs.start()
        with open(fs.path("held"), "rb") as f:
            assert f.read() == b"written before the stop\n"


def test_stop_without_users_does_not_wait_for_the_grace():
    for fs in serve("pmfs-stop-idle"):
        with open(fs.path("f"), "wb") as f:
            f.write(b"x")
        start = time.monotonic()
        fs.stop()
        took = time.monotonic() - start
        assert took < GRACE, f"an idle mount took {took:.1f} s to stop"
        assert "is still in use" not in fs.this_start_log()
        assert mount_entry(fs.mnt) is None
        fs.start()
        with open(fs.path("f"), "rb") as f:
            assert f.read() == b"x"
