"""pmfsd as an operator meets it across restarts."""
import errno
import os
import time

import pytest

from conftest import Pmfs, require_fuse, write_file


def test_start_detaches_the_dead_mount_a_killed_pmfsd_left():
    """A SIGKILLed pmfsd leaves a FUSE mount answering ENOTCONN (over io_uring ECONNABORTED, or ECANCELED for a
    request the kernel had queued on a ring being torn down); the next start detaches it and mounts."""
    require_fuse()
    fs = Pmfs(name="pmfs-dead-mount")
    try:
        fs.start()
        write_file(fs.path("kept"), b"x")
        fs.proc.kill()
        fs.proc.wait()
        fs.proc = None
        with pytest.raises(OSError) as dead:
            os.stat(fs.path("kept"))
        assert dead.value.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.ECANCELED)
        fs.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                os.stat(fs.path("kept"))
                break
            except OSError as e:
                assert e.errno in (errno.ENOTCONN, errno.ECONNABORTED) and time.monotonic() < deadline, f"{e}; pmfsd said:\n{fs.stderr()}"
                time.sleep(0.05)
        assert "detached it" in fs.stderr()
        fs.stop()
    finally:
        fs.cleanup()
