"""Runs a command; reports its exit status, wall time and own peak RSS (``measure.measured_run``).

    python experiments/bench/launcher.py REPORT TIMEOUT_S COMMAND...

Writes ``{"returncode", "wall_s", "peak_rss_mb"}`` as JSON to REPORT; a command still running
after TIMEOUT_S seconds is killed (exit status -9). ``os.wait4`` gives the command's own usage:
a child's ``ru_maxrss`` starts from its parent's resident size at the spawn, so the launcher, a
small process that imports nothing but the standard library, stands between a driver that has
loaded JAX or TensorFlow and the command it measures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time


def run(command: list[str], timeout_s: float) -> dict:
    """Runs ``command`` to its end (killed after ``timeout_s``): exit status, wall, peak RSS."""
    begin = time.perf_counter()
    child = subprocess.Popen(command)
    timer = threading.Timer(timeout_s, child.kill)
    timer.start()
    _, status, usage = os.wait4(child.pid, 0)
    wall_s = time.perf_counter() - begin
    timer.cancel()
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return {
        "returncode": child.returncode,
        "wall_s": wall_s,
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }


def main(argv: list[str]) -> None:
    """``argv``: this script, the report's path, the timeout in seconds, then the command."""
    report, timeout_s, *command = argv[1:]
    with open(report, "w") as f:
        json.dump(run(command, float(timeout_s)), f)


if __name__ == "__main__":
    main(sys.argv)
