"""ColocatedServer: the OpenAI API served by the LLM replicas themselves (``ingress.colocated``).

One process answers HTTP and runs the engine, as ``vllm serve`` does: no Serve handle call
between the ingress and the LLM replica (Serve's own floor for that hop is 2-3.5 ms on an H100,
bench/results/2026-12-07-h100-hop-floor.md). The front forwards each request to an LLM replica
directly. With several replicas behind HAProxy, ``ReplicaPicker`` (``routing.replica_picker``)
tells HAProxy which replica takes each POST: the LLM deployment's cache-affinity router picks it
from the request's body, as Ray Serve LLM's direct streaming does with its own router. Behind
Serve's Python proxy, the proxy routes with the same router, on load alone. A replica whose
admission refuses a request hands it on to the others over a Serve handle (the one hop, paid
only then); the client gets 429 once every replica has refused it.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from serve_app.api.server_timing import StageClock
from serve_app.compat import with_ingress_router
from serve_app.config import AppConfig
from serve_app.deployments import LLM, PICKER
from serve_app.deployments.ingress import ChatIngress, GenerateCall, chat_api
from serve_app.deployments.pixtral_server import EngineFactory, PixtralServer, vllm_engine_factory
from serve_app.errors import AdmissionRefusedError, PixtralServeError
from serve_app.routing import ReplicaPicker, RoutingPolicy, picker_api


class ChatAndEngine(ChatIngress, PixtralServer.func_or_class):
    """The ingress's API and the LLM replica's engine in one replica; ``ColocatedServer`` deploys it."""

    async def __init__(
        self, config: AppConfig, image_pool: DeploymentHandle, engine_factory: EngineFactory = vllm_engine_factory
    ):
        # The API's checks (keys, listener) first: a replica that must refuse to start does so in a
        # second, not after its engine has loaded for minutes.
        await ChatIngress.__init__(self, config, image_pool, llm=None)
        await PixtralServer.func_or_class.__init__(self, config, engine_factory)
        self._hands_on = config.llm.autoscaling.max_replicas > 1
        if self._hands_on:  # the other replicas, for requests this replica's admission refuses
            self._reach_llm(serve.get_deployment_handle(LLM, self._app_name))

    async def __del__(self) -> None:
        """The engine's shutdown (PixtralServer's), then the ASGI app's (Serve's wrapper, after this
        class in the deployment's MRO), which PixtralServer's ``__del__`` would otherwise hide."""
        PixtralServer.func_or_class.__del__(self)
        asgi_shutdown = getattr(super(PixtralServer.func_or_class, self), "__del__", None)
        if asgi_shutdown is not None:
            await asgi_shutdown()

    async def _first_chunk(self, key: str, call: GenerateCall, clock: StageClock) -> tuple[Any, Any]:
        """This replica's own stream. When its admission refuses the request, the other replicas are
        tried over a Serve handle (the ingress topology's hand-on); with none, the client gets 429."""
        stream = self.generate(*call)
        clock.mark("route")
        try:
            return stream, await stream.__anext__()
        except StopAsyncIteration:
            raise PixtralServeError(f"the engine returned no output (request id {call.request_id})") from None
        except AdmissionRefusedError as refusal:
            others = (self._replicas.engine_replicas() or frozenset()) - {self._replica}
            if not self._hands_on or not others:
                raise
            return await ChatIngress._first_chunk(self, key, call, clock, refused_by={self._replica: refusal})


ColocatedServer = serve.deployment(name=LLM)(serve.ingress(chat_api(ChatAndEngine))(ChatAndEngine))
ColocatedPicker = serve.deployment(name=PICKER, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})(
    serve.ingress(picker_api)(ReplicaPicker)
)


def with_picker(server: Application, routing: RoutingPolicy) -> Application:
    """``server`` (the bound ColocatedServer) with the ReplicaPicker HAProxy asks for each POST."""
    return with_ingress_router(server, ColocatedPicker.bind(server, routing))
