"""One pydantic tree for the application's arguments (the ``args`` of config.yaml).

Validated exactly once, in ``serve_app.app.build_app``; typed objects travel
down through ``.bind()``. Every model forbids unknown keys so that a typo in
config.yaml is an error naming the key, not a silently ignored setting.
"""

from __future__ import annotations

import ipaddress
import math
import os
from pathlib import Path
from typing import Any, Literal, Self

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AutoscalingConfig(_Strict):
    """Ray Serve autoscaling for one deployment (a subset of Serve's own options)."""

    min_replicas: int = Field(1, ge=0, description="Replicas kept even when idle.")
    max_replicas: int = Field(1, ge=1, description="Upper bound on replicas.")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas at start; min_replicas if unset.")
    target_ongoing_requests: float = Field(
        2.0,
        gt=0,
        description="Ongoing requests per replica the autoscaler aims for. Unlike Ray Serve "
        "LLM's 1e9 default, this actually scales.",
    )
    upscale_delay_s: float = Field(10.0, ge=0, description="Seconds above target before adding replicas.")
    downscale_delay_s: float = Field(120.0, ge=0, description="Seconds below target before removing replicas.")

    @model_validator(mode="after")
    def _bounds(self) -> "AutoscalingConfig":
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must be <= max_replicas")
        return self

    def to_serve(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class DeploymentConfig(_Strict):
    """Resources, scaling and bounded queues of one Ray Serve deployment."""

    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved by each replica.")
    max_ongoing_requests: int = Field(64, ge=1, description="Requests one replica accepts at once.")
    max_queued_requests: int = Field(
        256,
        ge=-1,
        description="Requests each caller (the proxy, or each ingress replica) holds for this deployment "
        "while every replica is at max_ongoing_requests; past it Ray Serve refuses the request and the "
        "client gets 429 + Retry-After (Serve's back-pressure). -1 = unbounded.",
    )
    retry_after_s: float = Field(
        1.0, ge=0, description="Retry-After (seconds) sent with the 429 of a full queue of this deployment."
    )
    graceful_shutdown_timeout_s: float = Field(
        300.0,
        ge=0,
        description="On scale-down or redeploy, how long a replica keeps serving its in-flight requests "
        "(streams included) after new requests stop going to it, before it is stopped.",
    )
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig, description="Replica scaling.")


def _env_list(name: str | None) -> list[str] | None:
    """Comma-separated values of environment variable ``name``; None when it is unset or empty."""
    if not name:
        return None
    values = [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]
    return values or None


