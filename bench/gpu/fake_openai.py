"""Dry-run stand-in for `vllm serve`: /health and a streaming /v1/chat/completions that
decodes the request's data: URL image (so it costs something) and streams max_tokens tokens."""

import argparse
import asyncio
import base64
import io
import json

from aiohttp import web
from PIL import Image


async def health(_):
    return web.Response(text="")


async def chat(request):
    body = await request.json()
    url = body["messages"][0]["content"][1]["image_url"]["url"]
    if url.startswith("data:"):
        Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    n = body.get("max_tokens", 16)
    for i in range(n):
        await asyncio.sleep(0.01)
        ev = {"choices": [{"index": 0, "delta": {"content": f"t{i} "}}]}
        await resp.write(f"data: {json.dumps(ev)}\n\n".encode())
    usage = {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n}}
    await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
    return resp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--api-server-count", type=int, default=1)  # accepted, like vllm serve
    a = ap.parse_args()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes([web.get("/health", health), web.post("/v1/chat/completions", chat)])
    web.run_app(app, host="127.0.0.1", port=a.port, print=None)


if __name__ == "__main__":
    main()
