"""The role supervisor: a failing role restarts alone, with backoff; stopping is bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mode import Service

from orderstream.http.roles import Phase, RoleRegistry
from orderstream.services import Backoff, RoleFactory, Supervisor

FAST = Backoff(first_s=0.01, max_s=0.04, healthy_after_s=60)


class Role(Service):
    """A role that runs until stopped; subclasses fail in one way or another."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped = False

    async def on_stop(self) -> None:
        self.stopped = True


class CrashingRole(Role):
    """A role whose task raises after ``after`` seconds: mode crashes the service."""

    def __init__(self, after: float = 0.0) -> None:
        super().__init__()
        self.after = after

    @Service.task
    async def _work(self) -> None:
        await asyncio.sleep(self.after)
        raise RuntimeError("boom")


class FailingStartRole(Role):
    async def on_start(self) -> None:
        raise OSError("address already in use")


class HangingStartRole(Role):
    async def on_start(self) -> None:
        await asyncio.sleep(3600)


class HangingStopRole(Role):
    async def on_stop(self) -> None:
        await asyncio.sleep(3600)


@dataclass
class Made:
    """The instances a factory made, oldest first."""

    services: list[Role] = field(default_factory=list)

    def factory(self, *makers: Callable[[], Role]) -> RoleFactory:
        """Make with ``makers`` in turn; the last one for every later attempt."""

        def make() -> Role:
            maker = makers[min(len(self.services), len(makers) - 1)]
            self.services.append(maker())
            return self.services[-1]

        return make


@dataclass(frozen=True)
class RecordingBackoff(Backoff):
    """Backoff that records the failure counts it was asked about, and waits little."""

    asked: list[int] = field(default_factory=list)

    def delay(self, failures: int) -> float:
        self.asked.append(failures)
        return 0.01


async def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(first_s=1, max_s=30)
    assert [backoff.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.delay(100_000) == 30  # days of failures: no float overflow


async def test_a_crashing_role_is_restarted_alone_with_a_fresh_instance() -> None:
    steady, flaky = Made(), Made()
    registry = RoleRegistry()
    supervisor = Supervisor(
        {"steady": steady.factory(Role), "flaky": flaky.factory(CrashingRole)},
        registry,
        backoff=FAST,
    )
    await supervisor.start()
    try:
        await wait_until(
            lambda: (
                len(flaky.services) >= 4 and registry.describe()["flaky"].startswith("restarting")
            )
        )
        assert len(steady.services) == 1
        assert steady.services[0].state == "running"
        assert all(service.stopped for service in flaky.services[:3])
        assert not supervisor.crashed
        assert "RuntimeError: boom" in (registry.describe()["flaky"])
        assert not registry.all_running()
    finally:
        await supervisor.stop()
    assert steady.services[0].stopped
    assert registry.describe() == {"steady": "stopped", "flaky": "stopped"}


async def test_a_role_that_fails_to_start_is_named_then_runs() -> None:
    made = Made()
    registry = RoleRegistry()
    supervisor = Supervisor(
        {
            "web": made.factory(FailingStartRole, FailingStartRole, Role),
            "other": Made().factory(Role),
        },
        registry,
        backoff=Backoff(first_s=0.2, max_s=1, healthy_after_s=60),
    )
    await supervisor.start()
    try:
        await wait_until(lambda: registry.describe()["web"].startswith("restarting"))
        described = registry.describe()
        assert "(attempt 1 failed)" in described["web"]
        assert "OSError: address already in use" in described["web"]
        assert described["other"] == "running"
        await wait_until(registry.all_running)
        assert len(made.services) == 3
        assert all(service.stopped for service in made.services[:2])  # cleaned up
    finally:
        await supervisor.stop()


async def test_failures_count_up_and_reset_after_a_healthy_run() -> None:
    backoff = RecordingBackoff(healthy_after_s=0.3)
    made = Made()
    quick, slow = (lambda: CrashingRole(after=0)), (lambda: CrashingRole(after=0.4))
    supervisor = Supervisor(
        {"flaky": made.factory(quick, quick, quick, slow, quick)}, RoleRegistry(), backoff=backoff
    )
    await supervisor.start()
    try:
        await wait_until(lambda: len(backoff.asked) >= 5)
    finally:
        await supervisor.stop()
    # Three quick failures, then one after a healthy run (counted afresh), then quick.
    assert backoff.asked[:5] == [1, 2, 3, 1, 2]


async def test_stop_is_bounded_when_a_role_hangs_in_stop() -> None:
    steady = Made()
    registry = RoleRegistry()
    supervisor = Supervisor(
        {"stuck": Made().factory(HangingStopRole), "steady": steady.factory(Role)},
        registry,
        stop_timeout_s=0.2,
    )
    await supervisor.start()
    await wait_until(registry.all_running)
    started = time.monotonic()
    await supervisor.stop()
    assert time.monotonic() - started < 1.5
    assert steady.services[0].stopped
    assert registry.describe() == {"stuck": "stopped", "steady": "stopped"}


async def test_stop_ends_a_start_that_hangs_and_a_backoff_wait() -> None:
    hanging, failing = Made(), Made()
    registry = RoleRegistry()
    supervisor = Supervisor(
        {
            "hanging": hanging.factory(HangingStartRole),
            "failing": failing.factory(FailingStartRole),
        },
        registry,
        backoff=Backoff(first_s=3600),
        stop_timeout_s=1,
    )
    await supervisor.start()
    await wait_until(lambda: registry.describe()["failing"].startswith("restarting"))
    assert registry.describe()["hanging"] == "starting"
    started = time.monotonic()
    await supervisor.stop()
    assert time.monotonic() - started < 1.5
    assert hanging.services[0].stopped
    assert registry.describe() == {"hanging": Phase.STOPPED, "failing": Phase.STOPPED}
