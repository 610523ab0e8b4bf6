"""OpenAIIngress: HTTP in, validation, auth, image fan-out to the pool, streaming out."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from typing import Any, NamedTuple

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.api.body_budget import BodyBudget, BodyHold
from serve_app.api.errors import error_response, unwrap, unwrap_cause
from serve_app.api.models import ChatCompletionRequest, RequestSettings, parse_chat_request_off_loop
from serve_app.api.responses import completion, sse_events
from serve_app.api.server_timing import StageClock, format_server_timing
from serve_app.compat.ray_serve import REPLICA_GONE, by_reference, serve_http_host
from serve_app.config import AppConfig, IngressConfig, is_loopback_host
from serve_app.deployments import INGRESS
from serve_app.deployments.image_pool import PixelPassing, PooledImage
from serve_app.deployments.replica_status import ReplicaStatus
from serve_app.errors import (
    AdmissionRefusedError,
    AuthenticationError,
    ImageError,
    ImagesLostError,
    InvalidRequestError,
    PixtralServeError,
    TooManyImagesError,
    UnknownModelError,
)
from serve_app.routing import replica_set
from serve_app.routing.policy import RoutingPolicy
from serve_app.routing.request_router import RoutingTag

logger = logging.getLogger(__name__)

_STAGE_SECONDS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


async def _service_error(request: Request, exc: PixtralServeError) -> JSONResponse:
    return error_response(exc, _request_id(request))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = "not_found" if exc.status_code == 404 else "http_error"
    body = {"error": {"message": str(exc.detail), "type": "invalid_request_error", "param": None, "code": code}}
    return JSONResponse(body, status_code=exc.status_code)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc, _request_id(request))


def chat_api(cls: type) -> FastAPI:
    """The OpenAI API's routes on ``cls``'s methods (``ChatIngress``'s, or a subclass's), a new
    FastAPI app for each deployment class that serves them (``serve.ingress`` takes it over)."""
    api = FastAPI(title="pixtral-serve", docs_url=None, redoc_url=None)
    api.add_exception_handler(PixtralServeError, _service_error)
    api.add_exception_handler(StarletteHTTPException, _http_error)
    api.add_exception_handler(Exception, _unexpected_error)
    api.add_api_route("/health", cls.health, methods=["GET"])
    api.add_api_route("/ready", cls.ready, methods=["GET"])
    api.add_api_route("/v1/models", cls.models, methods=["GET"])
    api.add_api_route("/v1/chat/completions", cls.chat_completions, methods=["POST"])
    return api


class GenerateCall(NamedTuple):
    """``PixtralServer.generate``'s arguments for one request, as the ingress hands them on."""

    messages: list[dict[str, Any]]
    images: list[Any]
    settings: RequestSettings
    request_id: str


def keys_required(settings: IngressConfig, keys: frozenset[str], listener_host: str) -> bool:
    """Whether requests must carry a bearer key; raises RuntimeError for a replica that would
    otherwise serve without keys where others can reach it."""
    if settings.auth == "disabled":
        logger.warning("ingress.auth is disabled: the API accepts requests without a key on %s", listener_host)
        return False
    if keys:
        return True
    if settings.auth == "required":
        raise RuntimeError(
            f"ingress.auth is 'required' but no API key is configured: set {settings.api_keys_env} "
            "(comma-separated) or ingress.api_keys"
        )
    if is_loopback_host(listener_host):
        return False
    raise RuntimeError(
        f"refusing to serve without API keys on {listener_host!r}, which is not a loopback address: "
        f"set {settings.api_keys_env} (comma-separated) or ingress.api_keys, listen on 127.0.0.1, "
        "or say ingress.auth: disabled to run open on purpose"
    )


def _replica_header(first: Any, enabled: bool) -> dict[str, str]:
    """``X-Pixtral-Replica``: the LLM replica that answered (opaque Serve replica id), only when
    ``ingress.replica_header`` turns it on."""
    return {"X-Pixtral-Replica": first.replica} if enabled and first.replica else {}


