"""The bounded CI run of the kill -9 crash campaign (tools/crash/campaign.py): 12 points over all four
mixes through the host mount, the binaries under test. PMFS_CRASH_POINTS and PMFS_CRASH_SEED change the
count and the seed; the manual campaign is `tools/crash/campaign.py --points 1000`."""
import os
import subprocess
import sys

from conftest import BUILD, ENV, LONG, ROOT, require_fuse


def test_crash_campaign():
    require_fuse()
    points = os.environ.get("PMFS_CRASH_POINTS", "48" if LONG else "12")
    seed = os.environ.get("PMFS_CRASH_SEED", "20261202")
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "crash" / "campaign.py"), "--points", points,
                          "--seed", seed, "--bin", str(BUILD), "--reformat-every", "6"],
                         env=ENV, capture_output=True, text=True, timeout=900)
    print(run.stdout[-6000:], run.stderr[-3000:])
    assert run.returncode == 0, f"crash campaign failed:\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    assert f"{points} passed" in run.stdout
