"""Harness for the tests that run against a real ComfyUI (found at ``COMFYUI_PATH``).

Session fixtures:

``models_dir``
    Path of the random-initialised fixture models in ComfyUI's folder layout (checkpoints/, loras/, controlnet/,
    diffusion_models/, depth_estimators/ ...), built or reused by ``python -m tests.fixtures --models-dir DIR --size
    vega`` (``--size full`` in the full-size process, see below). ``GLIMPSE_TEST_MODELS_DIR`` points at a ready
    folder instead.
``comfy``
    ComfyUI imported in this process with the same flags as the server (``--cpu``, a temporary ``--base-directory``),
    this repo loaded as the custom node pack ``glimpse-enhance`` through a temporary custom_nodes folder, and every
    subfolder of ``models_dir`` registered in folder_paths. ``.nodes`` is ComfyUI's nodes module, ``.pack`` maps this
    pack's node ids to classes, ``.run(node_id_or_class, **inputs)`` executes one node (core or ours, V1 or V3) through
    ComfyUI's executor functions under ``torch.inference_mode()`` and returns its outputs as a tuple (with ``.ui``),
    failing on any non-finite float tensor in them; ``.log()`` is the ComfyUI log text of this process.
``comfy_server``
    A real ``main.py`` server on 127.0.0.1 with the pack linked into its custom_nodes and ``models_dir`` mapped by an
    extra_model_paths yaml. ``.url``, ``.queue(prompt) -> history entry``, ``.object_info()``, ``.log()``,
    ``.output_dir``; ``.PromptError`` (HTTP 400, carries ``node_errors``) and ``.ExecutionError`` (``execution_error``,
    carries the message and node type) are what ``queue`` raises.

Checks on every test in this folder: a log line of :data:`BAD_LOG_PATTERNS` (in-process log or server log, since the
previous test) fails it; ``@pytest.mark.allow_comfy_warnings("pattern", ...)`` allows named ones. ``assert_finite`` is
a fixture (and ``comfy.assert_finite``).

One process holds one ComfyUI flag set. Tests marked ``fullsize`` run only in a process that selects nothing else
(``pytest tests/comfy -m fullsize``); that process adds ``--bf16-unet`` and builds ``--size full`` fixtures. In a
mixed selection they are skipped. ``GLIMPSE_COMFY_FLAGS`` adds more main.py flags to both the in-process ComfyUI and
the server. The whole folder is skipped when ``COMFYUI_PATH`` is unset or has no main.py.
"""
from __future__ import annotations

import ast
import asyncio
import importlib.util
import json
import logging
import math
import os
import shlex
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _load_comfy_process():
    """tests/comfy/comfy_process.py (the plain functions, shared with bench/), loaded by path: this folder is no
    package."""
    name = "glimpse_tests_comfy_process"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "comfy_process.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


_cp = _load_comfy_process()
REPO = _cp.REPO
PACK_NAME = _cp.PACK_NAME
SERVER_START_TIMEOUT_S = 90

# Log lines by which ComfyUI reports a broken load while it carries on (uninitialised weights, NaN latents), or a
# failed pack import. Sources: comfy/lora.py, comfy/sd.py, comfy/model_base.py, comfy/controlnet.py,
# comfy/model_detection.py, nodes.py (v0.3.64).
BAD_LOG_PATTERNS = (
    "lora key not loaded",  # lora.load_lora: a LoRA key that matches no model weight
    "NOT LOADED",  # sd.load_lora_for_models: a converted LoRA key that patched nothing
    "WARNING SHAPE MISMATCH",  # lora.calculate_weight: patch not merged
    "Calculate Weight Failed",
    "patch type not recognized",
    "unet missing",  # model_base: checkpoint lacks UNet weights (left uninitialised)
    "unet unexpected",
    "left over keys in diffusion model",  # sd.load_diffusion_model_state_dict: keys nothing consumed
    "clip missing",
    "no CLIP/text encoder weights in checkpoint",
    "Missing VAE keys",
    "No VAE weights detected",
    "ERROR UNSUPPORTED DIFFUSION MODEL",
    "no match {",  # model_detection: UNet config matches no supported model
    "missing controlnet keys",
    "leftover keys:",  # controlnet: keys of the file no layer took
    "error could not detect control model type",
    "t2i missing",
    "invalid value encountered",  # numpy RuntimeWarning when SaveImage casts NaN pixels (server runs with it 'always')
)
PACK_IMPORT_PATTERNS = ("IMPORT FAILED", "Cannot import", "Error while calling comfy_entrypoint")