class ChatIngress:
    """The OpenAI API in front of the LLM deployment: auth, parse, the image pool's calls, the
    LLM's stream to the client. ``OpenAIIngress`` serves it from replicas of its own and reaches
    the LLM replicas through a Serve handle; ``deployments.colocated`` from the LLM replica."""

    async def __init__(self, config: AppConfig, image_pool: DeploymentHandle, llm: DeploymentHandle | None):
        self._config = config
        # options() starts each handle's router now (not at the first request), so the
        # routers learn the routable replicas, which /ready and the door answer from, at once.
        self._pool = by_reference(image_pool.options())
        self._pool_by_value = image_pool.options()  # Serve's own transport: gRPC in throughput mode
        self._pixels = PixelPassing(config.image_pool)
        if llm is not None:
            self._reach_llm(llm)
        self._routing = RoutingPolicy.of(config.llm)
        self._api_keys = config.ingress.resolved_api_keys()
        listener = await asyncio.to_thread(serve_http_host)
        self._keys_required = keys_required(config.ingress, self._api_keys, listener)
        self._app_name = serve.get_replica_context().app_name
        self._created = int(time.time())
        self._bodies = BodyBudget(config.ingress.max_inflight_body_bytes, retry_after_s=config.ingress.retry_after_s)
        self._replicas = ReplicaStatus(
            self._app_name,
            gate_engine=config.llm.autoscaling.min_replicas > 0,  # scaling from zero needs the queue
            engine_here=llm is None,
            expected_start_s=config.llm.expected_start_s,
        )
        self._stage_s = Histogram(
            "pixtral_request_stage_seconds",
            description="Time to first token of a chat request by stage (serve_app/api/server_timing.py).",
            boundaries=_STAGE_SECONDS,
            tag_keys=("stage",),
        )

    def _reach_llm(self, llm: DeploymentHandle) -> None:
        self._llm_stream = llm.options(stream=True)  # one handle, not one per request
        # Pixels by reference (PooledImage) take the task path, where the reference is counted;
        # text-only calls and pixels by value keep Serve's transport.
        self._llm_stream_images = by_reference(self._llm_stream)

    def _authenticate(self, request: Request) -> None:
        if not self._keys_required:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not any(
            hmac.compare_digest(token.encode(), key.encode()) for key in self._api_keys
        ):
            raise AuthenticationError("invalid or missing API key (Authorization: Bearer <key>)")

    async def health(self) -> JSONResponse:
        """Liveness of this ingress replica only: no engine call, nothing queued anywhere."""
        return JSONResponse({"status": "ok"})

    async def ready(self) -> JSONResponse:
        """Ready when the engine and the image pool each have a routable (RUNNING) replica, as
        this replica's routers know them from Serve's controller (which health-checks every
        engine replica itself). Never calls the replicas or the controller, so it does not wait
        behind generations."""
        status, body = self._replicas.readiness()
        return JSONResponse(body, status_code=status)

    async def models(self, request: Request) -> JSONResponse:
        self._authenticate(request)
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": self._config.served_model_name,
                        "object": "model",
                        "created": self._created,
                        "owned_by": "pixtral-serve",
                        "max_model_len": self._config.engine.max_model_len,
                    }
                ],
            }
        )

    async def chat_completions(self, request: Request):
        clock = StageClock()
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        request.state.request_id = request_id
        self._authenticate(request)
        self._replicas.refuse_while_no_engine()
        clock.mark("auth")
        hold = self._bodies.hold()
        try:
            return await self._complete(request, request_id, hold, clock)
        finally:
            hold.release()

    async def _complete(self, request: Request, request_id: str, hold: BodyHold, clock: StageClock):
        chat = await self._parse(request, hold, clock)
        clock.mark("parse")
        urls = chat.image_urls()
        with self._pixels.request(has_images=bool(urls)) as by_value:
            images = await self._prepare_images(urls, request_id, by_value=by_value)
            clock.mark("images")
            try:
                return await self._answer(request_id, chat, images, clock)
            except ImagesLostError:
                # Ray no longer had the pixels when the LLM read them: their pool replica ended, or
                # (one H100, 2026-12-06, 512 requests at two replicas) requests handed on after an
                # admission refusal found them freed. Once more, the pixels this time by value.
                logger.warning("request %s: its pixels were lost before the LLM read them; retrying by value", request_id)
                images = await self._prepare_images(urls, request_id, by_value=True)
                return await self._answer(request_id, chat, images, clock)

    async def _answer(self, request_id: str, chat: ChatCompletionRequest, images: list[Any], clock: StageClock):
        messages = chat.plain_messages()
        key = self._routing.key(messages, [image.content_id for image in images])
        stream, first = await self._first_chunk(key, GenerateCall(messages, images, chat.settings(), request_id), clock)
        clock.mark("llm")
        headers = {
            **_replica_header(first, self._config.ingress.replica_header),
            **self._first_token_stages(request_id, clock, first),
        }
        model = self._config.served_model_name
        if chat.stream:
            include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
            events = sse_events(
                first, stream, request_id=request_id, model=model, choices=chat.n, include_usage=include_usage
            )
            return StreamingResponse(
                events,
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
            )
        body = await completion(
            first, stream, request_id=request_id, model=model, with_token_ids=chat.return_token_ids
        )
        return JSONResponse(body, headers=headers)

    async def _first_chunk(
        self, key: str, call: GenerateCall, clock: StageClock, refused_by: dict[str, AdmissionRefusedError] | None = None
    ) -> tuple[Any, Any]:
        """The LLM's stream and its first chunk, which comes before any byte is sent, so prompt
        and engine errors still get their own status code. A replica whose admission refuses
        the request hands it on: the router tries the replicas that have not refused it, and
        the client gets 429 only once every routable replica has. ``refused_by``: replicas
        that have refused it already, by id (``deployments.colocated``: the one it arrived at)."""
        request_id = call.request_id
        placements = replica_set.shared()  # not a module-level name: see replica_set.shared
        placement = placements.track(request_id)
        refusals: list[AdmissionRefusedError] = list((refused_by or {}).values())
        refused_before = frozenset(refused_by or ())
        pooled = any(isinstance(image, PooledImage) for image in call.images)
        handle = self._llm_stream_images if pooled else self._llm_stream
        try:
            while True:
                tag = RoutingTag(request_id=request_id, key=key, avoid=frozenset(placement.replicas) | refused_before)
                stream = handle.options(session_id=tag.encode()).generate.remote(*call)
                clock.mark("route")  # a refused attempt (admission) counts as route too
                try:
                    return stream, await self._replicas.first_chunk(stream, placement)
                except StopAsyncIteration:
                    raise PixtralServeError(f"the engine returned no output (request id {request_id})")
                except Exception as exc:
                    error = unwrap(exc)
                    if not isinstance(error, AdmissionRefusedError):
                        raise error from exc
                    refusals.append(error)
                    routable = self._replicas.engine_replicas() or frozenset()
                    # Every replica has said no (or, should a placement go unreported, as many
                    # refusals as there are replicas: never a loop).
                    if routable <= set(placement.replicas) | refused_before or len(refusals) >= max(1, len(routable)):
                        raise min(refusals, key=lambda refusal: refusal.retry_after_s or 0) from None
        finally:
            placements.forget(request_id)

    def _first_token_stages(self, request_id: str, clock: StageClock, first: Any) -> dict[str, str]:
        """The request's stages up to its first chunk, the LLM replica's own included, into the
        histogram and the debug log; the Server-Timing header when ``ingress.server_timing``."""
        stages = dict(clock.stages)
        replica = first.stages or {}
        stages["hop"] = max(0.0, stages.pop("llm") - sum(replica.values()))  # Ray, both ways
        stages.update(replica)
        stages["total"] = sum(clock.stages.values())
        # the engine stage's parts, after the total they are already in
        for name, seconds in (first.engine_stages or {}).items():
            stages[f"engine-{name.replace('_', '-')}"] = seconds
        for name, seconds in stages.items():
            self._stage_s.observe(seconds, tags={"stage": name})
        header = format_server_timing(stages)
        logger.debug("%s first chunk: %s", request_id, header)
        return {"Server-Timing": header} if self._config.ingress.server_timing else {}

    async def _parse(self, request: Request, hold: BodyHold, clock: StageClock) -> ChatCompletionRequest:
        limit = self._config.ingress.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise InvalidRequestError(f"request body exceeds {limit} bytes (Content-Length)", code="request_too_large")
        if declared is not None and declared.isdigit():
            hold.grow_to(int(declared))  # 429 before a byte is read when the replica holds too much
        body = bytearray()
        async for piece in request.stream():  # chunked bodies have no Content-Length to check
            body += piece
            if len(body) > limit:
                raise InvalidRequestError(f"request body exceeds {limit} bytes", code="request_too_large")
            hold.grow_to(len(body))
        clock.mark("body")  # receiving it: with Serve's proxy in front, a call back to the proxy
        chat = await parse_chat_request_off_loop(
            bytes(body), off_loop_above=self._config.ingress.parse_off_loop_bytes
        )
        if chat.model != self._config.served_model_name:
            raise UnknownModelError(
                f"model {chat.model!r} is not served here; use {self._config.served_model_name!r}", param="model"
            )
        chat.check_limits(self._config.chat_fields, max_tokens_limit=self._config.max_tokens_limit)
        return chat

    async def _prepare_images(self, urls: list[tuple[str, str]], request_id: str, by_value: bool = False) -> list[Any]:
        """The prepared images of ``urls`` (``ChatCompletionRequest.image_urls``: url, param path)."""
        if not urls:  # text only: no pool call at all
            return []
        limit = self._config.engine.max_images_per_prompt
        if len(urls) > limit:
            raise TooManyImagesError(f"{len(urls)} images given; this model takes at most {limit} per request")
        pool = self._pool_by_value if by_value else self._pool
        calls = [pool.prepare.remote(url, request_id, by_value) for url, _ in urls]

        async def one(index: int, call: Any, url: str, param: str) -> Any:
            try:
                try:
                    return await call
                except Exception as exc:
                    if not isinstance(unwrap_cause(exc), REPLICA_GONE):
                        raise
                # The pool replica died on it (scale-down, crash): once more, on another.
                retry = pool.prepare.remote(url, request_id, by_value)
                calls.append(retry)
                return await retry
            except Exception as exc:
                error = unwrap(exc)
                if isinstance(error, ImageError):
                    raise type(error)(f"image {index}: {error.message}", param=param, code=error.code) from None
                raise error from None

        try:
            images = [one(index, call, url, param) for index, (call, (url, param)) in enumerate(zip(calls, urls))]
            return list(await asyncio.gather(*images))
        except BaseException:
            # The request has failed: the other images' fetches stop too (the pool cancels them).
            for call in calls:
                call.cancel()
            raise


OpenAIIngress = serve.deployment(name=INGRESS)(serve.ingress(chat_api(ChatIngress))(ChatIngress))