def is_loopback_host(host: str) -> bool:
    """True for listener hosts only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class IngressConfig(DeploymentConfig):
    """The HTTP ingress: validation, auth, streaming."""

    auth: Literal["loopback_only", "required", "disabled"] = Field(
        "loopback_only",
        description="loopback_only: bearer keys are checked when configured, and a replica without keys "
        "refuses to start unless Serve's HTTP listener is on a loopback host. required: a replica "
        "without keys refuses to start. disabled: no authentication anywhere (logged at start).",
    )
    api_keys: list[str] = Field(default_factory=list, description="Accepted bearer keys (prefer api_keys_env).")
    api_keys_env: str | None = Field(
        "PIXTRAL_SERVE_API_KEYS",
        description="Environment variable holding comma-separated bearer keys, read at replica start.",
    )
    max_request_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="Largest accepted request body. 16 MiB holds Pixtral's image limit as data: URLs "
        "(each image is resized to at most 1024x1024 anyway); larger images belong behind https:// or s3://.",
    )
    parse_off_loop_bytes: int = Field(
        256 * 1024,
        ge=0,
        description="Bodies larger than this are parsed and validated in a worker thread, so that a big "
        "request does not stall the ingress event loop for the others.",
    )
    max_inflight_body_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="Request-body bytes one ingress replica holds at once; past it a new body gets 429 + "
        "Retry-After before any of it is read (a body is held until its images are prepared and the first "
        "chunk is in). Parsing costs about 3x a body's size in memory: size this to the replica's memory / 3.",
    )
    colocated: bool = Field(
        False,
        description="Serve the API from the LLM replicas themselves, each one process with its engine (no "
        "ingress deployment, no Serve handle call between them); this section's CPUs, replicas, queues and "
        "drain then do not apply (llm's do). With several LLM replicas behind HAProxy, a ReplicaPicker "
        "deployment tells HAProxy which replica takes each request (cache affinity from the body, which "
        "HAProxy forwards with RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY=1, as the container image sets). "
        "While no LLM replica runs (its engine loading, a replacement), nothing of the app answers: no /health, "
        "no 503 + Retry-After, requests wait in Serve's queue. Experimental: being measured against the "
        "separate ingress.",
    )
    replica_header: bool = Field(
        False,
        description="Name the LLM replica that answered in an X-Pixtral-Replica response header (an opaque "
        "Serve replica id). Off: internal replica ids are not shown to clients; benchmarks and tests turn it on.",
    )
    server_timing: bool = Field(
        False,
        description="Answer chat requests with a Server-Timing header: milliseconds per stage up to the "
        "first token (auth, body, parse, images, route, hop, prompt, engine, total, then the engine's parts: "
        "engine-render, -to-core, -queue, -prefill, -from-core). Off: the same stages "
        "still go to the pixtral_request_stage_seconds histogram.",
    )
    max_ongoing_requests: int = Field(512, ge=1, description="Requests one ingress replica accepts at once.")
    max_queued_requests: int = Field(
        1024,
        ge=-1,
        description="Requests Serve's proxy holds while every ingress replica is at max_ongoing_requests; "
        "past it the proxy answers 429 + Retry-After itself (plain-text body). -1 = unbounded.",
    )

    def resolved_api_keys(self) -> frozenset[str]:
        keys = set(self.api_keys)
        keys.update(_env_list(self.api_keys_env) or ())
        return frozenset(keys)


class FetchLimits(_Strict):
    """The limits every image source applies: bytes, time and retries of one image."""

    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Cap on one image's source bytes.")
    connect_timeout_s: float = Field(5.0, gt=0, description="TCP/TLS connect timeout.")
    total_timeout_s: float = Field(20.0, gt=0, description="Whole-fetch deadline, retries included.")
    retries: int = Field(2, ge=0, description="Retries on 5xx and connection errors only.")
    retry_backoff_s: float = Field(0.2, ge=0, description="First backoff; doubles per retry.")


class DataUrlSourceConfig(FetchLimits):
    """``data:image/...;base64,`` URLs (serve_app/images/data_url.py)."""

    max_data_url_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Cap on one decoded data: URL.")


class HttpSourceConfig(FetchLimits):
    """``https://`` and opt-in ``http://`` URLs (serve_app/images/http_fetch.py)."""

    max_redirects: int = Field(3, ge=0, description="Redirect hops followed, each re-checked.")
    allow_http: bool = Field(False, description="Accept plain http:// URLs (https:// always accepted).")
    allowed_domains: list[str] = Field(
        default_factory=list, description="If set, only these hosts (and their subdomains) are fetched."
    )
    block_private_addresses: bool = Field(
        True,
        description="SSRF guard: refuse loopback, private, link-local and other non-public "
        "addresses after DNS resolution. Turn off only for tests or private stores.",
    )


class S3SourceConfig(FetchLimits):
    """``s3://bucket/key`` URLs (serve_app/images/s3_fetch.py)."""

    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto); AWS if unset.")
    s3_region: str | None = Field(None, description="S3 region; boto3's default chain if unset.")
    s3_allowed_buckets: list[str] = Field(
        default_factory=list,
        description='Buckets s3:// images may come from. Empty (the default): no s3:// images at all. '
        '["*"]: every bucket the replica\'s credentials can read (logged as a warning at start).',
    )
    s3_allowed_buckets_env: str | None = Field(
        "PIXTRAL_SERVE_S3_ALLOWED_BUCKETS",
        description="Environment variable with comma-separated buckets, read at replica start; when set "
        "and not empty it replaces s3_allowed_buckets.",
    )
    s3_read_threads: int = Field(
        8,
        ge=1,
        description="Threads per pool replica for blocking S3 reads, apart from the event loop's default "
        "executor (DNS lookups), so that slow S3 cannot starve https fetches.",
    )

    def with_environment(self) -> "Self":
        """This config with ``s3_allowed_buckets`` from the environment when it is set there."""
        buckets = _env_list(self.s3_allowed_buckets_env)
        return self if buckets is None else self.model_copy(update={"s3_allowed_buckets": buckets})

    def s3_bucket_allowed(self, bucket: str) -> bool:
        return "*" in self.s3_allowed_buckets or bucket in self.s3_allowed_buckets


