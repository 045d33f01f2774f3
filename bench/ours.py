"""Ours: one bundled API workflow executed by ComfyUI's own PromptExecutor in this process, with per-node timing.

    python -m bench.ours --device cpu|cuda --models-dir DIR --set DIR --views N --resolution R --config t4 --out F.json

Run by ``python -m bench`` in a child process per configuration (one ComfyUI flag set per process, and a clean peak
memory). ComfyUI is started with the pack through tests/comfy/comfy_process.py, the same code as the test harness.

Every run after the first changes the RandomNoise seed and LoadViewSet's background colour by one level, so every
node but the model loaders runs again (a new set on loaded models); the first run's extra time is the load time.
Each node execution is timed (device-synchronised) by wrapping ``execution.get_output_data``, and the times are
summed by node class and split into VAE encode, sampling, VAE decode, our nodes, loaders and other.
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path

# glimpse before ComfyUI starts: start_in_process takes the repo root off sys.path, and on a machine where the
# package is not installed (the GPU image) it is importable only from there
import glimpse.lightning  # noqa: F401  (executed_steps)
from glimpse.presets import PRESETS, preset_settings

from .common import (
    PARTS,
    REPO,
    SPLIT_PARTS,
    Clock,
    executed_steps,
    gpu_name,
    load_workflow,
    median,
    nodes_of,
    peak_rss_bytes,
    settings_of,
    write_json,
)

BACKGROUNDS = ("#808080", "#7f7f7f")


class _Sink:
    """Where the executor sends its UI messages: nowhere (no websocket clients in this process)."""

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


def adapt(workflow: dict, settings, set_dir: Path, views: int, resolution: int,
          subfolder: str) -> tuple[dict, list[str]]:
    """The workflow on this view set at this resolution; returns it and a line per change made."""
    wf = copy.deepcopy(workflow)
    changes = []
    loaders = nodes_of(wf, "LoadViewSet")
    if len(loaders) != 1:
        raise ValueError(f"the workflow must hold one LoadViewSet node, it holds {len(loaders)}")
    lv = wf[loaders[0]]["inputs"]
    lv["path"] = str(set_dir)
    if "views" in lv:
        lv["views"] = f"0-{views - 1}"
    presets = nodes_of(wf, "MemoryPreset")
    try:  # MemoryPreset's own check of a custom resolution
        preset_settings("custom", resolution=resolution)
        preset_takes_it = True
    except ValueError:
        preset_takes_it = False
    if preset_takes_it or not presets:
        for nid in presets:  # a named preset ignores its fields: custom with the named preset's values + resolution
            inputs = wf[nid]["inputs"]
            named = PRESETS.get(inputs.get("preset"))
            current = named.resolution if named is not None else inputs.get("resolution")
            if current != resolution:
                if named is not None and inputs.get("preset") != "custom":
                    for k, v in vars(named).items():
                        if k in inputs and k != "preset":
                            inputs[k] = str(v) if k == "steps" else v
                    inputs["preset"] = "custom"
                inputs["resolution"] = resolution
                changes.append(f"MemoryPreset {nid}: preset custom ({named.preset if named else 'custom'} values), "
                               f"resolution {resolution}")
        lv["resolution"] = resolution
    else:  # a size MemoryPreset refuses: LoadViewSet sets it itself
        if isinstance(lv.get("settings"), list):
            del lv["settings"]
            changes.append(f"LoadViewSet {loaders[0]}: settings unlinked (MemoryPreset refuses resolution "
                           f"{resolution}); its own resolution {resolution} and views_per_chunk "
                           f"{settings.views_per_chunk} (the preset's) instead")
        lv["resolution"] = resolution
        lv["views_per_chunk"] = settings.views_per_chunk
    for nid in nodes_of(wf, "SaveViewSet"):
        wf[nid]["inputs"]["subfolder"] = subfolder
    return wf, changes


def _seed_nodes(wf: dict) -> list[tuple[str, str]]:
    out = []
    for nid, node in wf.items():
        for key in ("noise_seed", "seed"):
            if key in node["inputs"] and not isinstance(node["inputs"][key], list):
                out.append((nid, key))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ours")
    ap.add_argument("--device", choices=("cpu", "cuda"), required=True)
    ap.add_argument("--models-dir", type=Path, required=True)
    ap.add_argument("--set", type=Path, required=True, help="view-set folder at the working resolution")
    ap.add_argument("--views", type=int, required=True)
    ap.add_argument("--resolution", type=int, required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--repeat", type=int, default=3, help="warm runs after the first")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    # the workflow and glimpse pieces first: start_in_process takes the repo root off sys.path
    workflow, source = load_workflow(args.config)
    settings = settings_of(workflow, args.config)
    sys.path.insert(0, str(REPO))
    from tests.comfy.comfy_process import make_base_dir, start_in_process

    tmp = Path(tempfile.mkdtemp(prefix="glimpse-bench-ours-"))
    base = make_base_dir(tmp / "comfy")
    flags = ["--base-directory", str(base)] + (["--cpu"] if args.device == "cpu" else [])
    t0 = time.perf_counter()
    comfy = start_in_process(base, args.models_dir.resolve(), flags)
    startup_s = time.perf_counter() - t0
    execution, nodes, torch = comfy.execution, comfy.nodes, comfy.torch
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    class_of = {}
    for node_id, cls in nodes.NODE_CLASS_MAPPINGS.items():
        class_of.setdefault(cls, node_id)
    clock = Clock(args.device)
    original = execution.get_output_data

    items: dict[str, int] = {}  # calls of the node's function: one per list item (chunk), once for list inputs

    async def timed_get_output_data(prompt_id, unique_id, obj, input_data_all, *a, **kw):
        cls = obj if isinstance(obj, type) else type(obj)
        name = class_of.get(cls, getattr(cls, "__name__", str(cls)))
        n = 1 if getattr(cls, "INPUT_IS_LIST", False) else max((len(v) for v in input_data_all.values()), default=1)
        items[name] = items.get(name, 0) + n
        if args.device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        try:
            return await original(prompt_id, unique_id, obj, input_data_all, *a, **kw)
        finally:
            if args.device == "cuda":
                torch.cuda.synchronize()
            clock.add(name, time.perf_counter() - t)

    execution.get_output_data = timed_get_output_data
    # inside the sampler: the UNet (BaseModel.apply_model) and the ControlNet (get_control), timed the same way, and
    # the UNet calls counted (executed steps x chunks)
    from comfy import controlnet as comfy_controlnet
    from comfy import model_base as comfy_model_base

    inner = Clock(args.device)
    comfy_model_base.BaseModel.apply_model = inner.wrap("unet", comfy_model_base.BaseModel.apply_model)
    for cls in (comfy_controlnet.ControlNet, comfy_controlnet.T2IAdapter):
        cls.get_control = inner.wrap("controlnet", cls.get_control)
    executor = execution.PromptExecutor(_Sink(), cache_type=execution.CacheType.CLASSIC)

    wf, changes = adapt(workflow, settings, args.set.resolve(), args.views, args.resolution, f"bench_{args.config}")
    seeds = _seed_nodes(wf)
    loadviewset = nodes_of(wf, "LoadViewSet")[0]
    runs = []
    for i in range(1 + args.repeat):
        prompt = copy.deepcopy(wf)
        for nid, key in seeds:
            prompt[nid]["inputs"][key] = 42 + i
        prompt[loadviewset]["inputs"]["background"] = BACKGROUNDS[i % 2]
        prompt_id = uuid.uuid4().hex
        valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        if not valid[0]:
            raise RuntimeError(f"{args.config}: the workflow failed validation: {valid[1]} {valid[3]}")
        clock.reset()
        inner.reset()
        items.clear()
        t = time.perf_counter()
        executor.execute(prompt, prompt_id, {}, valid[2])
        if args.device == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
        if not executor.success:
            errors = [m for m in executor.status_messages if m[0] == "execution_error"]
            raise RuntimeError(f"{args.config}: run {i} failed: {errors[-1][1] if errors else 'unknown error'}")
        runs.append({"wall_s": wall, "nodes": dict(clock.seconds), "calls": dict(items),
                     "inner": dict(inner.seconds), "inner_calls": dict(inner.calls)})
        logging.info("bench ours %s run %d: %.2f s for %d views", args.config, i, wall, args.views)

    def split(node_times: dict) -> dict:
        parts = dict.fromkeys(SPLIT_PARTS, 0.0)
        for name, s in node_times.items():
            part = PARTS.get(name) or ("ours" if name in comfy.pack else "other")
            parts[part] += s
        return parts

    warm = runs[1:] or runs
    wall = median([r["wall_s"] for r in warm])
    pick = min(warm, key=lambda r: abs(r["wall_s"] - wall))  # the run nearest the median, for its split
    node_split = {k: v for k, v in sorted(pick["nodes"].items(), key=lambda kv: -kv[1])}
    parts = split(pick["nodes"])
    out = {
        "workflow": source,
        "graph_changes": changes,
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
        "executed_steps": executed_steps(settings),
        "views": args.views,
        "resolution": args.resolution,
        "startup_s": startup_s,
        "first_run_s": runs[0]["wall_s"],
        # what the cold run spent beyond the warm run, node by node: loaders, weights to the device, first calls
        "load_s": sum(max(0.0, s - pick["nodes"].get(name, 0.0)) for name, s in runs[0]["nodes"].items()),
        "loader_nodes_s": split(runs[0]["nodes"])["loaders"],
        "wall_s": wall,
        "wall_runs_s": [r["wall_s"] for r in warm],
        "wall_16_s": wall if args.views == 16 else None,
        "s_per_view": wall / args.views,
        "split_s": parts,
        "split_per_view_s": {k: v / args.views for k, v in parts.items()},
        "sampling_detail_s": {"unet": pick["inner"].get("unet", 0.0), "controlnet": pick["inner"].get("controlnet", 0.0)},
        "unet_calls": pick["inner_calls"].get("unet", 0),
        "sampler_calls": pick["calls"].get("SamplerCustomAdvanced", 0) + pick["calls"].get("KSamplerAdvanced", 0),
        "nodes_s": node_split,
        "node_calls": pick["calls"],
        "first_run_nodes_s": runs[0]["nodes"],
        "peak_rss_gib": peak_rss_bytes() / 2 ** 30,
        "gpu": gpu_name(args.device),
    }
    if args.device == "cuda":
        out["peak_gpu_allocated_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        out["peak_gpu_reserved_gib"] = torch.cuda.max_memory_reserved() / 2 ** 30
    write_json(args.out, out)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
