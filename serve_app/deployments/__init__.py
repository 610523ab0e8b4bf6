"""Thin Ray Serve deployments wiring the pipeline stages together.

The deployments' names are defined once, here: Serve, the routers' replica lists and /ready
know the deployments by them (``serve_app.routing.replica_set``, ``replica_status``).
"""

from serve_app import _lazy_exports

INGRESS = "OpenAIIngress"
IMAGE_POOL = "ImagePool"
LLM = "PixtralServer"
PICKER = "ReplicaPicker"  # with ingress.colocated and several LLM replicas behind HAProxy

__all__, __getattr__ = _lazy_exports(
    __name__,
    {
        "colocated": ("ColocatedServer", "with_picker"),
        "image_pool": ("ImagePool",),
        "ingress": ("OpenAIIngress",),
        "pixtral_server": ("EngineFactory", "PixtralServer", "vllm_engine_factory"),
    },
)
__all__ += ["IMAGE_POOL", "INGRESS", "LLM", "PICKER"]