class FetchConfig(DataUrlSourceConfig, HttpSourceConfig, S3SourceConfig):
    """Getting image bytes from a URL: the limits all sources share and each source's own section.

    An image source (serve_app/images/sources.py) reads only its section, a ``FetchLimits``
    subclass; this class joins the sections, so their keys stay flat under ``image_pool.fetch``
    and each key keeps its source's prefix. A new source adds its section to the bases here.
    """


class DecodeConfig(_Strict):
    """Limits on decoding image bytes."""

    max_pixels: int = Field(50_000_000, ge=1, description="Decompression-bomb guard on width*height.")
    cache_entries: int = Field(
        64,
        ge=0,
        description="LRU cache of decoded images per pool replica; each entry is at most "
        "max_image_size^2 x 3 bytes (3 MiB for Pixtral), so 64 entries stay under 200 MiB.",
    )
    decode_threads: int = Field(2, ge=1, description="Threads per pool replica that decode off the event loop.")


class ImagePoolConfig(DeploymentConfig):
    """The CPU image pool: fetch, decode, resize, hash."""

    fetch: FetchConfig = Field(default_factory=FetchConfig, description="Fetch limits and policy.")
    decode: DecodeConfig = Field(default_factory=DecodeConfig, description="Decode limits.")
    max_ongoing_requests: int = Field(32, ge=1, description="Images one pool replica works on at once.")
    graceful_shutdown_timeout_s: float = Field(
        60.0, ge=0, description="On scale-down, how long a pool replica finishes the images it holds."
    )
    pixels_by_reference: bool = Field(
        True,
        description="The pool keeps each prepared image in its object store and the ingress passes a record "
        "to the LLM replica, which reads the pixels itself (the ingress never holds them; "
        "bench/results/2026-12-06-cpu-pixels-by-reference.md). false: the pixels go through the ingress by "
        "value, as the ingress's retry after 503 images_lost always sends them (lost records were seen once, "
        "under overload on an H100: bench/results/2026-12-06-h100-fractional.md).",
    )
    pixels_by_value_up_to: int = Field(
        8,
        ge=0,
        description="With pixels_by_reference, a request's pixels still go by value over Serve's own transport "
        "while its ingress replica holds at most this many requests with images, the request included: no "
        "object-store put and read back, no Ray task path. On the CPU machine (2026-12-08, "
        "bench/results/2026-12-08-cpu-pixels-by-value-threshold.md) three 512x384 users at once spent 5-17 ms "
        "less per request in the serving stages and 8 unique 1024x768 at once 11 ms less, with less CPU; one "
        "user from 7.9 ms less to 0.9 ms more over four runs. Above it, where a burst's pixels would pile up "
        "in the ingress (32 at once: bench/results/2026-12-06-cpu-pixels-by-reference.md), by reference. "
        "0: always by reference.",
    )


class EngineConfig(_Strict):
    """vLLM engine arguments (``AsyncEngineArgs``) for Pixtral."""

    model: str = Field(description="Hugging Face repo id or local folder of a mistral-format checkpoint.")
    tokenizer: str | None = Field(
        None,
        description="Tokenizer file (tekken.json / *.model.v7m1) used to build prompts; "
        "found in the model folder if unset.",
    )
    tokenizer_mode: Literal["mistral"] = Field("mistral", description="Pixtral needs mistral_common's tokenizer.")
    config_format: Literal["mistral", "auto"] = Field("mistral", description="params.json checkpoints.")
    load_format: Literal["mistral", "dummy", "auto", "safetensors", "runai_streamer"] = Field(
        "mistral",
        description="dummy = random weights (benchmarks; image content is then ignored). runai_streamer = "
        "stream the safetensors from object storage (model: s3://bucket/folder; needs the "
        "runai-model-streamer-s3 package, credentials from boto3's chain, AWS_ENDPOINT_URL for a "
        "non-AWS store) or a local folder, straight into memory.",
    )
    dtype: str = Field("bfloat16", description="Weights and activations dtype.")
    max_model_len: int = Field(32768, ge=256, description="Prompt + output tokens per sequence.")
    max_images_per_prompt: int = Field(4, ge=0, description="limit_mm_per_prompt image count.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per replica (one placement group).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Fraction of GPU memory vLLM may use.")
    enforce_eager: bool = Field(False, description="Skip CUDA graphs / torch.compile (fast start, slower).")
    seed: int = Field(0, description="Engine seed.")
    compact_json: bool = Field(
        True,
        description="Structured outputs (response_format, forced tool calls) leave no whitespace between "
        "JSON tokens, so a model cannot spend max_tokens on indentation: vLLM's xgrammar backend with "
        "disable_any_whitespace (an engine setting; vLLM allows it only with a named backend). A schema "
        "feature xgrammar lacks is then a 400 instead of a fallback to another backend.",
    )
    extra: dict[str, Any] = Field(
        default_factory=dict,
        description="Further AsyncEngineArgs passed through unchanged (checked against vLLM's own fields).",
    )

    def prefix_caching(self) -> bool:
        """Whether the engine keeps a prefix cache (vLLM's default: on)."""
        return bool(self.extra.get("enable_prefix_caching", True))


