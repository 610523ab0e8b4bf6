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
from serve_app.routing.replica_set import REPLICA_SETS
from serve_app.routing.request_router import CacheAffinityRouter, RoutingTag

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


def request(key: str, *, request_id: str = "r", avoid: tuple[str, ...] = (), args=()) -> PendingRequest:
    """A pending request carrying the ingress's routing tag (request id, affinity key, refusals)."""
    tag = RoutingTag(request_id=request_id, key=key, avoid=frozenset(avoid))
    return PendingRequest(
        args=list(args), kwargs={},
        metadata=RequestMetadata(request_id="r", internal_request_id="r", session_id=tag.encode()),
    )


async def router_with(replicas: list[FakeReplica], busy_at: int = 4) -> CacheAffinityRouter:
    router = CacheAffinityRouter(
        deployment_id=DEPLOYMENT, handle_source=DeploymentHandleSource.UNKNOWN, use_replica_queue_len_cache=True
    )
    router.initialize_state(deployment="PixtralServer", busy_at=busy_at, seed=0)
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


def test_a_pick_only_caller_learns_the_queue_lengths_by_probing_and_keeps_the_busy_bound():
    """ReplicaPicker's picks send nothing through the router, so no reply ever fills its cache: a keyed
    pick probes the replicas it does not know, and a busy preferred replica still hands the key on."""
    from serve_app.routing.request_router import PICK_ONLY

    async def scenario():
        preferred, other = rendezvous_order("k", ["aaaa", "bbbb"])
        replicas = {preferred: FakeReplica(preferred, 9), other: FakeReplica(other, 0)}
        router = await router_with(list(replicas.values()), busy_at=4)
        for replica in replicas.values():
            router.replica_queue_len_cache.invalidate_key(replica.replica_id)
        blind = await router.choose_replicas(list(replicas.values()), request("k"))
        probes = {name: replica.probes for name, replica in replicas.items()}
        picked = await router.choose_replicas(list(replicas.values()), request("k", args=[PICK_ONLY]))
        probed = {name: replica.probes - probes[name] for name, replica in replicas.items()}
        before_again = sum(replica.probes for replica in replicas.values())
        again = await router.choose_replicas(list(replicas.values()), request("k", args=[PICK_ONLY]))
        probed_again = sum(replica.probes for replica in replicas.values()) - before_again
        return names(blind)[0], names(picked)[0], names(again)[0], probed, probed_again, preferred, other

    blind, picked, again, probed, probed_again, preferred, other = run(scenario())
    assert blind == [preferred]  # unknown lengths never move a key
    assert picked == [other] and probed == {preferred: 1, other: 1}
    assert again == [other] and probed_again == 0  # the probes' answers are cached


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


def test_replicas_that_refused_the_request_are_tried_last():
    async def scenario():
        order = rendezvous_order("k", ["aaaa", "bbbb", "cccc"])
        replicas = [FakeReplica(name) for name in order]
        router = await router_with(replicas)
        with_key = names(await router.choose_replicas(replicas, request("k", avoid=(order[0],))))
        keyless = names(await router.choose_replicas(replicas, request("", avoid=(order[0], order[1]))))
        everyone = names(await router.choose_replicas(replicas, request("k", avoid=tuple(order))))
        return order, with_key, keyless, everyone

    order, with_key, keyless, everyone = run(scenario())
    assert with_key == [[order[1]], [order[2]], [order[0]]]
    assert keyless == [[order[2]], [order[0], order[1]]]
    assert sorted(everyone[0]) == sorted(order)  # all refused: still routed (the ingress decides to stop)


def test_the_router_reports_routable_replicas_and_where_requests_went():
    async def scenario():
        replicas = [FakeReplica(name) for name in ("aaaa", "bbbb")]
        router = await router_with(replicas)
        seen = [REPLICA_SETS.replicas("pixtral", "PixtralServer")]
        placement = REPLICA_SETS.track("req-1")
        router.on_request_routed(request("k", request_id="req-1"), replicas[1].replica_id, None)
        router.on_replica_actor_died(replicas[0].replica_id)
        seen.append(REPLICA_SETS.replicas("pixtral", "PixtralServer"))
        router.update_replicas([])
        seen.append(REPLICA_SETS.replicas("pixtral", "PixtralServer"))
        REPLICA_SETS.forget("req-1")
        return seen, placement

    seen, placement = run(scenario())
    assert seen == [frozenset({"aaaa", "bbbb"}), frozenset({"bbbb"}), frozenset()]
    assert placement.routed and placement.replicas == ["bbbb"]


def test_routing_tags_survive_the_session_id_and_anything_else_is_keyless():
    tag = RoutingTag(request_id="chatcmpl-1", key="abc", avoid=frozenset({"r1", "r2"}))
    assert RoutingTag.decode(tag.encode()) == tag
    assert RoutingTag.decode("") == RoutingTag() and RoutingTag.decode("some|thing") == RoutingTag()


def test_a_router_pickled_by_value_as_serve_ships_it_still_reports_to_that_process(tmp_path):
    """Serve sends the router class by value (cloudpickle of its whole module) to every handle's
    process; there the copy must still feed that process's one registry, which the ingress reads."""
    import subprocess
    import sys

    from ray.serve.config import RequestRouterConfig

    shipped = tmp_path / "router.pickle"
    shipped.write_bytes(RequestRouterConfig(request_router_class=CacheAffinityRouter)._serialized_request_router_cls)
    program = f"""
import asyncio, pathlib
from ray import cloudpickle
from ray.serve._private.common import DeploymentHandleSource, DeploymentID, ReplicaID
router_class = cloudpickle.loads(pathlib.Path({str(shipped)!r}).read_bytes())
from serve_app.routing.replica_set import REPLICA_SETS
from serve_app.routing import request_router
assert router_class is not request_router.CacheAffinityRouter  # a copy, as in a replica

class Replica:
    def __init__(self, name):
        self.replica_id = ReplicaID(name, DeploymentID(name="PixtralServer", app_name="pixtral"))
        self.max_ongoing_requests = 8
    async def get_queue_len(self, *, deadline_s):
        return 0

async def main():
    router = router_class(deployment_id=DeploymentID(name="PixtralServer", app_name="pixtral"),
                          handle_source=DeploymentHandleSource.UNKNOWN)
    router.initialize_state(deployment="PixtralServer")
    router.update_replicas([Replica("zzzz")])
    await asyncio.sleep(0.05)
    print(sorted(REPLICA_SETS.replicas("pixtral", "PixtralServer")))

asyncio.run(main())
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "['zzzz']"
