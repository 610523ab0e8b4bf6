"""Thin Ray Serve deployments wiring the pipeline stages together."""
