"""What each role of this process is doing, as its supervisor last said; /readyz shows it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from orderstream.http.schemas import iso_timestamp

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
    """The roles of this process by name, written by the supervisor, read by /readyz."""

    def __init__(self) -> None:
        self._states: dict[str, RoleState] = {}

    def set(self, role: str, state: RoleState) -> None:
        self._states[role] = state

    def get(self, role: str) -> RoleState | None:
        return self._states.get(role)

    def describe(self) -> dict[str, str]:
        """Return each role's state as text, in the order the roles were first set."""
        return {role: state.describe() for role, state in self._states.items()}

    def all_running(self) -> bool:
        return all(state.phase is Phase.RUNNING for state in self._states.values())
