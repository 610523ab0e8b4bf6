"""ReplicaStatus: /ready, the refusal at the door and the withdrawal of waiting requests,
from Serve's own status objects (no Ray cluster: the status lookup is injected)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

from serve_app.deployments.replica_status import ReplicaStatus, readiness_of, running_replicas
from serve_app.errors import EngineOverloadedError


async def readiness(app_name: str, timeout_s: float, status):
    """/ready's answer from one lookup of ``status``."""
    return readiness_of(await running_replicas(app_name, timeout_s, status), timeout_s)


@contextlib.asynccontextmanager
async def started(status, *, timeout_s: float = 5, **options):
    """A ReplicaStatus over ``status`` with its first lookup made and its watch running."""
    replicas = ReplicaStatus("pixtral", timeout_s=timeout_s, status=status, **options)
    await replicas.start()
    try:
        yield replicas
    finally:
        replicas.stop()


def serve_status(**running: int):
    """Ray Serve's own status objects for one app with these RUNNING replica counts."""
    from ray.serve.schema import ApplicationStatusOverview, DeploymentStatusOverview, ServeStatus

    deployments = {
        name: DeploymentStatusOverview(status="HEALTHY", status_trigger="CONFIG_UPDATE_COMPLETED",
                                       replica_states={"RUNNING": count} if count else {}, message="")
        for name, count in running.items()
    }
    app = ApplicationStatusOverview(status="RUNNING", message="", last_deployed_time_s=0.0, deployments=deployments)
    return ServeStatus(applications={"pixtral": app})


def test_ready_needs_a_running_engine_and_pool_replica():
    def ask(**running):
        return asyncio.run(readiness("pixtral", 5, lambda: serve_status(**running)))

    assert ask(OpenAIIngress=1, ImagePool=2, PixtralServer=1) == (200, {"status": "ready"})
    assert ask(OpenAIIngress=1, ImagePool=2, PixtralServer=0) == (
        503, {"status": "not_ready", "reason": "no running PixtralServer replica"})
    assert ask(OpenAIIngress=1, PixtralServer=1)[1]["reason"] == "no running ImagePool replica"
    assert asyncio.run(readiness("other-app", 5, lambda: serve_status(PixtralServer=1)))[0] == 503


def test_ready_has_its_own_deadline():
    stuck = threading.Event()

    async def main():
        started = time.monotonic()
        answer = await readiness("pixtral", 0.5, lambda: stuck.wait(30))
        return answer, time.monotonic() - started

    try:
        (status, body), elapsed = asyncio.run(main())
    finally:
        stuck.set()
    assert status == 503 and "did not answer within 0.5 s" in body["reason"]
    assert elapsed < 2


class Statuses:
    """A status callable whose RUNNING engine replicas the test changes; counts its calls."""

    def __init__(self, engines: int):
        self.engines = engines
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return serve_status(OpenAIIngress=1, ImagePool=1, PixtralServer=self.engines)


class WaitingStream:
    """A DeploymentResponseGenerator stand-in whose first chunk comes when released."""

    def __init__(self):
        self.release = asyncio.Event()
        self.cancelled = False

    async def __anext__(self):
        await self.release.wait()
        return "first chunk"

    def cancel(self):
        self.cancelled = True


def test_no_engine_replica_is_a_503_with_retry_after_at_the_door():
    async def main():
        async with started(Statuses(engines=0), period_s=60) as status:
            with pytest.raises(EngineOverloadedError) as info:
                await status.refuse_while_no_engine()
            return info.value, status.readiness()

    error, ready = asyncio.run(main())
    assert (error.status_code, error.code) == (503, "engine_unavailable")
    assert int(error.headers()["Retry-After"]) >= 1
    assert ready == (503, {"status": "not_ready", "reason": "no running PixtralServer replica"})


def test_a_running_engine_or_scaling_from_zero_lets_requests_through():
    async def main(engines: int, gate_engine: bool):
        async with started(Statuses(engines), gate_engine=gate_engine, period_s=60) as status:
            await status.refuse_while_no_engine()
            return status.readiness()

    assert asyncio.run(main(engines=1, gate_engine=True)) == (200, {"status": "ready"})
    assert asyncio.run(main(engines=0, gate_engine=False))[0] == 503  # not ready, yet not refused


def test_an_unanswered_status_lets_requests_through():
    """The controller said "no engine" (requests are refused), then stops answering: once that
    answer is too old to trust, requests go through again and /ready says why it is not ready."""
    stuck = threading.Event()
    answered = Statuses(engines=0)

    def status():
        if answered.calls == 0:
            return answered()
        stuck.wait(30)  # the controller stops answering
        return answered()

    async def main():
        async with started(status, timeout_s=0.2, period_s=0.1) as replicas:
            with pytest.raises(EngineOverloadedError):  # a refusal is possible from here
                await replicas.refuse_while_no_engine()
            await asyncio.sleep(0.5)  # past timeout_s + period_s with no answer
            await replicas.refuse_while_no_engine()
            return replicas.readiness()

    try:
        code, body = asyncio.run(main())
    finally:
        stuck.set()
    assert code == 503 and "did not answer" in body["reason"]


def test_a_refusal_rests_on_a_fresh_lookup():
    """The background lookup said no engine; by the time a request comes the engine is up:
    the request looks again (the lookup is older than 0.2 s) and goes through."""
    statuses = Statuses(engines=0)

    async def main():
        async with started(statuses, period_s=60) as status:
            statuses.engines = 1
            await asyncio.sleep(0.3)
            await status.refuse_while_no_engine()

    asyncio.run(main())
    assert statuses.calls == 2


def test_concurrent_lookups_are_one():
    statuses = Statuses(engines=1)

    async def main():
        status = ReplicaStatus("pixtral", timeout_s=5, status=lambda: (time.sleep(0.2), statuses())[1], period_s=60)
        await asyncio.gather(*(status.refresh() for _ in range(10)))

    asyncio.run(main())
    assert statuses.calls == 1


def test_a_request_waiting_when_the_last_engine_goes_is_withdrawn():
    statuses = Statuses(engines=1)

    async def main():
        async with started(statuses, period_s=0.05) as status:
            stream = WaitingStream()
            waiting = asyncio.ensure_future(status.first_chunk(stream))
            await asyncio.sleep(0.2)
            assert not waiting.done()  # the engine is there: it waits
            gone_at = time.monotonic()
            statuses.engines = 0
            with pytest.raises(EngineOverloadedError) as info:
                await waiting
            return stream, info.value, time.monotonic() - gone_at

    stream, error, elapsed = asyncio.run(main())
    assert error.code == "engine_unavailable" and error.status_code == 503
    assert stream.cancelled
    assert elapsed < 1


def test_a_waiting_request_gets_its_first_chunk_while_an_engine_runs():
    async def main():
        async with started(Statuses(engines=1), period_s=0.05) as status:
            stream = WaitingStream()
            asyncio.get_running_loop().call_later(0.2, stream.release.set)
            return await status.first_chunk(stream), stream

    first, stream = asyncio.run(main())
    assert first == "first chunk" and not stream.cancelled
