"""ColocatedServer: the OpenAI API served by the LLM replica itself (``ingress.colocated``).

One process answers HTTP and runs the engine, as ``vllm serve`` does: no Serve handle call
between the ingress and the LLM replica (Serve's own floor for that hop is 2-3.5 ms on an H100,
bench/results/2026-12-07-h100-hop-floor.md). HAProxy (or Serve's proxy) forwards each request
to an LLM replica directly. One LLM replica only for now: with several, the front's balancing
would pick the replica (no cache affinity) and an admission refusal could not be handed on.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.api.server_timing import StageClock
from serve_app.config import AppConfig
from serve_app.deployments import LLM
from serve_app.deployments.ingress import ChatIngress, GenerateCall, chat_api
from serve_app.deployments.pixtral_server import EngineFactory, PixtralServer, vllm_engine_factory
from serve_app.errors import PixtralServeError


class ChatAndEngine(ChatIngress, PixtralServer.func_or_class):
    """The ingress's API and the LLM replica's engine in one replica; ``ColocatedServer`` deploys it."""

    async def __init__(
        self, config: AppConfig, image_pool: DeploymentHandle, engine_factory: EngineFactory = vllm_engine_factory
    ):
        await PixtralServer.func_or_class.__init__(self, config, engine_factory)
        await ChatIngress.__init__(self, config, image_pool, llm=None)

    async def __del__(self) -> None:
        """The engine's shutdown (PixtralServer's), then the ASGI app's (Serve's wrapper, after this
        class in the deployment's MRO), which PixtralServer's ``__del__`` would otherwise hide."""
        PixtralServer.func_or_class.__del__(self)
        asgi_shutdown = getattr(super(PixtralServer.func_or_class, self), "__del__", None)
        if asgi_shutdown is not None:
            await asgi_shutdown()

    async def _first_chunk(self, key: str, call: GenerateCall, clock: StageClock) -> tuple[Any, Any]:
        """This replica's own stream: an admission refusal is the client's 429 at once."""
        stream = self.generate(*call)
        clock.mark("route")
        try:
            return stream, await stream.__anext__()
        except StopAsyncIteration:
            raise PixtralServeError(f"the engine returned no output (request id {call.request_id})") from None


ColocatedServer = serve.deployment(name=LLM)(serve.ingress(chat_api(ChatAndEngine))(ChatAndEngine))
