"""``minisd ARGV`` in a process of its own, as a user runs it, without paying for a fresh Python each time.

The command runs in a child forked from the test process (``os.fork``), with its own working directory,
environment, standard output and standard error, through the same ``minisd.cli.main`` that ``python -m minisd``
calls; the child's exit status is the command's. What the tests check is what a fresh ``python -m minisd`` gives
(the lines it prints, its status, the files it leaves), at a tenth of the cost: torch and minisd are imported once,
by the parent, instead of once per case (about 2.5 s each on these cores).
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

# The modules a command imports on first use, imported here once so that no child pays for them.
import minisd.eval.report  # noqa: F401
import minisd.figures.chapters  # noqa: F401
import minisd.generate  # noqa: F401
import minisd.pipelines  # noqa: F401
import minisd.train.command  # noqa: F401
from minisd.cli import main


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str


def _child(argv: list[str], cwd: Path, env: dict[str, str], stdout: int, stderr: int) -> None:
    """Run the command in this (forked) process and leave with its exit status; never return into pytest."""
    code = 1
    try:
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        sys.stdout = open(1, "w", closefd=False, buffering=1)
        sys.stderr = open(2, "w", closefd=False, buffering=1)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        sys.argv = ["minisd", *argv]
        code = main(argv)
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    except BaseException:  # what Python itself would print for an uncaught exception
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_minisd(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 300) -> Finished:
    """``minisd ARGV`` in ``cwd`` with environment ``env``; its status, standard output and standard error."""
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        pid = os.fork()
        if pid == 0:
            _child(list(argv), Path(cwd), dict(env), stdout.fileno(), stderr.fileno())
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise TimeoutError(f"minisd {' '.join(argv)} ran past {timeout} s")
            time.sleep(0.01)
        stdout.seek(0)
        stderr.seek(0)
        return Finished(os.waitstatus_to_exitcode(status), stdout.read().decode(), stderr.read().decode())
