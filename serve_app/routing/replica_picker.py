"""ReplicaPicker: which LLM replica takes a chat request when the LLM replicas serve the API
themselves (``ingress.colocated``) behind HAProxy.

HAProxy POSTs each client POST's headers (and, with ``RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY=1``,
as the container image sets, its body up to ``RAY_SERVE_HAPROXY_INGRESS_REQUEST_ROUTER_BUFSIZE``,
8 MiB by default) to ``/internal/route`` of this deployment, and forwards the request to the
replica named in the answer (Ray Serve LLM's direct streaming works the same way). The pick is
the LLM deployment's own request router's (``CacheAffinityRouter``) with the request's affinity
key taken from the body (``affinity.body_affinity_key``), so every turn of a conversation goes
to the replica that holds its prefix cache, as in the ingress topology; the queue lengths behind
its busy bound come from probes here (``request_router.PICK_ONLY``), at most 10 s old. A body that
is cut short or is not a chat request routes by load alone; the replica answers it.
"""

from __future__ import annotations

import asyncio
import json
import logging

from fastapi import FastAPI, HTTPException, Request
from ray.serve.handle import DeploymentHandle

from serve_app.compat import chosen_replica
from serve_app.routing.affinity import body_affinity_key
from serve_app.routing.policy import RoutingPolicy
from serve_app.routing.request_router import PICK_ONLY, RoutingTag

logger = logging.getLogger(__name__)

PICK_LIMIT_S = 4.0
"""How long a pick may wait for a routable replica: under HAProxy's own limit for the call
(``RAY_SERVE_HAPROXY_INGRESS_REQUEST_ROUTER_TIMEOUT_S``, 5 s), so that HAProxy gets an answer."""

picker_api = FastAPI(title="pixtral-serve replica picker", docs_url=None, redoc_url=None)


class ReplicaPicker:
    def __init__(self, llm: DeploymentHandle, routing: RoutingPolicy):
        self._llm = llm
        self._routing = routing

    def key(self, body: bytes, truncated: bool) -> str:
        if not self._routing.affinity or truncated or not body:
            return ""
        try:
            parsed = json.loads(body)
        except ValueError:
            return ""
        return body_affinity_key(parsed, prefix_chars=self._routing.prefix_chars)

    @picker_api.post("/internal/route")
    async def route(self, request: Request) -> dict[str, str]:
        body = await request.body()
        truncated = "x-body-truncated" in request.headers
        # A large body's parse and digests (data: URLs of several MB) off the event loop.
        key = self.key(body, truncated) if len(body) < 65536 else await asyncio.to_thread(self.key, body, truncated)
        handle = self._llm.options(session_id=RoutingTag(key=key).encode())
        try:
            return {"replica_id": await asyncio.wait_for(chosen_replica(handle, PICK_ONLY), PICK_LIMIT_S)}
        except TimeoutError:
            # HAProxy answers the client 503 (its own body) for any answer but 200.
            raise HTTPException(status_code=503, detail="no LLM replica could be picked") from None

    @picker_api.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}
