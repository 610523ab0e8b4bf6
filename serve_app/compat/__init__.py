"""Every use of a dependency's private or unstable API, one small module per dependency.

Each function names the attribute it reaches for and the versions it was checked on;
``tests/unit/test_compat.py`` has one test per use that fails, naming the attribute, when
a new version moves it. Nothing outside this package touches those attributes.
"""

from serve_app import _lazy_exports

# The modules themselves (``from serve_app.compat import vllm``) are imported as modules.
__all__, __getattr__ = _lazy_exports(
    __name__,
    {
        "mistral_common": ("image_to_num_tokens",),
        "ray_serve": (
            "REPLICA_GONE",
            "BackPressureError",
            "back_off_between_rounds",
            "by_reference",
            "chosen_replica",
            "end_this_replica",
            "haproxy_enabled",
            "probe_queue_lens",
            "serve_http_host",
            "with_ingress_router",
        ),
    },
)
