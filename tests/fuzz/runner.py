"""The parent's side of the fuzz target: one worker process, restarted after a crash or a hang.

`Worker.run(case)` returns None when the case passed, else what went wrong: the worker's
report, or how it died (signal or exit status, and the tail of what it wrote to stderr,
where a sanitizer's report goes), or that it did not answer in time.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile

import disagmoe

from fuzz.worker import read_frame, write_frame

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")
# The worker imports the disagmoe that this process imported (the checkout's, or the
# sanitizer build's copy).
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(disagmoe.__file__)))


class Worker:
    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.stderr = None
        self.cases = 0
        self.restarts = 0

    def start(self) -> None:
        env = dict(os.environ, DISAGMOE_FUZZ_PACKAGE_ROOT=PACKAGE_ROOT)
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=env
        )

    def run(self, case: tuple) -> str | None:
        if self.proc is None:
            self.start()
        self.cases += 1
        try:
            write_frame(self.proc.stdin, case)
        except BrokenPipeError:
            return self.died(case)
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        if not ready:
            self.proc.kill()
            self.proc.wait()
            self.forget()
            return f"the worker did not answer within {self.timeout} s (a hang?)"
        try:
            return read_frame(self.proc.stdout)
        except EOFError:
            pass
        return self.died(case)

    def died(self, case: tuple) -> str:
        status = self.proc.wait()
        how = f"signal {signal.Signals(-status).name}" if status < 0 else f"exit status {status}"
        self.stderr.seek(0)
        tail = self.stderr.read()[-6000:].decode(errors="replace")
        self.forget()
        return f"the worker died ({how}); its stderr ends:\n{tail}"

    def forget(self) -> None:
        self.proc = None
        self.stderr.close()
        self.restarts += 1

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
            self.stderr.close()
            self.proc = None