_comfyui_path = _cp.comfyui_path


def _skip_reason() -> str:
    p = os.environ.get("COMFYUI_PATH")
    if not p:
        return "COMFYUI_PATH is not set: the real-ComfyUI tests need a ComfyUI checkout"
    return f"COMFYUI_PATH={p} has no main.py"


def _in_here(item) -> bool:
    return HERE in Path(str(item.path)).resolve().parents


# -- collection: skip without ComfyUI, one flag set per process --------------------------------------------------

_MODE = {"fullsize": False}


def pytest_configure(config):
    config.addinivalue_line("markers", "allow_comfy_warnings(*patterns): allow these ComfyUI log warnings")


@pytest.hookimpl(trylast=True)  # after -m / -k deselection
def pytest_collection_modifyitems(config, items):
    mine = [i for i in items if _in_here(i)]
    if not mine:
        return
    if _comfyui_path() is None:
        skip = pytest.mark.skip(reason=_skip_reason())
        for item in mine:
            item.add_marker(skip)
        return
    # In-process modules first, server modules last: the server keeps its models loaded for the rest of the session,
    # and a module's own model fixtures are released when the module ends.
    server_modules = {i.path for i in mine if "comfy_server" in getattr(i, "fixturenames", ())}
    items.sort(key=lambda i: _in_here(i) and i.path in server_modules)
    full = [i for i in mine if i.get_closest_marker("fullsize")]
    if full and len(full) == len(mine):
        _MODE["fullsize"] = True
    elif full:
        skip = pytest.mark.skip(reason="full-size tests need their own process: pytest tests/comfy -m fullsize")
        for item in full:
            item.add_marker(skip)


TIMINGS: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        timings = ", ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items())
        terminalreporter.write_line(f"ComfyUI harness timings: {timings}")


def comfy_flags(base_dir: Path) -> list[str]:
    """main.py flags shared by the in-process ComfyUI and the server."""
    flags = ["--cpu", "--base-directory", str(base_dir)]
    if _MODE["fullsize"]:
        flags.append("--bf16-unet")
    flags += shlex.split(os.environ.get("GLIMPSE_COMFY_FLAGS", ""))
    return flags


def _fixture_size() -> str:
    return "full" if _MODE["fullsize"] else "vega"


def declared_node_ids() -> set[str]:
    """Node ids declared in nodes/*.py (``node_id="..."`` in a Schema), read from the source without importing it."""
    ids = set()
    for path in (REPO / "nodes").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.keyword) and node.arg == "node_id" and isinstance(node.value, ast.Constant):
                ids.add(node.value.value)
    return ids


# -- log checks -------------------------------------------------------------------------------------------------

class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        try:
            self.lines.append(f"{record.levelname}: {record.getMessage()}")
        except Exception:
            self.handleError(record)


_LOG = _Records()
_CURSOR = {"log": 0, "server": 0}
_ACTIVE: dict[str, object] = {}


