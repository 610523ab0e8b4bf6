"""A generated hostile-request suite (hostile_cases.py) against the session's app, with good traffic alongside.

Every hostile request must get a clear answer — an allowed status and, for errors, an
OpenAI error body — within a bound, and the good requests sent meanwhile must stay at
least 99% successful.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer

import httpx
import pytest

from chat_payloads import REQUEST_LIMIT, data_url, jpeg_bytes, user_message
from hostile_cases import Case, HostileImageHandler, all_cases

MODEL = "tiny-pixtral"
ANSWER_BOUND_S = 60  # the pool's fetch deadline is 20 s; nothing may take three times that
MIN_CASES = 200


@pytest.fixture(scope="module")
def hostile_host():
    server = ThreadingHTTPServer(("127.0.0.1", 0), HostileImageHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def send(base: str, api_key: str, case: Case) -> tuple[Case, int | None, dict | None, float]:
    content = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json", **case.headers}
    started = time.monotonic()
    try:
        response = httpx.post(base + "/v1/chat/completions", content=content, headers=headers, timeout=ANSWER_BOUND_S)
    except httpx.TimeoutException:
        return case, None, None, time.monotonic() - started
    try:
        body = response.json()
    except ValueError:
        body = None
    return case, response.status_code, body, time.monotonic() - started


def problem(case: Case, status: int | None, body: dict | None) -> str | None:
    if status is None:
        return "no answer within the bound"
    if status not in case.allowed:
        return f"status {status} not in {sorted(case.allowed)}: {json.dumps(body)[:300]}"
    if status >= 400:
        error = (body or {}).get("error")
        if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"} or not error["message"]:
            return f"status {status} without an OpenAI error body: {json.dumps(body)[:300]}"
        if case.codes is not None and error["code"] not in case.codes:
            return f"code {error['code']!r} not in {sorted(case.codes)}: {error['message'][:200]}"
    return None


def test_hostile_requests_get_clear_answers_while_good_traffic_flows(served, api_key, hostile_host):
    cases = all_cases(MODEL, hostile_host, REQUEST_LIMIT)
    assert len(cases) >= MIN_CASES

    good: list[int] = []
    stop = threading.Event()

    def good_traffic() -> None:
        seed = 50_000
        while not stop.is_set():
            seed += 1
            body = {"model": MODEL, "messages": [user_message(data_url(jpeg_bytes(seed, (64, 48))))], "max_tokens": 2}
            try:
                response = httpx.post(
                    served + "/v1/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {api_key}"},
                    timeout=ANSWER_BOUND_S,
                )
                good.append(response.status_code)
            except httpx.HTTPError:
                good.append(0)

    steady = threading.Thread(target=good_traffic, daemon=True)
    steady.start()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda case: send(served, api_key, case), cases))
    stop.set()
    steady.join(timeout=ANSWER_BOUND_S + 5)

    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    failures = []
    for case, status, body, elapsed in results:
        row = table[case.category]
        row["tried"] += 1
        row["hung"] += status is None
        row["2xx"] += status is not None and status < 300
        row["clear 4xx"] += status is not None and 400 <= status < 500
        row["5xx"] += status is not None and status >= 500
        row["slowest_s"] = max(row["slowest_s"], round(elapsed, 1))
        issue = problem(case, status, body)
        if issue:
            failures.append(f"{case.category} / {case.name}: {issue}")
    print("\ncategory | tried | 2xx | clear 4xx | 5xx | hung | slowest (s)")
    for category, row in table.items():
        print(f"{category} | {row['tried']} | {row['2xx']} | {row['clear 4xx']} | {row['5xx']} | {row['hung']} | {row['slowest_s']}")
    print(f"good traffic alongside: {good.count(200)}/{len(good)} OK")
    assert not failures, "\n".join(failures)
    assert len(good) >= 20
    assert good.count(200) >= 0.99 * len(good), collections.Counter(good)
