"""Thin Ray Serve deployments wiring the pipeline stages together.

The deployments' names, defined once: Serve, the routers' replica lists and /ready know them
by these (``serve_app.routing.replica_set``, ``replica_status``).
"""

INGRESS = "OpenAIIngress"
IMAGE_POOL = "ImagePool"
LLM = "PixtralServer"

__all__ = ["IMAGE_POOL", "INGRESS", "LLM"]
