"""ComfyUI in this process with this pack loaded: the plain functions behind tests/comfy/conftest.py's ``comfy``
fixture, shared with the benchmark (bench/), which runs whole prompts through the same in-process ComfyUI.

No pytest here. One process holds one ComfyUI flag set: :func:`start_in_process` parses ``flags`` exactly as main.py
does and refuses to run twice.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "glimpse-enhance"


class SilentServer:
    """The ``server`` a PromptExecutor in this process reports to: its UI messages go nowhere (no websocket
    clients here)."""

    client_id = None
    last_node_id = None
    last_prompt_id = None
    sockets_metadata: dict = {}

    def send_sync(self, *args, **kwargs):
        pass

    def send_progress_text(self, *args, **kwargs):
        pass

    def queue_updated(self, *args, **kwargs):
        pass


def comfyui_path() -> Path | None:
    """ComfyUI's folder from ``COMFYUI_PATH``, or None when it is unset or has no main.py."""
    p = os.environ.get("COMFYUI_PATH")
    return Path(p).expanduser().resolve() if p and (Path(p).expanduser() / "main.py").is_file() else None


def model_folders(models_dir: Path) -> dict[str, Path]:
    """ComfyUI model folder name -> path, for every subfolder of ``models_dir``."""
    return {p.name: p for p in sorted(models_dir.iterdir()) if p.is_dir()}


def make_base_dir(root: Path) -> Path:
    """A ComfyUI base directory whose custom_nodes holds only this pack, linked as a user installs it."""
    for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "custom_nodes" / PACK_NAME).symlink_to(REPO, target_is_directory=True)
    return root


def start_in_process(base_dir: Path, models_dir: Path, flags: list[str],
                     log_handler: logging.Handler | None = None, log_lines=None) -> SimpleNamespace:
    """Import ComfyUI from ``COMFYUI_PATH`` with main.py ``flags``, load its extra nodes and this pack (from
    ``base_dir``'s custom_nodes), and register every subfolder of ``models_dir`` in folder_paths.

    Returns ``nodes``, ``folder_paths``, ``execution``, ``torch`` (the modules), ``pack`` (this pack's node id ->
    class) and ``init_s`` (seconds spent in init_extra_nodes). ``log_handler`` is added to the root logger (set to
    INFO); ``log_lines()`` (optional) gives the log text searched for the reason when the pack fails to load.
    """
    root = comfyui_path()
    if root is None:
        raise RuntimeError(f"COMFYUI_PATH={os.environ.get('COMFYUI_PATH')!r} is not a ComfyUI folder (no main.py)")
    repo = str(REPO)
    # `python -m ...` from the repo root puts it on sys.path; ComfyUI must not see this repo's `nodes`.
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != repo]
    sys.path.insert(0, str(root))
    import comfy.options

    if "comfy.cli_args" in sys.modules:
        raise RuntimeError("ComfyUI's cli_args were imported before its flags could be set (one flag set per process)")
    argv, sys.argv = sys.argv, ["main.py", *flags]
    comfy.options.enable_args_parsing()  # parse the flags exactly as main.py does, once per process
    try:
        import comfy.cli_args  # noqa: F401
    finally:
        sys.argv = argv
        comfy.options.enable_args_parsing(False)
    logging.getLogger().setLevel(logging.INFO)
    if log_handler is not None:
        logging.getLogger().addHandler(log_handler)

    import utils.install_util  # noqa: F401  (before `import nodes`, which puts comfy/ first on sys.path)
    import execution
    import folder_paths
    import nodes
    import torch

    if Path(folder_paths.base_path) != base_dir:
        raise RuntimeError(f"folder_paths.base_path is {folder_paths.base_path}, expected {base_dir}")
    folder_paths.add_model_folder_path("custom_nodes", str(base_dir / "custom_nodes"), is_default=True)
    t0 = time.perf_counter()
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    init_s = time.perf_counter() - t0
    if PACK_NAME not in nodes.LOADED_MODULE_DIRS:
        lines = list(log_lines()) if log_lines is not None else []
        errors = [line for line in lines if PACK_NAME in line or "Traceback" in line or "Error" in line]
        raise RuntimeError(f"the pack did not load as custom node {PACK_NAME}:\n" + "\n".join(errors[-20:]))
    module = f"custom_nodes.{PACK_NAME}"
    pack = {k: v for k, v in nodes.NODE_CLASS_MAPPINGS.items()
            if getattr(v, "RELATIVE_PYTHON_MODULE", None) == module}
    for name, path in model_folders(models_dir).items():
        folder_paths.add_model_folder_path(name, str(path))
    return SimpleNamespace(nodes=nodes, folder_paths=folder_paths, execution=execution, torch=torch, pack=pack,
                           init_s=init_s)
