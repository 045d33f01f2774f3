"""Ours: one bundled API workflow executed by ComfyUI's own PromptExecutor in this process, with per-node timing.

    python -m bench.ours --device cpu|cuda --models-dir DIR --set DIR --views N --resolution R --config t4 --out F.json

Run by ``python -m bench`` in a child process per configuration (one ComfyUI flag set per process, and a clean peak
memory). ComfyUI is started with the pack through tests/comfy/comfy_process.py, the same code as the test harness.

Every run after the first changes the RandomNoise seed and LoadViewSet's background colour by one level, so every
node but the model loaders runs again (a new set on loaded models); the first run's extra time is the load time.
Each node execution is timed (device-synchronised) by wrapping ``execution.get_output_data``, and the times are
summed by node class and split into VAE encode, sampling, VAE decode, our nodes, loaders and other.

After the timed runs, one more warm run of the same graph executes under bench.work.WorkCounter: the work it
executes, by phase (the UNet and the ControlNet inside the sampler apart). Weights moved between the compute device
and the offload device are the changes of each model's loaded bytes across every node execution of the timed runs
(a model loaded and dropped inside one node is not seen; none on the CPU, where the two devices are one).
``--chunk-sweep`` runs the graph again with other views per chunk (custom preset) on the loaded models.
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
from dataclasses import replace
from pathlib import Path

# glimpse before ComfyUI starts: start_in_process takes the repo root off sys.path, and on a machine where the
# package is not installed (the GPU image) it is importable only from there
import glimpse.lightning  # noqa: F401  (executed_steps)
from glimpse.presets import PRESETS, preset_settings
from glimpse.runner.workflow import apply_overrides

from .common import (
    PARTS,
    REPO,
    SPLIT_PARTS,
    WORK_PHASES,
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
from .work import Work, WorkCounter

BACKGROUNDS = ("#808080", "#7f7f7f")


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


class WeightMoves:
    """Bytes of model weights moved between a compute device and its (different) offload device: the change of each
    loaded model's bytes on its device across a node execution, summed in both directions."""

    def __init__(self, mm):
        self.mm = mm
        self.bytes = 0

    def loaded(self) -> dict[int, int]:
        return {id(lm.model): lm.model.loaded_size() for lm in list(self.mm.current_loaded_models)
                if lm.model is not None and lm.device != lm.model.offload_device}

    def add(self, before: dict[int, int], after: dict[int, int]) -> None:
        self.bytes += sum(abs(after.get(k, 0) - before.get(k, 0)) for k in set(before) | set(after))


