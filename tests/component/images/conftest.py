"""Loopback servers for the image fetch tests: an HTTP image host and moto's S3."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from payloads import ALPHA_PNG, BIG, BOMB, GZIP_BOMB, JPEG, ROTATED, TRUNCATED


class ImageServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.stop_slow = threading.Event()
        self.aborted: Counter[str] = Counter()  # responses the client hung up on
        self.accept_encoding: dict[str, str | None] = {}  # the latest Accept-Encoding asked, per path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def count(self, path: str) -> int:
        with self.lock:
            return self.hits[path]

    def handle_error(self, request, client_address) -> None:
        pass  # clients that hang up early (byte cap, timeouts) are part of the tests

    def reset(self) -> None:
        with self.lock:
            self.hits.clear()


@pytest.fixture(scope="session")
def image_server_class() -> type[ImageServer]:
    """The server class itself, for tests that serve it differently (TLS). A fixture, because
    ``from conftest import`` finds whichever conftest module the session imported last."""
    return ImageServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ImageServer

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", ctype: str = "image/jpeg", headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: C901 - a route table
        path, _, query = self.path.partition("?")
        with self.server.lock:
            self.server.hits[path] += 1
            hits = self.server.hits[path]
            self.server.accept_encoding[path] = self.headers.get("Accept-Encoding")
        gzip_if_asked = "gzip" in (self.headers.get("Accept-Encoding") or "")
        routes = {
            "/img.jpg": lambda: self._send(200, JPEG),
            "/rotated.jpg": lambda: self._send(200, ROTATED),
            "/truncated.jpg": lambda: self._send(200, TRUNCATED),
            "/alpha.png": lambda: self._send(200, ALPHA_PNG, "image/png"),
            "/bomb.png": lambda: self._send(200, BOMB, "image/png"),
            "/notimage": lambda: self._send(200, b"<html>hello</html>", "text/html"),
            "/404": lambda: self._send(404, b"nope", "text/plain"),
            "/410": lambda: self._send(410, b"gone", "text/plain"),
            "/403": lambda: self._send(403, b"no", "text/plain"),
            "/401": lambda: self._send(401, b"no", "text/plain"),
            "/418": lambda: self._send(418, b"teapot", "text/plain"),
            "/always500": lambda: self._send(500, b"err", "text/plain"),
            "/flaky": lambda: self._send(500, b"err", "text/plain") if hits == 1 else self._send(200, JPEG),
            "/big-with-length": lambda: self._send(200, BIG),
            "/redirect-ok": lambda: self._send(302, headers={"Location": "/img.jpg"}),
            "/redirect-loop": lambda: self._send(302, headers={"Location": "/redirect-loop"}),
            "/redirect-chain-2": lambda: self._send(301, headers={"Location": "/redirect-ok"}),
            "/redirect-metadata": lambda: self._send(
                302, headers={"Location": "http://169.254.169.254/latest/meta-data/"}
            ),
            "/redirect-elsewhere": lambda: self._send(
                302, headers={"Location": f"http://other.test:{self.server.server_address[1]}/img.jpg"}
            ),
            "/redirect-ftp": lambda: self._send(302, headers={"Location": "ftp://example.com/x.jpg"}),
            # Content-Encoding whatever the client asked for, as misbehaving hosts do
            "/gzip.jpg": lambda: self._send(200, gzip.compress(JPEG), headers={"Content-Encoding": "gzip"}),
            "/deflate.jpg": lambda: self._send(200, zlib.compress(JPEG), headers={"Content-Encoding": "deflate"}),
            "/raw-deflate.jpg": lambda: self._send(200, _raw_deflate(JPEG), headers={"Content-Encoding": "deflate"}),
            "/gzip-bomb": lambda: self._send(200, GZIP_BOMB, headers={"Content-Encoding": "gzip"}),
            "/gzip-broken": lambda: self._send(200, gzip.compress(JPEG)[:-40] + b"\0" * 40,
                                               headers={"Content-Encoding": "gzip"}),
            "/br.jpg": lambda: self._send(200, b"\x0b\x00\x80", headers={"Content-Encoding": "br"}),
            # a host that honours Accept-Encoding
            "/negotiated.jpg": lambda: self._send(200, gzip.compress(JPEG), headers={"Content-Encoding": "gzip"})
            if gzip_if_asked else self._send(200, JPEG),
        }
        if path in routes:
            routes[path]()
        elif path == "/slow-jpg":
            # a short JPEG delayed past the test's deadline
            time.sleep(0.6)
            self._send(200, JPEG)
        elif path == "/big-chunked":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for _ in range(64):
                    chunk = b"\xff" * 16384
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
        elif path == "/slow-forever":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(10**7))
            self.end_headers()
            try:
                deadline = time.monotonic() + 30
                while not self.server.stop_slow.is_set() and time.monotonic() < deadline:
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                with self.server.lock:
                    self.server.aborted[path] += 1
            self.close_connection = True
        else:
            self._send(404, b"no route", "text/plain")


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.fixture(scope="session")
def image_server():
    server = ImageServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.stop_slow.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class MotoS3:
    endpoint: str
    admin: tuple[str, str]  # may do anything
    reader: tuple[str, str]  # may only s3:GetObject on READABLE_PREFIX
    bucket: str = "images"

    def client(self, creds: tuple[str, str]):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=creds[0],
            aws_secret_access_key=creds[1],
        )


READABLE_PREFIX = "public/"
_NO_AUTH_ACTIONS = 3  # create_user, create_access_key, put_user_policy; IAM is enforced after that


def _bootstrap_iam(endpoint: str) -> tuple[tuple[str, str], tuple[str, str]]:
    def iam(creds):
        return boto3.client(
            "iam", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id=creds[0], aws_secret_access_key=creds[1],
        )

    anon = iam(("bootstrap", "bootstrap"))
    anon.create_user(UserName="admin")
    key = anon.create_access_key(UserName="admin")["AccessKey"]
    admin = (key["AccessKeyId"], key["SecretAccessKey"])
    anon.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    ))
    as_admin = iam(admin)
    as_admin.create_user(UserName="reader")
    key = as_admin.create_access_key(UserName="reader")["AccessKey"]
    reader = (key["AccessKeyId"], key["SecretAccessKey"])
    as_admin.put_user_policy(UserName="reader", PolicyName="read-public", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
                       "Resource": f"arn:aws:s3:::images/{READABLE_PREFIX}*"}],
    }))
    return admin, reader


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """``python -m moto.server`` on a free loopback port with IAM enforced.

    moto checks credentials and IAM policies only when
    ``INITIAL_NO_AUTH_ACTION_COUNT`` is set; the first few calls bootstrap an
    admin and a read-only user, every later call is authenticated.
    """
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(_NO_AUTH_ACTIONS)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait(timeout=5)
                pytest.fail(f"moto_server did not start within 30 s: {log.read_text()[-2000:]}")
            time.sleep(0.1)
    try:
        admin, reader = _bootstrap_iam(endpoint)
        moto = MotoS3(endpoint, admin, reader)
        moto.client(admin).create_bucket(Bucket=moto.bucket)
        yield moto
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