def _bad_lines(lines, allowed) -> list[str]:
    hits = []
    for line in lines:
        pattern = next((p for p in BAD_LOG_PATTERNS if p in line), None)
        if pattern and not any(a in line for a in allowed):
            hits.append(line if len(line) < 400 else line[:400] + " ...")
        elif any(p in line for p in PACK_IMPORT_PATTERNS) and PACK_NAME in line:
            hits.append(line)
    return hits


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    marker_args = [a for m in item.iter_markers("allow_comfy_warnings") for a in m.args]
    lines = _LOG.lines[_CURSOR["log"]:]
    _CURSOR["log"] = len(_LOG.lines)
    server = _ACTIVE.get("server")
    if server is not None:
        text = server.log()
        lines += text[max(_CURSOR["server"], server.ready_offset):].splitlines()
        _CURSOR["server"] = len(text)
    hits = _bad_lines(lines, marker_args)
    if hits:
        pytest.fail("ComfyUI reported a broken load or a failed pack import:\n" + "\n".join(hits), pytrace=False)
    return result


def assert_finite(value, what: str = "tensor") -> None:
    """Fail if any floating tensor in ``value`` (a tensor, or lists/tuples/dicts of them) has NaN or inf."""
    import torch

    def walk(v, path):
        if isinstance(v, torch.Tensor):
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                bad = (~torch.isfinite(v)).sum().item()
                raise AssertionError(f"{path} has {bad} non-finite values of {v.numel()} (shape {list(v.shape)})")
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                walk(x, f"{path}[{i}]")
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(x, f"{path}[{k!r}]")

    walk(value, what)


@pytest.fixture(scope="session")
def pack_node_ids() -> set[str]:
    """Every node id declared in nodes/*.py."""
    return declared_node_ids()


@pytest.fixture(name="assert_finite")
def assert_finite_fixture():
    return assert_finite


# -- models --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def fixture_size() -> str:
    """'vega' for everyday tests, 'full' in the full-size process."""
    return _fixture_size()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory, fixture_size) -> Path:
    if _comfyui_path() is None:
        pytest.skip(_skip_reason())
    ready = os.environ.get("GLIMPSE_TEST_MODELS_DIR")
    if ready:
        return Path(ready).resolve()
    out = tmp_path_factory.mktemp(f"models-{fixture_size}")
    cmd = [sys.executable, "-m", "tests.fixtures", "--models-dir", str(out), "--size", fixture_size]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-6000:]
        pytest.fail(f"building fixtures failed ({shlex.join(cmd)}, exit {proc.returncode}):\n{tail}", pytrace=False)
    TIMINGS[f"fixtures {fixture_size}"] = time.perf_counter() - t0
    return out


_model_folders = _cp.model_folders
_make_base_dir = _cp.make_base_dir


# -- in-process ComfyUI ------------------------------------------------------------------------------------------

class NodeResult(tuple):
    """A node's outputs; ``.ui`` holds what it sends to the canvas (saved images, text)."""

    ui: dict


