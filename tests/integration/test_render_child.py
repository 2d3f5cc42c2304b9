"""A render process whose worker went away ends quietly: no traceback in the worker's
output (a worker that exits while its render process starts closes the pipe under it)."""

from __future__ import annotations

import subprocess
import sys


def test_a_render_process_whose_parent_closed_the_pipe_exits_without_a_traceback() -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "bulkgen.render_child", str(512 * 2**20)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None and child.stdin is not None and child.stderr is not None
    child.stdout.close()  # the parent is gone before the child says it is ready
    child.stdin.close()
    with child.stderr:
        stderr = child.stderr.read()
    child.wait(timeout=60)
    assert b"Traceback" not in stderr and b"BrokenPipe" not in stderr, stderr.decode()
    assert child.returncode == 1
