"""Waiting for a program started as a subprocess to answer its health endpoint."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Callable


class NotLive(RuntimeError):
    """The process exited, or did not answer 200 in time; the message has its log's tail."""


def wait_until_live(process: subprocess.Popen, url: str, timeout: float, what: str, log_tail: Callable[[], str]) -> None:
    """Return once ``url`` answers 200; raise NotLive when ``process`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise NotLive(f"{what} exited with {process.returncode}:\n{log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise NotLive(f"{what} did not answer {url} within {timeout:.0f} s:\n{log_tail()}")
        time.sleep(0.2)