class InProcessComfy:
    timings = TIMINGS
    def __init__(self, base_dir: Path, models_dir: Path):
        comfy = _cp.start_in_process(base_dir, models_dir, comfy_flags(base_dir), log_handler=_LOG,
                                     log_lines=lambda: _LOG.lines)
        TIMINGS["in-process init_extra_nodes"] = comfy.init_s
        self.base_dir = base_dir
        self.output_dir = Path(comfy.folder_paths.get_output_directory())
        self.nodes, self.folder_paths, self._execution, self._torch = (comfy.nodes, comfy.folder_paths,
                                                                       comfy.execution, comfy.torch)
        self.assert_finite = assert_finite
        self.pack = comfy.pack
        self.models_dir = models_dir

    def log(self) -> str:
        return "\n".join(_LOG.lines)

    def free(self) -> None:
        """Unload every model ComfyUI holds and collect garbage (call after dropping your references)."""
        import gc

        import comfy.model_management as mm

        mm.unload_all_models()
        gc.collect()
        mm.soft_empty_cache()

    def node_class(self, node):
        if isinstance(node, str):
            if node not in self.nodes.NODE_CLASS_MAPPINGS:
                raise KeyError(f"no node {node!r} in this ComfyUI (pack nodes: {sorted(self.pack)})")
            return self.nodes.NODE_CLASS_MAPPINGS[node]
        return node

    def run(self, node, /, *, check_finite: bool = True, **inputs) -> NodeResult:
        """Execute one node as ComfyUI's executor does (input data, hidden inputs, V3 class clone, V1 FUNCTION,
        async nodes) and return its outputs; a list output (OUTPUT_IS_LIST) comes back as the whole list."""
        cls = self.node_class(node)
        ex = self._execution
        v3 = hasattr(cls, "GET_SCHEMA")
        valid = cls.INPUT_TYPES(include_hidden=False) if v3 else cls.INPUT_TYPES()
        known = set(valid.get("required", {})) | set(valid.get("optional", {}))
        unknown = sorted(set(inputs) - known)
        if unknown:
            raise TypeError(f"{getattr(cls, '__name__', cls)} has no inputs {unknown}; it has {sorted(known)}")
        unique_id = uuid.uuid4().hex[:8]
        input_data, _, hidden = ex.get_input_data(inputs, cls, unique_id)
        for name in inputs:  # values that look like links ([str, int]) are values here
            input_data[name] = [inputs[name]]

        async def go():
            outs = await ex._async_map_node_over_list("glimpse-test", unique_id, cls(), input_data, cls.FUNCTION,
                                                      allow_interrupt=True, hidden_inputs=hidden)
            outs = await ex.resolve_map_node_over_list_results(outs)
            return ex.get_output_from_returns(outs, cls)

        with self._torch.inference_mode():
            output, ui, has_subgraph = asyncio.run(go())
        if has_subgraph:
            raise NotImplementedError(f"{cls} expanded a subgraph; run it through comfy_server instead")
        is_list = getattr(cls, "OUTPUT_IS_LIST", None) or [False] * len(output)
        result = NodeResult(o if lst else o[0] for o, lst in zip(output, is_list))
        result.ui = ui
        if check_finite:
            assert_finite(list(result), f"{getattr(cls, '__name__', cls)} output")
        return result


@pytest.fixture(scope="session")
def comfy(models_dir, tmp_path_factory) -> InProcessComfy:
    base = _make_base_dir(tmp_path_factory.mktemp("comfy-inprocess"))
    return InProcessComfy(base, models_dir)


# -- server --------------------------------------------------------------------------------------------------------

class PromptError(RuntimeError):
    """POST /prompt answered 400: the prompt failed validation."""

    def __init__(self, body: dict):
        self.body = body
        self.node_errors = body.get("node_errors", {})
        error = body.get("error", {})
        lines = [f"{error.get('message', 'prompt rejected')}: {error.get('details', '')}"]
        for node_id, err in self.node_errors.items():
            for e in err.get("errors", []):
                lines.append(f"node {node_id} ({err.get('class_type')}): {e.get('message')}: {e.get('details')}")
        super().__init__("\n".join(lines))


class ExecutionError(RuntimeError):
    """The prompt ran and a node raised (``execution_error`` on the websocket)."""

    def __init__(self, data: dict):
        self.data = data
        self.message = data.get("exception_message", "")
        self.node_type = data.get("node_type")
        super().__init__(f"{self.node_type} (node {data.get('node_id')}) raised {data.get('exception_type')}: "
                         f"{self.message}")


