"""CacheAffinityRouter's glue to Ray Serve's request-router API, with stand-in replicas.

No Ray cluster: Serve's ``RequestRouter`` base runs in this event loop; the replicas are
``FakeReplica`` objects that answer queue-length probes.
"""

from __future__ import annotations

import asyncio

import pytest
# No public constructors for these (Ray Serve 2.60); ReplicaID and PendingRequest are public.
from ray.serve._private.common import DeploymentHandleSource, DeploymentID, RequestMetadata
from ray.serve.request_router import PendingRequest, ReplicaID

from serve_app.routing import rendezvous_order
from serve_app.routing.request_router import CacheAffinityRouter

DEPLOYMENT = DeploymentID(name="PixtralServer", app_name="pixtral")


class FakeReplica:
    """What the router reads from a replica: its id, its capacity, its queue length."""

    def __init__(self, name: str, queue_len: int = 0):
        self.replica_id = ReplicaID(name, DEPLOYMENT)
        self.max_ongoing_requests = 64
        self.queue_len = queue_len
        self.probes = 0

    async def get_queue_len(self, *, deadline_s: float) -> int:
        self.probes += 1
        return self.queue_len


def request(session_id: str) -> PendingRequest:
    return PendingRequest(
        args=[], kwargs={}, metadata=RequestMetadata(request_id="r", internal_request_id="r", session_id=session_id)
    )


async def router_with(replicas: list[FakeReplica], busy_at: int = 4) -> CacheAffinityRouter:
    router = CacheAffinityRouter(
        deployment_id=DEPLOYMENT, handle_source=DeploymentHandleSource.UNKNOWN, use_replica_queue_len_cache=True
    )
    router.initialize_state(busy_at=busy_at, seed=0)
    router.update_replicas(replicas)
    await asyncio.sleep(0.05)  # the base class probes new replicas in the background
    return router


def names(ranks) -> list[list[str]]:
    return [[replica.replica_id.unique_id for replica in rank] for rank in ranks]


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_key_goes_to_its_rendezvous_replica_every_time():
    async def scenario():
        replicas = [FakeReplica(name) for name in ("aaaa", "bbbb", "cccc")]
        router = await router_with(replicas)
        firsts = set()
        for _ in range(10):
            pending = request("conversation-1")
            ranks = await router.choose_replicas(replicas, pending)
            assert all(len(rank) == 1 for rank in ranks)  # strict order, one replica per rank
            assert pending.routing_context.should_backoff
            firsts.add(names(ranks)[0][0])
        return firsts

    assert run(scenario()) == {rendezvous_order("conversation-1", ["aaaa", "bbbb", "cccc"])[0]}


def test_busy_preferred_replica_falls_back_to_the_idle_one():
    async def scenario():
        preferred, other = rendezvous_order("k", ["aaaa", "bbbb"])
        replicas = {name: FakeReplica(name) for name in (preferred, other)}
        router = await router_with(list(replicas.values()), busy_at=4)
        router.replica_queue_len_cache.update(replicas[preferred].replica_id, 9)
        router.replica_queue_len_cache.update(replicas[other].replica_id, 1)
        ranks = await router.choose_replicas(list(replicas.values()), request("k"))
        return names(ranks), [other, preferred]

    got, expected = run(scenario())
    assert got == [[name] for name in expected]


def test_busy_preferred_replica_probes_replicas_missing_from_the_cache():
    async def scenario():
        preferred, other = rendezvous_order("k", ["aaaa", "bbbb"])
        replicas = {preferred: FakeReplica(preferred, 9), other: FakeReplica(other, 0)}
        router = await router_with(list(replicas.values()), busy_at=4)
        router.replica_queue_len_cache.update(replicas[preferred].replica_id, 9)
        router.replica_queue_len_cache.invalidate_key(replicas[other].replica_id)
        probes_before = replicas[other].probes
        ranks = await router.choose_replicas(list(replicas.values()), request("k"))
        return names(ranks)[0], other, replicas[other].probes - probes_before

    first, other, new_probes = run(scenario())
    assert first == [other]
    assert new_probes == 1


def test_request_without_a_key_gets_two_random_choices():
    async def scenario():
        replicas = [FakeReplica(name) for name in ("aaaa", "bbbb", "cccc")]
        router = await router_with(replicas)
        return names(await router.choose_replicas(replicas, request("")))

    ranks = run(scenario())
    assert len(ranks) == 1 and len(ranks[0]) == 2 and len(set(ranks[0])) == 2


def test_busy_bound_must_be_positive():
    async def scenario():
        await router_with([FakeReplica("aaaa")], busy_at=0)

    with pytest.raises(ValueError, match="busy_at"):
        run(scenario())