def work_summary(counter: WorkCounter, views: int, unet_calls: int, controlnet_calls: int) -> dict:
    """The counted run's work per view, by phase; the UNet's and ControlNet's per call; our nodes' share."""
    by_phase = {p: counter.by_phase.get(p, Work()) for p in WORK_PHASES}
    by_phase["other"] = Work()
    for name, w in counter.by_phase.items():
        if name not in WORK_PHASES or name == "other":
            by_phase["other"] += w
    per_view = {p: w.scaled(1 / views) for p, w in by_phase.items()}
    total = counter.total()
    return {
        "tflop_per_view": total.flop / views / 1e12,
        "tflop_by_phase": {p: w.flop / 1e12 for p, w in per_view.items()},
        "work_by_phase_per_view": {p: w.as_dict() for p, w in per_view.items()},
        "unet_tflop_per_call": by_phase["unet"].flop / unet_calls / 1e12 if unet_calls else None,
        "controlnet_tflop_per_call": (by_phase["controlnet"].flop / controlnet_calls / 1e12 if controlnet_calls
                                      else None),
        # our nodes' FLOPs plus element writes, against everything's: the share of executed work that is ours
        "ours_work_share": (by_phase["ours"].flop + by_phase["ours"].elems) / max(1, total.flop + total.elems),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ours")
    ap.add_argument("--device", choices=("cpu", "cuda"), required=True)
    ap.add_argument("--models-dir", type=Path, required=True)
    ap.add_argument("--set", type=Path, required=True, help="view-set folder at the working resolution")
    ap.add_argument("--views", type=int, required=True)
    ap.add_argument("--resolution", type=int, required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--repeat", type=int, default=3, help="warm runs after the first")
    ap.add_argument("--chunk-sweep", default="", help="comma-separated views per chunk to run as well, e.g. 1,2,4")
    ap.add_argument("--vram-cap-gib", type=float, help="cuda: cap this process's GPU memory (a T4's 15 GiB)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    # the workflow and glimpse pieces first: start_in_process takes the repo root off sys.path
    workflow, source = load_workflow(args.config)
    settings = settings_of(workflow, args.config)
    sys.path.insert(0, str(REPO))
    from tests.comfy.comfy_process import SilentServer, make_base_dir, start_in_process

    tmp = Path(tempfile.mkdtemp(prefix="glimpse-bench-ours-"))
    base = make_base_dir(tmp / "comfy")
    flags = ["--base-directory", str(base)] + (["--cpu"] if args.device == "cpu" else [])
    if args.vram_cap_gib and args.device == "cuda":
        import torch

        total = torch.cuda.get_device_properties(0).total_memory / 2 ** 30
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.vram_cap_gib / total))
        flags += ["--reserve-vram", f"{max(0.0, total - args.vram_cap_gib):.2f}"]  # ComfyUI plans with the cap too
    t0 = time.perf_counter()
    comfy = start_in_process(base, args.models_dir.resolve(), flags)
    startup_s = time.perf_counter() - t0
    execution, nodes, torch = comfy.execution, comfy.nodes, comfy.torch
    import comfy.model_management as mm

    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    class_of = {}
    for node_id, cls in nodes.NODE_CLASS_MAPPINGS.items():
        class_of.setdefault(cls, node_id)
    clock = Clock(args.device)
    original = execution.get_output_data
    counter = WorkCounter()  # phases are tracked always; work is counted only while it is the active mode
    moves = WeightMoves(mm)

    def part(name: str) -> str:
        return PARTS.get(name) or ("ours" if name in comfy.pack else "other")

    items: dict[str, int] = {}  # calls of the node's function: one per list item (chunk), once for list inputs

    async def timed_get_output_data(prompt_id, unique_id, obj, input_data_all, *a, **kw):
        cls = obj if isinstance(obj, type) else type(obj)
        name = class_of.get(cls, getattr(cls, "__name__", str(cls)))
        n = 1 if getattr(cls, "INPUT_IS_LIST", False) else max((len(v) for v in input_data_all.values()), default=1)
        items[name] = items.get(name, 0) + n
        if args.device == "cuda":
            torch.cuda.synchronize()
        before = moves.loaded()
        t = time.perf_counter()
        try:
            with counter.phase(part(name)):
                return await original(prompt_id, unique_id, obj, input_data_all, *a, **kw)
        finally:
            if args.device == "cuda":
                torch.cuda.synchronize()
            clock.add(name, time.perf_counter() - t)
            moves.add(before, moves.loaded())

    execution.get_output_data = timed_get_output_data
    # inside the sampler: the UNet (BaseModel.apply_model) and the ControlNet (get_control), timed and counted the
    # same way, and the UNet calls counted (executed steps x chunks)
    from comfy import controlnet as comfy_controlnet
    from comfy import model_base as comfy_model_base

    inner = Clock(args.device)
    comfy_model_base.BaseModel.apply_model = counter.wrap("unet", inner.wrap("unet",
                                                                              comfy_model_base.BaseModel.apply_model))
    for cls in (comfy_controlnet.ControlNet, comfy_controlnet.T2IAdapter):
        cls.get_control = counter.wrap("controlnet", inner.wrap("controlnet", cls.get_control))
    executor = execution.PromptExecutor(SilentServer(), cache_type=execution.CacheType.CLASSIC)

    wf, changes = adapt(workflow, settings, args.set.resolve(), args.views, args.resolution, f"bench_{args.config}")
    seeds = _seed_nodes(wf)
    loadviewset = nodes_of(wf, "LoadViewSet")[0]

    def run(i: int, graph: dict, what: str) -> dict:
        prompt = copy.deepcopy(graph)
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
            raise RuntimeError(f"{args.config}: {what} failed: {errors[-1][1] if errors else 'unknown error'}")
        logging.info("bench ours %s %s: %.2f s for %d views", args.config, what, wall, args.views)
        return {"wall_s": wall, "nodes": dict(clock.seconds), "calls": dict(items), "inner": dict(inner.seconds),
                "inner_calls": dict(inner.calls)}

    runs = []
    for i in range(1 + args.repeat):
        if i == 1:
            moves.bytes = 0  # the cold run's loads are load time, not per view
        runs.append(run(i, wf, f"run {i}"))
    moved = moves.bytes / max(1, args.repeat)
    # The counted run has cross-view attention off, so that each model phase's count is the model's alone and
    # compares exactly with the cost model's (model_check); what cross-view attention adds is counted by the cost
    # model from the same functions the patch runs (bench/crossview_cost.py), and timed in the runs above.
    plain = apply_overrides(wf, {"cross_view": "off"})[0] if nodes_of(wf, "GlimpseCrossViewAttention") else wf
    with counter:
        counted = run(1 + args.repeat, plain, "counted run")
    work = work_summary(counter, args.views, counted["inner_calls"].get("unet", 0),
                        counted["inner_calls"].get("controlnet", 0))
    by_chunk = {}
    for chunk in sorted({int(c) for c in args.chunk_sweep.split(",") if c.strip()}):
        graph, _ = adapt(workflow, replace(settings, views_per_chunk=chunk), args.set.resolve(), args.views,
                         args.resolution, f"bench_{args.config}_chunk{chunk}")
        for nid in nodes_of(graph, "MemoryPreset"):
            graph[nid]["inputs"].update(preset="custom", views_per_chunk=chunk)
        for nid in nodes_of(graph, "LoadViewSet"):
            graph[nid]["inputs"]["views_per_chunk"] = chunk
        sweep = [run(2 + args.repeat + j, graph, f"{chunk} views per chunk, run {j}") for j in range(2)]
        by_chunk[str(chunk)] = {"s_per_view": sweep[-1]["wall_s"] / args.views,
                                "sampler_calls": sweep[-1]["calls"].get("SamplerCustomAdvanced", 0)}

    def split(node_times: dict) -> dict:
        parts = dict.fromkeys(SPLIT_PARTS, 0.0)
        for name, s in node_times.items():
            parts[part(name)] += s
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
        "sampling_detail_s": {"unet": pick["inner"].get("unet", 0.0),
                              "controlnet": pick["inner"].get("controlnet", 0.0)},
        "unet_calls": pick["inner_calls"].get("unet", 0),
        "sampler_calls": pick["calls"].get("SamplerCustomAdvanced", 0) + pick["calls"].get("KSamplerAdvanced", 0),
        "nodes_s": node_split,
        "node_calls": pick["calls"],
        "first_run_nodes_s": runs[0]["nodes"],
        "work_counted": "one more warm run under bench.work.WorkCounter (same graph, a new seed and background)",
        **work,
        "weights_moved_gib_per_view": moved / args.views / 2 ** 30,
        "by_chunk": by_chunk,
        "peak_rss_gib": peak_rss_bytes() / 2 ** 30,
        "gpu": gpu_name(args.device),
    }
    if args.device == "cuda":
        out["peak_gpu_allocated_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        out["peak_gpu_reserved_gib"] = torch.cuda.max_memory_reserved() / 2 ** 30
        out["vram_cap_gib"] = args.vram_cap_gib
    write_json(args.out, out)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
