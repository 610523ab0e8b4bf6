"""OpenAIIngress: HTTP in, validation, auth, image fan-out to the pool, streaming out."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.api.errors import as_service_error, error_response, sse_error_event, unwrap
from serve_app.api.models import ChatCompletionRequest, chunk_body, completion_body, usage_body
from serve_app.config import AppConfig
from serve_app.errors import (
    AuthenticationError,
    ImageError,
    InvalidRequestError,
    PixtralServeError,
    TooManyImagesError,
    UnknownModelError,
)
from serve_app.routing import affinity_key

app = FastAPI(title="pixtral-serve", docs_url=None, redoc_url=None)


@app.exception_handler(PixtralServeError)
async def _service_error(request: Request, exc: PixtralServeError) -> JSONResponse:
    return error_response(exc)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = "not_found" if exc.status_code == 404 else "http_error"
    body = {"error": {"message": str(exc.detail), "type": "invalid_request_error", "param": None, "code": code}}
    return JSONResponse(body, status_code=exc.status_code)


@app.exception_handler(Exception)
async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc)


def _replica_header(first: Any) -> dict[str, str]:
    """``X-Pixtral-Replica``: the LLM replica that answered (opaque Serve replica id)."""
    return {"X-Pixtral-Replica": first.replica} if first.replica else {}


@serve.deployment(name="OpenAIIngress")
@serve.ingress(app)
class OpenAIIngress:
    def __init__(self, config: AppConfig, image_pool: DeploymentHandle, llm: DeploymentHandle):
        self._config = config
        self._pool = image_pool
        self._llm = llm
        self._llm_stream = llm.options(stream=True)  # one handle, not one per request
        self._routing = config.llm.routing
        self._api_keys = config.ingress.resolved_api_keys()
        self._created = int(time.time())

    def _authenticate(self, request: Request) -> None:
        if not self._api_keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not any(
            hmac.compare_digest(token.encode(), key.encode()) for key in self._api_keys
        ):
            raise AuthenticationError("invalid or missing API key (Authorization: Bearer <key>)")

    @app.get("/health")
    async def health(self) -> JSONResponse:
        await self._llm.check_health.remote()
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
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

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        self._authenticate(request)
        chat = await self._parse(request)
        images = await self._prepare_images(chat)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        sampling = {
            "max_tokens": chat.max_completion_tokens or chat.max_tokens,
            "temperature": chat.temperature,
            "top_p": chat.top_p,
            "stop": chat.stop,
            "seed": chat.seed,
            "ignore_eos": chat.ignore_eos,
        }
        messages = chat.plain_messages()
        llm = self._llm_stream
        if self._routing.policy == "affinity":
            # Serve's stickiness slot carries the key to CacheAffinityRouter (serve_app/routing).
            image_ids = [image.content_id for image in images]
            key = affinity_key(messages, image_ids, prefix_chars=self._routing.prefix_chars)
            llm = llm.options(session_id=key)
        stream = llm.generate.remote(messages, images, sampling, request_id)
        # The first chunk comes before any byte is sent, so prompt and engine errors
        # still get their own status code.
        try:
            first = await stream.__anext__()
        except StopAsyncIteration:
            raise PixtralServeError("the engine returned no output")
        except Exception as exc:
            raise unwrap(exc) from exc
        if chat.stream:
            include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
            return StreamingResponse(
                self._sse(request_id, first, stream, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **_replica_header(first)},
            )
        texts, token_ids = [first.text], list(first.token_ids)
        last = first
        async for chunk in stream:
            texts.append(chunk.text)
            token_ids.extend(chunk.token_ids)
            last = chunk
        body = completion_body(
            request_id=request_id,
            model=self._config.served_model_name,
            text="".join(texts),
            finish_reason=last.finish_reason,
            prompt_tokens=last.prompt_tokens,
            completion_tokens=last.completion_tokens,
            cached_tokens=last.cached_tokens,
        )
        if chat.return_token_ids:
            body["prompt_token_ids"] = first.prompt_token_ids
            body["choices"][0]["token_ids"] = token_ids
        return JSONResponse(body, headers=_replica_header(first))

    async def _parse(self, request: Request) -> ChatCompletionRequest:
        limit = self._config.ingress.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise InvalidRequestError(f"request body exceeds {limit} bytes", code="request_too_large")
        body = bytearray()
        async for piece in request.stream():  # chunked bodies have no Content-Length to check
            body += piece
            if len(body) > limit:
                raise InvalidRequestError(f"request body exceeds {limit} bytes", code="request_too_large")
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidRequestError(f"request body is not valid JSON: {exc}", code="invalid_json") from exc
        if not isinstance(payload, dict):
            raise InvalidRequestError("request body must be a JSON object", code="invalid_json")
        try:
            chat = ChatCompletionRequest.model_validate(payload)
        except ValidationError as exc:
            raise as_service_error(exc) from exc
        if chat.model != self._config.served_model_name:
            raise UnknownModelError(
                f"model {chat.model!r} is not served here; use {self._config.served_model_name!r}", param="model"
            )
        return chat

    async def _prepare_images(self, chat: ChatCompletionRequest) -> list[Any]:
        urls = chat.image_urls()
        limit = self._config.engine.max_images_per_prompt
        if len(urls) > limit:
            raise TooManyImagesError(f"{len(urls)} images given; this model takes at most {limit} per request")
        calls = [self._pool.prepare.remote(url) for url, _ in urls]
        results = await asyncio.gather(*calls, return_exceptions=True)
        for index, (result, (_, param)) in enumerate(zip(results, urls)):
            if isinstance(result, BaseException):
                error = unwrap(result)
                if isinstance(error, ImageError):
                    raise type(error)(f"image {index}: {error.message}", param=param, code=error.code)
                raise error
        return list(results)

    async def _sse(
        self, request_id: str, first: Any, stream: Any, include_usage: bool
    ) -> AsyncIterator[str]:
        model = self._config.served_model_name
        created = int(time.time())

        def event(body: dict[str, Any]) -> str:
            return f"data: {json.dumps(body)}\n\n"

        yield event(
            chunk_body(
                request_id=request_id, model=model, created=created,
                delta={"role": "assistant", "content": ""}, finish_reason=None,
            )
        )
        last = first
        try:
            chunk = first
            while True:
                if chunk.text or chunk.finish_reason:
                    yield event(
                        chunk_body(
                            request_id=request_id, model=model, created=created,
                            delta={"content": chunk.text} if chunk.text else {},
                            finish_reason=chunk.finish_reason,
                        )
                    )
                last = chunk
                try:
                    chunk = await stream.__anext__()
                except StopAsyncIteration:
                    break
        except Exception as exc:
            yield sse_error_event(exc)
            yield "data: [DONE]\n\n"
            return
        if include_usage:
            yield event(
                chunk_body(
                    request_id=request_id, model=model, created=created, delta={}, finish_reason=None,
                    usage=usage_body(last.prompt_tokens, last.completion_tokens, last.cached_tokens),
                    with_choice=False,
                )
            )
        yield "data: [DONE]\n\n"
