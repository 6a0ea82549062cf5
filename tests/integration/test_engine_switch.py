"""A worker refuses to start with one engine on an app id that holds the other's state."""

from __future__ import annotations

import pytest

from tests.integration.pipeline import Pipeline

pytestmark = pytest.mark.integration

OTHER = {"faust": "batch", "batch": "faust"}


async def test_switching_engine_on_existing_state_is_refused(pipeline: Pipeline) -> None:
    pipeline.start()
    await pipeline.set_stock("sku-switch", 5)
    await pipeline.wait_for_stock("sku-switch", 5)
    pipeline.stop()

    other = OTHER[pipeline.settings.worker_engine]
    process = pipeline.start("worker", ORDERSTREAM_WORKER_ENGINE=other)
    assert process.wait(timeout=60) == 1
    logs = pipeline.logs()
    assert f"ORDERSTREAM_WORKER_ENGINE={other}" in logs, logs
    assert "use a new ORDERSTREAM_APP_ID" in logs, logs