class ComfyServer:
    PromptError = PromptError
    ExecutionError = ExecutionError
    timings = TIMINGS  # tests may add their own measurements; printed in the terminal summary

    def __init__(self, base_dir: Path, models_dir: Path):
        import requests

        self._requests = requests
        self.base_dir = base_dir
        self.output_dir = base_dir / "output"
        yaml_path = base_dir / "extra_model_paths.yaml"
        folders = "".join(f"    {name}: {path}\n" for name, path in _model_folders(models_dir).items())
        yaml_path.write_text(f"glimpse_fixtures:\n    base_path: {models_dir}\n{folders}", encoding="utf-8")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base_dir / "server.log"
        cmd = [sys.executable, str(_comfyui_path() / "main.py"), *comfy_flags(base_dir), "--listen", "127.0.0.1",
               "--port", str(self.port), "--database-url", "sqlite:///:memory:",
               "--extra-model-paths-config", str(yaml_path)]
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="always:invalid value encountered:RuntimeWarning")
        env["PYTHONPATH"] = os.pathsep.join(p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                            if p and os.path.realpath(p) != str(REPO))
        self._log_file = open(self.log_path, "w", encoding="utf-8")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=base_dir, env=env, stdout=self._log_file, stderr=subprocess.STDOUT)
        self.ready_offset = math.inf
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.start_s = TIMINGS["server start"] = time.perf_counter() - t0
        self.ready_offset = len(self.log())

    def _wait_ready(self):
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode} while starting:\n{self.tail()}")
            try:
                if self._requests.get(self.url + "/system_stats", timeout=2).ok:
                    break
            except self._requests.ConnectionError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"ComfyUI did not answer /system_stats in {SERVER_START_TIMEOUT_S} s:\n{self.tail()}")
        failed = [line for line in self.log().splitlines()
                  if any(p in line for p in PACK_IMPORT_PATTERNS) and PACK_NAME in line]
        if failed:
            raise RuntimeError("ComfyUI did not import the pack:\n" + "\n".join(failed) + "\n" + self.tail())

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-n:])

    def unload_models(self, free_memory: bool = False) -> None:
        """Have the server unload every model it holds, so the next prompt logs its own model loads; with
        ``free_memory`` also drop its executor cache, which holds the loaders' outputs: only then is the models' RAM
        returned (a CPU server keeps unloaded models in RAM), which a test starting another server needs.

        ComfyUI reads the /free flags in its worker loop after the prompt it is running, if any; a flag-free prompt
        queued behind them is therefore only finished once the flags have taken effect."""
        r = self._requests.post(self.url + "/free", json={"unload_models": True, "free_memory": free_memory},
                                timeout=60)
        r.raise_for_status()
        self.queue({"1": {"class_type": "PrimitiveString", "inputs": {"value": uuid.uuid4().hex}},
                    "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}})

    def object_info(self, node_id: str | None = None) -> dict:
        r = self._requests.get(self.url + "/object_info" + (f"/{node_id}" if node_id else ""), timeout=60)
        r.raise_for_status()
        return r.json()

    def queue(self, prompt: dict, timeout: float = 600) -> dict:
        """Run an API-format prompt; return its /history entry. Raises PromptError / ExecutionError."""
        import websocket

        t0 = time.perf_counter()
        client_id = uuid.uuid4().hex
        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}", timeout=timeout)
        error = None
        try:
            r = self._requests.post(self.url + "/prompt", json={"prompt": prompt, "client_id": client_id}, timeout=60)
            if r.status_code == 400:
                raise PromptError(r.json())
            r.raise_for_status()
            prompt_id = r.json()["prompt_id"]
            while True:
                try:
                    raw = ws.recv()
                except websocket.WebSocketTimeoutException:
                    raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.tail()}") from None
                if not isinstance(raw, str):
                    continue  # binary preview images
                msg = json.loads(raw)
                data = msg.get("data", {})
                if data.get("prompt_id") != prompt_id:
                    continue
                if msg["type"] in ("execution_error", "execution_interrupted"):
                    error = data
                if msg["type"] == "executing" and data.get("node") is None:
                    break
        finally:
            ws.close()
        self.last_prompt_s = time.perf_counter() - t0
        if error is not None:
            raise ExecutionError(error)
        return self._requests.get(f"{self.url}/history/{prompt_id}", timeout=60).json()[prompt_id]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self._log_file.close()


@pytest.fixture(scope="session")
def comfy_server(models_dir, tmp_path_factory):
    base = _make_base_dir(tmp_path_factory.mktemp("comfy-server"))
    server = ComfyServer(base, models_dir)
    _ACTIVE["server"] = server
    try:
        yield server
    finally:
        _ACTIVE.pop("server", None)
        server.stop()
