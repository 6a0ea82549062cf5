"""What each role of this process is doing, as its supervisor last said; /readyz shows it."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from orderstream.http.schemas import iso_timestamp

log = logging.getLogger(__name__)

# An error's text in /readyz stays short: the log has the traceback.
_ERROR_MAX_CHARS = 300


class Phase(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"


@dataclass(frozen=True)
class RoleState:
    """One role's phase, and while it fails, why and since how many attempts."""

    phase: Phase
    failures: int = 0  # consecutive failed attempts
    error: str | None = None  # the last failure
    retry_at: datetime | None = None

    def describe(self) -> str:
        """Return the state as /readyz shows it: ``running``, or what failed and what next."""
        if self.phase is Phase.RESTARTING:
            when = iso_timestamp(self.retry_at) if self.retry_at else "soon"
            return f"restarting at {when} (attempt {self.failures} failed): {self.error}"
        if self.phase is Phase.STARTING and self.failures:
            return f"starting (attempt {self.failures + 1}, last failure: {self.error})"
        return self.phase.value


def describe_error(error: BaseException) -> str:
    """Return ``Type: message``, cut to a length a health check can show."""
    text = str(error)
    described = f"{type(error).__name__}: {text}" if text else type(error).__name__
    if len(described) > _ERROR_MAX_CHARS:
        described = described[: _ERROR_MAX_CHARS - 3] + "..."
    return described


class RoleRegistry:
    """The roles of this process by name, written by the supervisor, read by /readyz.

    ``share_at``: a file that also gets the roles' states on every change, for the
    status service's other processes (``SharedRoles``) to answer /readyz as this one does.
    """

    def __init__(self, share_at: Path | None = None) -> None:
        self._states: dict[str, RoleState] = {}
        self._share_at = share_at

    def set(self, role: str, state: RoleState) -> None:
        self._states[role] = state
        if self._share_at is not None:
            self._share(self._share_at)

    def _share(self, path: Path) -> None:
        # Renamed into place: a reader sees the previous states or these, never half.
        body = json.dumps({"roles": self.describe(), "all_running": self.all_running()})
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        partial.write_text(body)
        partial.replace(path)

    def get(self, role: str) -> RoleState | None:
        return self._states.get(role)

    def describe(self) -> dict[str, str]:
        """Return each role's state as text, in the order the roles were first set."""
        return {role: state.describe() for role, state in self._states.items()}

    def all_running(self) -> bool:
        return all(state.phase is Phase.RUNNING for state in self._states.values())


class SharedRoles(RoleRegistry):
    """The roles of another process (`orderstream run`), as its registry shares them.

    A status service process started beside `orderstream run` answers /readyz with the
    roles of the process that started it, whichever process takes the connection.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = path

    def _read(self) -> tuple[dict[str, str], bool]:
        try:
            shared = json.loads(self._path.read_text())
            return dict(shared["roles"]), bool(shared["all_running"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("the roles shared at %s cannot be read: %r", self._path, exc)
            return {}, False

    def describe(self) -> dict[str, str]:
        return self._read()[0]

    def all_running(self) -> bool:
        return self._read()[1]
