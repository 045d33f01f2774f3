"""An embedded ComfyUI for ``glimpse-enhance run`` without ``--server``.

Started from ``$COMFYUI_PATH`` (default ``~/ComfyUI``) as a subprocess of the same Python:

    main.py --listen 127.0.0.1 --port <free> --base-directory <tmp> --database-url sqlite:///:memory:
            --disable-auto-launch --extra-model-paths-config <tmp>/extra_model_paths.yaml [--cpu] [extra args]

with this pack linked into ``<tmp>/custom_nodes`` and, in the yaml, ``--models-dir DIR`` (a folder in ComfyUI's model
layout: checkpoints/, loras/, diffusion_models/, controlnet/, depth_estimators/) followed by ``$COMFYUI_PATH/models``
(whose place --base-directory would otherwise hide); ComfyUI's own extra_model_paths.yaml is passed on as well.
``--cpu`` is added when torch sees no CUDA/MPS device. The server runs in its own session so the terminal's Ctrl-C
reaches only the runner, which stops it (terminate, then kill after 10 s) and removes ``<tmp>`` (the uploaded inputs and
the server-side outputs with it) on success, error, Ctrl-C and SIGTERM; on Linux the server also gets SIGTERM when the
runner dies without cleaning up (SIGKILL), so no ComfyUI is left behind. ``<tmp>`` is ``glimpse-comfy-*`` in the
system's temporary folder, named in the run's log, with the runner's pid in ``<tmp>/runner.pid``: the folder of a runner
that was killed is removed by the next embedded start. Its log goes to ``<tmp>/comfyui.log``; when it fails to start the
log's tail is in the error. ``GLIMPSE_KEEP_EMBEDDED=1`` keeps ``<tmp>`` for inspection.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .client import ComfyClient, ServerUnreachable

MODEL_FOLDERS = ("checkpoints", "loras", "diffusion_models", "controlnet", "depth_estimators", "vae", "clip")
PACK_NAME = "glimpse-enhance"
BASE_PREFIX = "glimpse-comfy-"
PID_FILE = "runner.pid"


class EmbeddedError(RuntimeError):
    pass


def comfyui_path() -> Path:
    p = Path(os.environ.get("COMFYUI_PATH") or "~/ComfyUI").expanduser()
    if not (p / "main.py").is_file():
        raise EmbeddedError(f"no ComfyUI found at {p} (no main.py): set COMFYUI_PATH, or pass --server URL to use a "
                            "running ComfyUI")
    return p


def pack_root(comfy: Path | None = None) -> Path | None:
    """The node pack to load: the checkout this package lives in (has the pack's __init__.py and nodes/), else
    ``<COMFYUI_PATH>/custom_nodes/glimpse-enhance`` (this package pip-installed from elsewhere)."""
    candidates = [Path(__file__).resolve().parents[2]]
    if comfy is not None:
        candidates.append(comfy / "custom_nodes" / PACK_NAME)
    for root in candidates:
        if (root / "__init__.py").is_file() and (root / "nodes").is_dir():
            return root.resolve()
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when the runner dies, even by SIGKILL (no orphaned ComfyUI)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_bases(tmp: Path | None = None, prefix: str = BASE_PREFIX) -> list[Path]:
    """Remove the temporary folders (named ``prefix``..., holding PID_FILE) of embedded servers, or of fleet workers,
    whose process is gone (killed before it could clean up)."""
    removed = []
    for base in Path(tmp or tempfile.gettempdir()).glob(prefix + "*"):
        try:
            pid = int((base / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            continue  # not ours to judge (no pid file: an older runner, or still being created)
        if not _alive(pid):
            shutil.rmtree(base, ignore_errors=True)
            removed.append(base)
    return removed


def _has_accelerator() -> bool:
    try:
        import torch
    except ImportError:
        return False
    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(mps and mps.is_available())


class EmbeddedComfy:
    """Context manager: ``with EmbeddedComfy(models_dir) as url: ...``."""

    def __init__(self, models_dir: Path | None = None, cpu: bool | None = None, extra_args: list[str] | None = None,
                 start_timeout: float = 300.0, log=None):
        self.models_dir = Path(models_dir).resolve() if models_dir else None
        self.cpu = (not _has_accelerator()) if cpu is None else cpu
        self.extra_args = list(extra_args or [])
        self.start_timeout = start_timeout
        self.log = log or (lambda s: None)
        self.proc: subprocess.Popen | None = None
        self.base: Path | None = None
        self.url = ""

    def start(self) -> str:
        comfy = comfyui_path()
        if self.models_dir and not self.models_dir.is_dir():
            raise EmbeddedError(f"--models-dir {self.models_dir} is not a folder")
        for stale in remove_stale_bases():
            self.log(f"removed {stale}, left behind by a killed run")
        self.base = Path(tempfile.mkdtemp(prefix=BASE_PREFIX))
        (self.base / PID_FILE).write_text(f"{os.getpid()}\n")
        (self.base / "custom_nodes").mkdir()
        self.log(f"embedded ComfyUI folder {self.base} (inputs, outputs, log; removed when the run ends)")
        pack = pack_root(comfy)
        if pack is None:
            self.log(f"warning: the Glimpse Enhance pack was not found (no checkout, no {comfy}/custom_nodes/"
                     f"{PACK_NAME}); only core nodes are available")
        else:
            (self.base / "custom_nodes" / PACK_NAME).symlink_to(pack, target_is_directory=True)
        yaml = self.base / "extra_model_paths.yaml"
        conf = {}
        if self.models_dir:  # first, so its files win over same-named ones below
            conf["glimpse_models"] = {"base_path": str(self.models_dir),
                                      **{f: f for f in MODEL_FOLDERS if (self.models_dir / f).is_dir()}}
        own = comfy / "models"  # --base-directory moves the model folders; keep the user's ComfyUI models visible
        if own.is_dir():
            subs = sorted(p.name for p in own.iterdir() if p.is_dir())
            if subs:
                conf["comfyui_models"] = {"base_path": str(own), **{f: f for f in subs}}
        yaml.write_text(json.dumps(conf or {"glimpse_none": None}), encoding="utf-8")  # JSON is valid YAML
        configs = [str(yaml)]
        if (comfy / "extra_model_paths.yaml").is_file():
            configs.append(str(comfy / "extra_model_paths.yaml"))
        port = free_port()
        cmd = [sys.executable, str(comfy / "main.py"), "--listen", "127.0.0.1", "--port", str(port),
               "--base-directory", str(self.base), "--database-url", "sqlite:///:memory:", "--disable-auto-launch",
               "--extra-model-paths-config", *configs]
        if self.cpu:
            cmd.append("--cpu")
        cmd += self.extra_args
        self.url = f"http://127.0.0.1:{port}"
        self.log(f"starting ComfyUI from {comfy} on {self.url}{' (CPU)' if self.cpu else ''}")
        logf = open(self.base / "comfyui.log", "wb")  # closed in stop()
        self._logf = logf
        env = dict(os.environ)
        if pack is not None:  # ComfyUI must not find this checkout's `nodes` package as its own `nodes` module
            env["PYTHONPATH"] = os.pathsep.join(p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                if p and os.path.realpath(p) != str(pack))
        self.proc = subprocess.Popen(cmd, cwd=comfy, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        client = ComfyClient(self.url)
        deadline = time.monotonic() + self.start_timeout
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise EmbeddedError(f"embedded ComfyUI exited with code {self.proc.returncode} while starting:\n{tail}")
            try:
                client.check()
                break
            except ServerUnreachable:
                if time.monotonic() > deadline:
                    tail = self.log_tail()
                    self.stop()
                    raise EmbeddedError(f"embedded ComfyUI did not answer within {self.start_timeout:.0f} s:\n{tail}") \
                        from None
                time.sleep(0.25)
        self.log(f"ComfyUI ready after {time.monotonic() - t0:.1f} s")
        if pack is not None and f"(IMPORT FAILED): {self.base / 'custom_nodes' / PACK_NAME}" in self.log_text():
            tail = self.log_tail(60)
            self.stop()
            raise EmbeddedError(f"the Glimpse Enhance pack failed to import in the embedded ComfyUI:\n{tail}")
        return self.url

    def log_text(self) -> str:
        try:
            return (self.base / "comfyui.log").read_text(encoding="utf-8", errors="replace")
        except (OSError, TypeError):
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_logf", None):
            self._logf.close()
            self._logf = None
        if self.base is not None and not os.environ.get("GLIMPSE_KEEP_EMBEDDED"):
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