class AdmissionConfig(_Strict):
    """Cost-aware admission in each LLM replica, after the pool (prompt tokens are known by then).

    The replica keeps a ledger of the work its engine holds: prompt tokens not yet
    prefilled and output tokens not yet decoded, turned into seconds with the two
    rates below. A new request is refused with 429 + Retry-After while the ledger is
    above ``max_pending_s``, instead of waiting in the engine past any client's
    patience. Rates are the engine's aggregate throughput under load; measure them
    (bench/run.py with bench/real_traffic.yaml or bench/reliability.yaml) for each model and machine.
    """

    max_pending_s: float | None = Field(
        30.0,
        gt=0,
        description="Refuse new requests while the engine already holds more than this many seconds of "
        "estimated prefill + decode work; null turns admission control off.",
    )
    prefill_tokens_per_s: float = Field(
        20000.0, gt=0, description="Prompt tokens per second the engine prefills under load (all requests)."
    )
    decode_tokens_per_s: float = Field(
        1000.0, gt=0, description="Output tokens per second the engine decodes under load (all requests)."
    )
    output_tokens_estimate: int = Field(
        256,
        ge=1,
        description="Output tokens counted for a request that has not finished: min(max_tokens, this) "
        "minus what it has produced (most answers stop well before max_tokens).",
    )
    max_retry_after_s: float = Field(
        30.0,
        gt=0,
        description="Cap on the Retry-After of an admission 429 (the excess work in seconds, jittered from "
        "0.75x to 1.25x + 1 s so that refused clients do not retry together).",
    )


class LLMRoutingConfig(_Strict):
    """How ingress replicas pick an LLM replica for each request (``serve_app.routing``)."""

    policy: Literal["affinity", "pow2"] = Field(
        "affinity",
        description="affinity: the replica that served the conversation's opening (system messages and "
        "first user message: its text and image content ids), by rendezvous hashing, so turn 2+ hits "
        "that replica's prefix cache; falls back to load when it is busy. pow2: Serve's default power "
        "of two choices on queue length alone.",
    )
    prefix_chars: int = Field(
        2048, ge=1, description="Characters of the opening's text that go into the affinity key."
    )
    busy_ongoing_requests: int | None = Field(
        None,
        ge=1,
        description="Ongoing requests at which the preferred replica counts as busy and the request "
        "goes to the less loaded of it and one other replica; the autoscaling "
        "target_ongoing_requests (rounded up) if unset.",
    )


