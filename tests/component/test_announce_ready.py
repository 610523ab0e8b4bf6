"""tools/announce_ready.py (make run's "answering chats" line) against a loopback HTTP server."""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from tools.announce_ready import target, wait_and_announce


@pytest.fixture()
def app_server():
    """/ready answers 503 twice, then 200; chat requests are recorded and answered 200."""
    state = {"ready_calls": 0, "chats": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            state["ready_calls"] += 1
            self.send_response(200 if self.path == "/ready" and state["ready_calls"] > 2 else 503)
            self.end_headers()

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["chats"].append((self.path, self.headers.get("Authorization"), body))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", state
    server.shutdown()
    server.server_close()


def test_one_line_once_a_chat_is_answered(app_server, monkeypatch):
    base, state = app_server
    monkeypatch.setenv("PIXTRAL_SERVE_API_KEYS", "k1,k2")
    out = io.StringIO()
    assert wait_and_announce(base, "tiny-pixtral", timeout_s=30, period_s=0.05, out=out)
    assert out.getvalue().startswith(f"pixtral-serve is answering chats at {base}/v1 (model 'tiny-pixtral')")
    assert out.getvalue().count("\n") == 1
    assert state["ready_calls"] == 3  # not before /ready said so
    [(path, auth, body)] = state["chats"]
    assert (path, auth, body["model"], body["max_tokens"]) == ("/v1/chat/completions", "Bearer k1", "tiny-pixtral", 1)


def test_nothing_printed_when_it_never_answers():
    out = io.StringIO()
    assert not wait_and_announce("http://127.0.0.1:9", "m", timeout_s=0.3, period_s=0.05, out=out)
    assert out.getvalue() == ""


def test_target_of_the_shipped_configs(tmp_path):
    assert target("config.cpu.yaml") == ("http://127.0.0.1:8000", "tiny-pixtral")
    assert target("config.yaml") == ("http://127.0.0.1:8000", "mistralai/Pixtral-12B-2409")
    config = {"http_options": {"host": "10.0.0.5", "port": 9000},
              "applications": [{"route_prefix": "/api/", "args": {"served_model_name": "p"}}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert target(tmp_path / "c.yaml") == ("http://10.0.0.5:9000/api", "p")
