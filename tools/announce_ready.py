"""Print one line once the app started by ``serve run CONFIG`` answers a chat request.

    python -m tools.announce_ready config.cpu.yaml &   # beside `serve run config.cpu.yaml` (make run)

Polls ``/ready`` (the probe: an engine and a pool replica are running), then sends one
one-token chat request, and prints the URL and the model name when it is answered. Gives up
quietly when the process that started it (``serve run``'s shell) is gone, or after
``--timeout-s``. Uses the first key of ``PIXTRAL_SERVE_API_KEYS`` when there is one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml


def target(config_file: str | Path) -> tuple[str, str]:
    """(base URL, served model name) of the config's first application."""
    config = yaml.safe_load(Path(config_file).read_text())
    http = config.get("http_options", {})
    host = http.get("host", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    app = config["applications"][0]
    prefix = (app.get("route_prefix") or "/").rstrip("/")
    return f"http://{host}:{http.get('port', 8000)}{prefix}", app["args"]["served_model_name"]


def answers_chat(base: str, model: str, api_key: str | None, timeout_s: float = 30) -> bool:
    """True when /ready is 200 and a one-token chat request is answered 200."""
    try:
        with urllib.request.urlopen(f"{base}/ready", timeout=timeout_s) as response:
            if response.status != 200:
                return False
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        request = urllib.request.Request(f"{base}/v1/chat/completions", body.encode(), headers, method="POST")
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):  # not listening yet, 503 while starting, ...
        return False


def wait_and_announce(base: str, model: str, *, timeout_s: float, period_s: float = 1.0, out=sys.stdout) -> bool:
    parent = os.getppid()
    keys = [k.strip() for k in os.environ.get("PIXTRAL_SERVE_API_KEYS", "").split(",") if k.strip()]
    started = time.monotonic()
    while time.monotonic() - started < timeout_s and os.getppid() == parent:
        if answers_chat(base, model, keys[0] if keys else None):
            print(
                f"pixtral-serve is answering chats at {base}/v1 (model {model!r}) "
                f"after {time.monotonic() - started:.0f} s",
                file=out,
                flush=True,
            )
            return True
        time.sleep(period_s)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="the Serve config file that serve run was given")
    parser.add_argument("--timeout-s", type=float, default=1800)
    args = parser.parse_args()
    base, model = target(args.config)
    return 0 if wait_and_announce(base, model, timeout_s=args.timeout_s) else 1


if __name__ == "__main__":
    sys.exit(main())