class LLMDeploymentConfig(DeploymentConfig):
    """The vLLM replicas."""

    accelerator: Literal["gpu", "cpu"] = Field("gpu", description="gpu: placement groups of GPU bundles.")
    cpus_per_gpu_worker: float = Field(1.0, ge=0, description="CPUs in each GPU bundle of the placement group.")
    gpus_per_replica: float = Field(
        1.0,
        gt=0,
        le=1,
        description="GPU share of one replica (its actor and its placement bundle), with "
        "engine.tensor_parallel_size 1 only: 0.5 puts two replicas, two engines, on one GPU (Ray's "
        "fractional GPUs); engine.gpu_memory_utilization must then fit within the share (e.g. 0.42 "
        "each). Below 1 with tensor_parallel_size > 1 is an error. Measured on one H100 with vLLM 0.25.1: "
        "two engines starting together count each other's weights in their memory profiling and fail "
        "(bench/results/2026-12-05-h100-fractional.md); with engine.extra.kv_cache_memory_bytes, which "
        "skips that profiling, both started (2026-12-06-h100-fractional.md). llm.admission's rates are an "
        "engine's: with two engines busy on one GPU each clears about half a whole GPU's.",
    )
    placement_strategy: Literal["STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        "STRICT_PACK", description="Placement group strategy for the replica's bundles."
    )
    max_ongoing_requests: int = Field(
        1024,
        ge=1,
        description="Requests one vLLM replica accepts at once. Admission (``admission``) is what refuses "
        "work the engine cannot start soon; this only bounds memory, so keep it above what admission lets in.",
    )
    max_queued_requests: int = Field(
        512,
        ge=-1,
        description="Requests each ingress replica holds for the LLM until Serve assigns them to a replica "
        "(a burst arrives faster than assignment); past it 429 + Retry-After (Serve's back-pressure). "
        "-1 = unbounded.",
    )
    admission: AdmissionConfig = Field(
        default_factory=AdmissionConfig, description="Cost-aware admission (429 when the engine is too busy)."
    )
    health_check_period_s: float = Field(
        5.0,
        gt=0,
        description="Seconds between Serve's health checks of a replica. A dead engine is also caught "
        "by the replica's own watchdog, which ends the replica at once so Serve replaces it.",
    )
    engine_watchdog_period_s: float = Field(
        0.5, gt=0, description="How often the replica asks its engine whether it is still alive."
    )
    engine_stall_s: float | None = Field(
        30.0,
        gt=0,
        description="Hung-engine detection: when the engine holds unfinished requests and for this many "
        "seconds no request received output and the engine reported no step (a stuck CUDA/NCCL call, a "
        "stopped engine process), the replica counts its engine as dead: requests get 503 + Retry-After, "
        "check_health fails and the replica ends itself so Serve replaces it. Keep it above the longest "
        "single engine step (a chunked prefill step, the image encoder of a full prompt) at full load; "
        "null turns it off.",
    )
    pixels_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Deadline for an LLM replica to read a request's pixels from the image pool's "
        "object store (they come by reference, not through the ingress); past it, or at once when Ray "
        "no longer has them, the ingress prepares the images once more and sends them by value, then "
        "answers 503 images_lost + Retry-After.",
    )
    engine_start_timeout_s: float = Field(
        1800.0,
        gt=0,
        description="Deadline of building the engine (weights loaded, workers up); past it the replica "
        "fails and Ray Serve replaces it.",
    )
    expected_start_s: float = Field(
        90.0,
        gt=0,
        description="Retry-After of the 503 while no engine replica runs, until an outage has been "
        "seen: then the length of the last one (what a replacement took) less what has passed.",
    )
    target_pending_s: float | None = Field(
        10.0,
        gt=0,
        description="Autoscaling on work: replicas are added while the replicas hold more than this many "
        "seconds of estimated engine work each (admission's ledger; serve_app/autoscaling.py), or more "
        "than autoscaling.target_ongoing_requests, whichever asks for more. Keep it below "
        "admission.max_pending_s, so the fleet grows before it sheds. null: ongoing requests only.",
    )
    env: dict[str, str] = Field(default_factory=dict, description="Environment for the replica (runtime_env).")
    routing: LLMRoutingConfig = Field(
        default_factory=LLMRoutingConfig, description="Request routing to the replicas (cache affinity)."
    )
    stream_interval_s: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Token deltas that arrive within this many seconds go to the ingress as one "
        "message (the first and last are never held); 0 sends one message per engine step.",
    )

    prompt_inline_tokens: int = Field(
        2048,
        ge=0,
        description="Prompts of at most this many tokens (estimated from characters and image sizes) "
        "are built on the replica's event loop (~0.1 ms of text, ~0.3 ms with one 512x384 image); "
        "larger ones in a worker thread, so that a long conversation does not hold the replica's "
        "other streams. A thread hop costs more than building a small prompt.",
    )

    def busy_ongoing_requests(self) -> int:
        """The affinity router's busy bound (see ``LLMRoutingConfig.busy_ongoing_requests``)."""
        if self.routing.busy_ongoing_requests is not None:
            return self.routing.busy_ongoing_requests
        return max(1, math.ceil(self.autoscaling.target_ongoing_requests))

    def placement_bundles(self, tensor_parallel_size: int) -> list[dict[str, float]]:
        """One GPU bundle per tensor-parallel rank; the replica itself sits in the first (with
        tensor_parallel_size 1 the only bundle holds ``gpus_per_replica`` of a GPU)."""
        gpus = self.gpus_per_replica if tensor_parallel_size == 1 else 1.0
        bundles = [{"CPU": self.cpus_per_gpu_worker, "GPU": gpus} for _ in range(tensor_parallel_size)]
        bundles[0]["CPU"] += self.num_cpus
        return bundles


