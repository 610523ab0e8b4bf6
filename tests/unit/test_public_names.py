"""Each serve_app package's public names (``__all__``), pinned: a name joins or leaves a
package's surface by a change to this file, and whatever another package, tools/ or bench/
imports from a package is on its surface."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import serve_app

REPO = Path(__file__).resolve().parents[2]

PUBLIC = {
    "serve_app": [],
    "serve_app.api": [
        "BodyBudget", "BodyHold", "ChatCompletionRequest", "ForcedToolCall", "RequestSettings", "StageClock",
        "completion", "error_response", "format_server_timing", "parse_chat_request_off_loop", "sse_events",
        "unwrap", "unwrap_cause",
    ],
    "serve_app.compat": [
        "BackPressureError", "REPLICA_GONE", "back_off_between_rounds", "by_reference", "chosen_replica", "end_this_replica",
        "haproxy_enabled", "image_to_num_tokens", "probe_queue_lens", "serve_http_host", "with_ingress_router",
    ],
    "serve_app.deployments": [
        "ColocatedServer", "EngineFactory", "IMAGE_POOL", "INGRESS", "ImagePool", "LLM", "OpenAIIngress", "PICKER", "PixtralServer",
        "vllm_engine_factory", "with_picker",
    ],
    "serve_app.engine": [
        "ChatPrompt", "DefaultSystemPrompt", "Engine", "GenerationChunk", "MISTRAL_COMMON_DATA",
        "PixtralPromptBuilder", "PrefixCacheEstimate", "SamplingSettings", "StallWatch", "StartLog", "VLLMEngine",
        "WorkLedger",
        "coalesce", "forced_call_schema", "image_grid_of", "with_tool_calls",
    ],
    "serve_app.images": [
        "ImageGrid", "ImageLoader", "ImageSource", "PreparedImage", "decode_and_resize", "register_source",
        "s3_policy_at_start", "sources_at_start", "unregister_source",
    ],
    "serve_app.routing": [
        "CacheAffinityRouter", "Placement", "ReplicaSets", "RoutingDecision", "RoutingPolicy", "RoutingTag",
        "ReplicaPicker", "affinity_key", "body_affinity_key", "picker_api", "rendezvous_order", "route", "router_config",
    ],
}


def packages() -> list[str]:
    found = [serve_app.__name__]
    found += [m.name for m in pkgutil.walk_packages(serve_app.__path__, "serve_app.") if m.ispkg]
    return sorted(found)


def test_every_package_is_pinned():
    assert packages() == sorted(PUBLIC)


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_public_names_are_pinned_and_resolve(package):
    module = importlib.import_module(package)
    assert sorted(module.__all__) == sorted(PUBLIC[package])
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


def imports_across_packages() -> set[tuple[str, str, str]]:
    """(package, name, importing file) of every name imported from a serve_app package by code
    outside that package (serve_app's other packages, tools/, bench/)."""
    found = set()
    for root in ("serve_app", "tools", "bench"):
        for path in (REPO / root).rglob("*.py"):
            here = ".".join(path.relative_to(REPO).with_suffix("").parts)
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
                    continue
                parts = node.module.split(".")
                if parts[0] != "serve_app" or len(parts) < 2 or f"serve_app.{parts[1]}" not in PUBLIC:
                    continue
                package = f"serve_app.{parts[1]}"
                if here.startswith(package + "."):
                    continue  # inside the package: its own modules may share anything
                for alias in node.names:
                    found.add((package, alias.name, here))
    return found


def test_what_others_import_from_a_package_is_on_its_surface():
    outside = sorted(
        (package, name, where)
        for package, name, where in imports_across_packages()
        if name not in PUBLIC[package] and importlib.util.find_spec(f"{package}.{name}") is None  # a module
    )
    assert outside == [], "imported from outside the package but not in its __all__"


def test_the_engine_protocol_imports_nothing_heavy():
    """The protocol (and the package around it) loads without mistral_common, PIL, numpy or vLLM."""
    code = (
        "import sys, serve_app.engine.protocol, serve_app.engine; "
        "print(sorted(m for m in ('mistral_common', 'PIL', 'numpy', 'vllm', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
