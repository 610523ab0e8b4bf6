"""The pool-to-LLM hand-off of pixels by reference (``PooledImage``) on a real local Ray:
the pool's side and the LLM's side each in an actor of their own, as their replicas are, the
record passing through the test process as it passes through the ingress."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import numpy as np
import pytest

from serve_app.deployments.image_pool import PooledImage, resolve_pooled
from serve_app.errors import ImagesLostError
from serve_app.images import PreparedImage

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


def prepared(seed: int) -> PreparedImage:
    pixels = np.random.default_rng(seed).integers(0, 256, (512, 1024, 3), dtype=np.uint8)
    return PreparedImage(pixels=pixels, sha256=f"{seed:064x}", source_width=2048, source_height=1024, source_bytes=7)


@ray.remote(num_cpus=0)
class Pool:
    """The pool replica's side: ``ImagePool.prepare`` ends in ``PooledImage.put``."""

    def prepare(self, seed: int) -> PooledImage:
        return PooledImage.put(prepared(seed))


@ray.remote(num_cpus=0)
class Llm:
    """The LLM replica's side: ``PixtralServer.generate`` starts with ``resolve_pooled``."""

    async def read(self, pooled: list[PooledImage], timeout_s: float) -> list[np.ndarray]:
        return [np.array(image.pixels) for image in await resolve_pooled(pooled, timeout_s)]


def test_the_llm_gets_the_pools_pixels_and_the_record_names_them(local_ray):
    pool, llm = Pool.remote(), Llm.remote()
    records = ray.get([pool.prepare.remote(1), pool.prepare.remote(2)])
    assert [(r.content_id, r.width, r.height) for r in records] == [
        (prepared(seed).content_id, 1024, 512) for seed in (1, 2)
    ]
    for got, seed in zip(ray.get(llm.read.remote(records, 30)), (1, 2)):
        np.testing.assert_array_equal(got, prepared(seed).pixels)


def test_images_sent_by_value_pass_beside_records_in_their_order(local_ray):
    """The ingress's retry after ``images_lost`` sends the pixels themselves (``by_value``)."""
    pool, llm = Pool.remote(), Llm.remote()
    mixed = [prepared(5), ray.get(pool.prepare.remote(6)), prepared(7)]
    for got, seed in zip(ray.get(llm.read.remote(mixed, 30)), (5, 6, 7)):
        np.testing.assert_array_equal(got, prepared(seed).pixels)
    assert [np.array(image.pixels).sum() for image in asyncio.run(resolve_pooled([prepared(8)], 0.1))] == [
        prepared(8).pixels.sum()
    ]


def test_what_the_ingress_holds_for_an_image_is_a_record_not_its_pixels(local_ray):
    """The pool's answer passes through the ingress: a few hundred bytes, whatever the image's
    size (1.5 MiB of pixels here); the pixels stay in the pool's object store for the LLM."""
    pool = Pool.remote()
    record = ray.get(pool.prepare.remote(4))
    assert isinstance(record.prepared, ray.ObjectRef)
    assert len(ray.cloudpickle.dumps(record)) < 1024 < prepared(4).pixels.nbytes // 1000


def test_pixels_whose_pool_replica_ended_are_a_503_the_client_may_retry(local_ray):
    pool, llm = Pool.remote(), Llm.remote()
    records = [ray.get(pool.prepare.remote(3))]
    ray.kill(pool, no_restart=True)
    with pytest.raises(ray.exceptions.RayActorError):  # the pool replica is gone for good
        for _ in range(300):
            ray.get(pool.prepare.remote(0), timeout=30)
            time.sleep(0.1)
    # Its node frees what it owned once the death is known; from then on every read says so.
    started = time.monotonic()
    with pytest.raises(ImagesLostError) as lost:
        while time.monotonic() - started < 20:
            ray.get(llm.read.remote(records, 60), timeout=90)
            time.sleep(0.2)
    assert time.monotonic() - started < 20  # Ray reports the owner's death; not the 60 s deadline
    error = lost.value
    assert (error.status_code, error.code) == (503, "images_lost")
    assert error.headers() == {"Retry-After": "1"}


def test_pixels_that_never_arrive_end_at_the_deadline(local_ray):
    @ray.remote(num_cpus=0)
    def never() -> None:
        time.sleep(3600)

    pending = never.remote()
    try:
        started = time.monotonic()
        with pytest.raises(ImagesLostError):
            asyncio.run(resolve_pooled([PooledImage("x", 16, 16, pending)], 0.5))
        assert time.monotonic() - started < 10
    finally:
        ray.cancel(pending, force=True)