class SystemPromptConfig(_Strict):
    """A default system prompt for requests that bring none (Pixtral-Large's card recommends one)."""

    file: str = Field(
        description="Template file with {name}, {today}, {yesterday}; a relative path is looked up in "
        "the model folder, or in the model's Hub repo (e.g. SYSTEM_PROMPT.txt)."
    )
    model_name: str | None = Field(None, description="Fills {name}; the last part of engine.model if unset.")
    timezone: str = Field("UTC", description="IANA timezone that decides {today} and {yesterday}.")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}") from exc
        return value


class ChatFieldsConfig(_Strict):
    """Caps on the request fields whose cost a client chooses (a field past its cap is a 400 naming it)."""

    max_n: int = Field(
        4, ge=1, description="Largest n (choices per request); admission charges decode for every choice."
    )
    max_top_logprobs: int = Field(20, ge=0, description="Largest top_logprobs (OpenAI's own limit is 20).")
    max_schema_bytes: int = Field(
        32 * 1024,
        ge=256,
        description="Largest JSON schema (response_format json_schema, each tool's parameters), in bytes of "
        "compact JSON: the engine compiles a grammar from it for every request.",
    )
    max_schema_depth: int = Field(
        32, ge=2, description="Deepest nesting of objects and lists in one such JSON schema."
    )


class AppConfig(_Strict):
    """Arguments of the pixtral-serve application (``serve_app.app:build_app``)."""

    served_model_name: str = Field(description="The `model` name clients send and /v1/models lists.")
    engine: EngineConfig = Field(description="vLLM engine arguments.")
    llm: LLMDeploymentConfig = Field(default_factory=LLMDeploymentConfig, description="vLLM replicas.")
    image_pool: ImagePoolConfig = Field(default_factory=ImagePoolConfig, description="CPU image pool.")
    ingress: IngressConfig = Field(default_factory=IngressConfig, description="HTTP ingress.")
    default_max_tokens: int = Field(1024, ge=1, description="max_tokens when a request gives none.")
    max_tokens_limit: int = Field(
        4096,
        ge=1,
        description="Largest max_tokens a request may ask for (ignore_eos included): one request holds "
        "an engine slot for at most this many output tokens.",
    )
    system_prompt: SystemPromptConfig | None = Field(
        None, description="Default system prompt, used only when a request has no system message."
    )
    chat_fields: ChatFieldsConfig = Field(
        default_factory=ChatFieldsConfig, description="Caps on n, top_logprobs and JSON schemas."
    )

    @model_validator(mode="after")
    def _default_within_limit(self) -> "AppConfig":
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError("default_max_tokens must be <= max_tokens_limit")
        return self

    @model_validator(mode="after")
    def _gpu_share_fits(self) -> "AppConfig":
        share = self.llm.gpus_per_replica
        if share < 1 and self.engine.tensor_parallel_size > 1:
            raise ValueError("llm.gpus_per_replica below 1 needs engine.tensor_parallel_size 1")
        if share < 1 and self.llm.accelerator == "gpu" and self.engine.gpu_memory_utilization > share:
            raise ValueError(
                f"engine.gpu_memory_utilization ({self.engine.gpu_memory_utilization}) must be <= "
                f"llm.gpus_per_replica ({share}): replicas sharing a GPU split its memory"
            )
        return self

    def tokenizer_path(self) -> str:
        """The tokenizer file prompts are built with (``mistral_common:<file>`` = packaged)."""
        if self.engine.tokenizer:
            return self.engine.tokenizer
        folder = Path(self.engine.model)
        if (folder / "tekken.json").is_file():
            return str(folder / "tekken.json")
        candidates = sorted(folder.glob("tokenizer.model.v*")) if folder.is_dir() else []
        if candidates:
            return str(candidates[-1])
        raise ValueError(
            f"engine.tokenizer is not set and no tokenizer file was found in {folder}; "
            "set engine.tokenizer to the tekken.json or tokenizer.model.v* file"
        )
