"""The host transport: pmfsd's --fuse-transport and the fuse module's enable_uring parameter.

auto turns enable_uring on as root and says so, then serves through io_uring; device never touches
it and serves through /dev/fuse. Requests are counted per transport in pmfsd's stop log."""
import os
import re

import pytest

from conftest import Pmfs, require_fuse, write_file, read_file

PARAM = "/sys/module/fuse/parameters/enable_uring"


def set_param(value):
    with open(PARAM, "w") as f:
        f.write(value)


def param():
    with open(PARAM) as f:
        return f.read().strip()


@pytest.fixture
def uring_param_off():
    require_fuse()
    if not os.path.exists(PARAM):
        pytest.skip("this kernel has no FUSE over io_uring")
    old = param()
    set_param("N")
    yield
    set_param(old)


def served(fs, transport):
    """Starts pmfsd with `transport`, does a little I/O, stops it; returns (start log, ring count, device count)."""
    fs.start_args = ["--fuse-transport", transport]
    fs.start()
    try:
        for i in range(20):
            write_file(fs.path(f"f{i}"), b"x" * 5000)
            assert read_file(fs.path(f"f{i}")) == b"x" * 5000
            os.unlink(fs.path(f"f{i}"))
    finally:
        os.chdir("/")
        fs.stop()
    log = fs.this_start_log()
    m = re.search(r"host mount: (\d+) request\(s\) over io_uring, (\d+) over /dev/fuse", log)
    assert m, log
    return log, int(m.group(1)), int(m.group(2))


def test_auto_turns_uring_on_and_says_so(uring_param_off):
    fs = Pmfs(name="pmfs-transport-auto")
    try:
        log, ring, device = served(fs, "auto")
        assert param() == "Y"
        assert "turned FUSE over io_uring on" in log, log
        assert "transport io_uring" in log, log
        assert ring >= 60 and ring > device, log
        fs.assert_clean()
    finally:
        fs.cleanup()


def test_device_never_touches_the_parameter(uring_param_off):
    fs = Pmfs(name="pmfs-transport-device")
    try:
        log, ring, device = served(fs, "device")
        assert param() == "N"
        assert "turned FUSE over io_uring on" not in log, log
        assert "transport /dev/fuse" in log, log
        assert ring == 0 and device >= 60, log
        fs.assert_clean()
    finally:
        fs.cleanup()
