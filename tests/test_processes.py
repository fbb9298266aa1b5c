"""Child processes never outlive what they serve: ``service.processes`` on real processes."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from service.processes import session_members, stop_session
from tests.conftest import wait_for

LEADER = """
import subprocess, sys, time
# a member of the session in a process group of its own, as an algorithm's command runs
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], process_group=0)
print(helper.pid, flush=True)
time.sleep(600)
"""

PARENT = """
import subprocess, sys, time
from service.processes import die_with_parent
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], preexec_fn=die_with_parent())
print(child.pid, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_stop_session_reaches_members_that_left_the_leaders_group() -> None:
    leader = subprocess.Popen([sys.executable, "-c", LEADER], stdout=subprocess.PIPE, start_new_session=True)
    assert leader.stdout is not None
    helper = int(leader.stdout.readline())
    assert helper in session_members(leader.pid)
    stop_session(leader, grace_s=0.5)
    assert leader.returncode == -signal.SIGTERM
    wait_for(lambda: not alive(helper), timeout_s=10, what="the helper in its own group to be killed")


def test_a_child_dies_with_its_parent_however_the_parent_dies() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert alive(child)
    parent.kill()  # SIGKILL: no clean-up of its own runs
    parent.wait()
    wait_for(lambda: not alive(child), timeout_s=10, what="the orphaned child to be killed")
