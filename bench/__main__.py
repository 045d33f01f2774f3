"""`python -m bench --device cpu|cuda [--resolution R] [--views N] [--configs t4,speed,quality] --out FILE.json`

Ours (each bundled workflow run by a real in-process ComfyUI, bench/ours.py) against the seed's way (diffusers'
SDXL ControlNet img2img pipeline, one view per call, bench/baseline.py) on the same views, models and settings, each
configuration in its own child processes; then our own per-set work (bench/per_set.py). Writes FILE.json and a short
Markdown table FILE.md beside it. bench/README.md says what every number means and what the targets are.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import per_set
from .common import CONFIGS, REPO, build_view_set, gpu_name, versions, write_json

CUDA_FIXTURES = ["sdxl-full-checkpoint", "sdxl-full-lightning-lora", "sdxl-full-lightning-unet",
                 "controlnet-depth-sdxl-full", "controlnet-depth-sdxl-small", "sdxl-vae-fp16-fix"]
VEGA_FIXTURES = [n.replace("-full-", "-vega-") if n.startswith("sdxl-") else n for n in CUDA_FIXTURES]
# issue 8's targets (reported, never asserted)
RATIO_TARGET = 0.36
WALL_16_TARGET_S = 4.0
T4_PEAK_TARGET_GIB = 10.0
# issue 12's targets (reported, never asserted)
FLOP_RATIO_TARGET = 1.05
OURS_WORK_SHARE_TARGET = 0.01
T4_S_PER_VIEW_TARGET = 3.0
MODEL_PHASES = ("vae_encode", "unet", "controlnet", "vae_decode")


def _models(args) -> tuple[Path, str]:
    size = "full" if args.device == "cuda" else "vega"
    if args.models_dir:
        return args.models_dir.resolve(), "given"
    d = Path(os.environ.get("GLIMPSE_BENCH_MODELS") or Path.home() / ".cache" / "glimpse-enhance" /
             f"bench-models-{size}")
    cmd = [sys.executable, "-m", "tests.fixtures", "--models-dir", str(d), "--size", size, "--only",
           *(CUDA_FIXTURES if size == "full" else VEGA_FIXTURES)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise SystemExit(f"building the {size} fixtures failed ({' '.join(cmd)}):\n{tail}")
    logging.info("fixtures (%s) ready in %s in %.0f s", size, d, time.perf_counter() - t)
    return d, f"{size} fixtures built/linked in {time.perf_counter() - t:.0f} s"


def _child(module: str, argv: list[str], out: Path, log: Path) -> dict:
    cmd = [sys.executable, "-m", module, *argv, "--out", str(out)]
    t = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc or not out.is_file():
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        logging.error("%s failed (exit %s):\n%s", module, rc, tail)
        return {"error": f"{module} exited {rc}", "log_tail": tail[-1500:]}
    result = json.loads(out.read_text(encoding="utf-8"))
    result["process_s"] = time.perf_counter() - t
    return result


def _targets(device: str, resolution: int, config: str, entry: dict) -> dict:
    full = device == "cuda" and resolution == 1024
    ours, ratio = entry.get("ours", {}), entry.get("ratio")
    t = {"ratio_at_most": RATIO_TARGET, "ratio_met": (ratio <= RATIO_TARGET) if full and ratio else None,
         "wall_16_under_s": WALL_16_TARGET_S,
         "wall_16_met": (ours["wall_16_s"] < WALL_16_TARGET_S) if full and ours.get("wall_16_s") else None,
         "flop_ratio_at_most": FLOP_RATIO_TARGET,
         "flop_ratio_met": _at_most(entry.get("flop_ratio"), FLOP_RATIO_TARGET),
         "flop_ratio_1024_met": _at_most((entry.get("model_1024") or {}).get("flop_ratio"), FLOP_RATIO_TARGET),
         "ours_work_share_under": OURS_WORK_SHARE_TARGET,
         "ours_work_share_met": _at_most(ours.get("ours_work_share"), OURS_WORK_SHARE_TARGET),
         "ours_work_share_1024_met": _at_most((entry.get("model_1024") or {}).get("ours_work_share"),
                                              OURS_WORK_SHARE_TARGET)}
    if config == "t4":
        peak = ours.get("peak_gpu_allocated_gib")
        t["peak_gpu_at_most_gib"] = T4_PEAK_TARGET_GIB
        t["peak_gpu_met"] = (peak <= T4_PEAK_TARGET_GIB) if full and peak is not None else None
        model = entry.get("t4_model") or {}
        t["t4_model_s_per_view_at_most"] = T4_S_PER_VIEW_TARGET
        t["t4_model_s_per_view_met"] = _at_most(model.get("s_per_view"), T4_S_PER_VIEW_TARGET)
        t["t4_model_peak_gib_met"] = _at_most(model.get("peak_gib"), T4_PEAK_TARGET_GIB)
        t["cpu_ratio_at_most"] = 1.0
        t["cpu_ratio_met"] = _at_most(ratio, 1.0) if device == "cpu" else None
    return t


def _at_most(value, limit):
    return None if value is None else value <= limit


def _card_key(gpu: str) -> str | None:
    return next((k for k in ("h200", "h100", "t4") if k in gpu.lower()), None)


def _model(entry: dict, config: str, resolution: int, size: str, cost_1024: dict | None,
           per_set_result: dict | None) -> None:
    """The cost model's side of one configuration: its work count at the benchmark's size beside the counted one
    (``model_check``: counted / modelled per model phase), and its figures at 1024 px for the cards; with our
    per-set work counted at 1024 px, our nodes' share of a 1024 px view's work."""
    from . import cost

    o, bl = entry.get("ours", {}), entry.get("baseline", {})
    if o.get("tflop_per_view") and bl.get("tflop_per_view"):
        entry["flop_ratio"] = o["tflop_per_view"] / bl["tflop_per_view"]
    check = {}
    for side, counted in (("ours", o), ("baseline", bl)):
        if "tflop_by_phase" not in counted:
            continue
        modelled = cost.tflop_by_phase(config, resolution, size, side)
        check[side] = {p: counted["tflop_by_phase"].get(p, 0.0) / modelled[p] for p in MODEL_PHASES
                       if modelled.get(p)}
    entry["model_check"] = check
    if cost_1024:
        c = cost_1024["configs"][config]
        entry["model_1024"] = {"ours": c["ours"], "baseline": c["baseline"], "flop_ratio": c["flop_ratio"]}
        if per_set_result and per_set_result["size"] == 1024:  # our nodes' work per view, counted at 1024 px
            work = per_set_result["work"].values()
            views = per_set_result["views"]
            nodes = sum(w["flop"] + w["elems"] for w in work) / views
            models = sum(w["flop"] + w["elems"] for w in c["ours"]["work_by_phase"].values())
            ours = dict(c["ours"], tflop_by_phase=dict(c["ours"]["tflop_by_phase"],
                                                       ours=sum(w["flop"] for w in work) / views / 1e12))
            ours["tflop_per_view"] = sum(ours["tflop_by_phase"].values())
            entry["model_1024"].update(ours=ours, ours_work_share=nodes / (nodes + models))
        for card in cost.CARDS:
            entry[f"{card}_model"] = c[f"{card}_model"]
        key = _card_key(entry.get("gpu", ""))
        if key and resolution == 1024 and o.get("s_per_view"):  # a run on a modelled card calibrates the model
            entry["measured_over_model"] = {"card": key, "ours": o["s_per_view"] / c[f"{key}_model"]["s_per_view"],
                                            "baseline": (bl["s_per_view"] / c[f"{key}_model"]["baseline_s_per_view"]
                                                         if bl.get("s_per_view") else None)}


def _fmt(x, spec=".3f", none="-"):
    return none if x is None else format(x, spec)


def markdown(result: dict) -> str:
    b = result["bench"]
    lines = [f"# Glimpse Enhance benchmark: {b['gpu']}, {b['resolution']}x{b['resolution']}, {b['views']} views",
             "",
             f"{b['date']} on {b['host']}; torch {b['versions']['torch']}, ComfyUI {b['versions']['comfyui']}, "
             f"diffusers {b['versions']['diffusers']}; models: {b['models']}.",
             "",
             "| config | steps run | ours s/view | baseline s/view | ratio | ours wall (views) | baseline wall | "
             "ours load s | peak GPU alloc / reserved GiB | peak RSS GiB ours / baseline |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in result["configs"].items():
        o, bl = c.get("ours", {}), c.get("baseline", {})
        peak = (f"{_fmt(o.get('peak_gpu_allocated_gib'), '.2f')} / {_fmt(o.get('peak_gpu_reserved_gib'), '.2f')}"
                if b["device"] == "cuda" else "-")
        lines.append(
            f"| {name} | {o.get('executed_steps', '-')} | {_fmt(o.get('s_per_view'))} | {_fmt(bl.get('s_per_view'))} | "
            f"{_fmt(c.get('ratio'), '.2f')} | {_fmt(o.get('wall_s'), '.2f')} ({b['views']}) | "
            f"{_fmt(bl.get('wall_s'), '.2f')} | {_fmt(o.get('load_s'), '.1f')} | {peak} | "
            f"{_fmt(o.get('peak_rss_gib'), '.1f')} / {_fmt(bl.get('peak_rss_gib'), '.1f')} |")
    lines += ["", "Time split per view, seconds (ours: node times; baseline: module calls):", "",
              "| config | side | VAE encode | sampling (UNet + ControlNet) | VAE decode | our nodes | prompt (CLIP) | "
              "other |",
              "|---|---|---|---|---|---|---|---|"]
    for name, c in result["configs"].items():
        o = c.get("ours", {}).get("split_per_view_s")
        d = c.get("ours", {}).get("sampling_detail_s")
        if o:
            views = c["ours"]["views"]
            detail = f" (UNet {d['unet'] / views:.3f}, CN {d['controlnet'] / views:.3f})" if d else ""
            lines.append(f"| {name} | ours | {o['vae_encode']:.3f} | {o['sampling']:.3f}{detail} | "
                         f"{o['vae_decode']:.3f} | "
                         f"{o['ours']:.3f} | {o['text_encode']:.3f} | {o['other'] + o['loaders']:.3f} |")
        s = c.get("baseline", {}).get("split_per_view_s")
        if s:
            lines.append(f"| {name} | baseline | {s['vae_encode']:.3f} | {s['unet'] + s['controlnet']:.3f} "
                         f"(UNet {s['unet']:.3f}, CN {s['controlnet']:.3f}) | {s['vae_decode']:.3f} | - | "
                         f"- | {s['other']:.3f} |")
    lines += _work_tables(result)
    p = result.get("per_set")
    if p and "parts" in p:
        parts = ", ".join(f"{k} {v['wall_s']:.3f}" for k, v in p["parts"].items())
        lines += ["", f"Our own per-set work, {p['views']} views at {p['size']} px ({p['threads']} threads): "
                      f"{p['total_s']:.3f} s (scan+load+hint+blend+score; target under 1 s at 16x1024). "
                      f"Parts, best wall s: {parts}."]
    errors = {n: {k: v.get("error") for k, v in c.items() if isinstance(v, dict) and v.get("error")}
              for n, c in result["configs"].items()}
    errors = {n: e for n, e in errors.items() if e}
    if errors:
        lines += ["", f"Errors: {json.dumps(errors)}"]
    return "\n".join(lines) + "\n"


def _phases(by_phase: dict) -> str:
    return " | ".join(f"{by_phase.get(k, 0.0):.4g}" for k in (*MODEL_PHASES, "ours", "other"))


def _work_tables(result: dict) -> list[str]:
    b, configs = result["bench"], result["configs"]
    lines = ["", f"Executed work per view, TFLOP, counted on these runs ({b['resolution']} px, "
                 f"{'full-size' if b['device'] == 'cuda' else 'Vega-size'} UNet):", "",
             "| config | side | VAE encode | UNet | ControlNet | VAE decode | our nodes | other | total "
             "| ours/baseline |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in configs.items():
        for side in ("ours", "baseline"):
            w = c.get(side, {})
            if "tflop_by_phase" in w:
                ratio = f"{c['flop_ratio']:.3f}" if side == "ours" and c.get("flop_ratio") else ""
                lines.append(f"| {name} | {side} | {_phases(w['tflop_by_phase'])} | {w['tflop_per_view']:.4g} | "
                             f"{ratio} |")
    shares = []
    for n, c in configs.items():
        here = c.get("ours", {}).get("ours_work_share")
        at = (c.get("model_1024") or {}).get("ours_work_share")
        if here is not None:
            shares.append(f"{n} {100 * here:.2g} % here" + (f", {100 * at:.2g} % at 1024 px" if at is not None else ""))
    if shares:
        lines += ["", "Our nodes' share of the executed work (FLOPs plus element writes): " + "; ".join(shares) + "."]
    rows = [(n, c["model_1024"]) for n, c in configs.items() if c.get("model_1024")]
    if rows:
        lines += ["", "The same at 1024 px with the full-size SDXL UNet (work count, bench/cost.py):", "",
                  "| config | side | VAE encode | UNet | ControlNet | VAE decode | our nodes | other | total | "
                  "ours/baseline |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, m in rows:
            for side in ("ours", "baseline"):
                ratio = f"{m['flop_ratio']:.3f}" if side == "ours" else ""
                lines.append(f"| {name} | {side} | {_phases(m[side]['tflop_by_phase'])} | "
                             f"{m[side]['tflop_per_view']:.3f} | {ratio} |")
        lines += ["", "Cost model at 1024 px (bench/cost.py: published peaks, stated efficiency, the memory plan):",
                  "", "| config | card | VAE | s/view (dominant phase) | baseline s/view | peak GiB (plan) | "
                      "weights moved GiB/view | s/view at 1 / 2 / 4 views per chunk (peak GiB) |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, c in configs.items():
            for card in ("t4", "h100", "h200"):
                m = c.get(f"{card}_model")
                if not m:
                    continue
                sweep = " / ".join(f"{v['s_per_view']:.2f} ({v['peak_gib']:.1f})" for v in m["by_chunk"].values())
                lines.append(f"| {name} | {card} | {m['vae_dtype']} | {m['s_per_view']:.2f} ({m['dominant_phase']}) | "
                             f"{m['baseline_s_per_view']:.2f} | {m['peak_gib']:.2f} | "
                             f"{m['weights_moved_gib_per_view']:.2f} | {sweep} |")
    sweeps = [(n, c["ours"]["by_chunk"]) for n, c in configs.items() if c.get("ours", {}).get("by_chunk")]
    if sweeps:
        lines += ["", "Measured here, ours s/view by views per chunk: " + "; ".join(
            f"{n}: " + ", ".join(f"{k} -> {v['s_per_view']:.3f}" for k, v in sw.items()) for n, sw in sweeps) + "."]
    return lines


def _terminated(signum, frame):
    raise SystemExit(128 + signum)  # subprocess.run kills its child on the way out; results so far are on disk


def _write(path: Path, result: dict) -> str:
    """Write the JSON and the Markdown table beside it; return the table."""
    write_json(path, result)
    md = markdown(result)
    path.with_suffix(".md").write_text(md, encoding="utf-8")
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    ap.add_argument("--device", choices=("cpu", "cuda"), required=True)
    ap.add_argument("--resolution", type=int, help="working resolution (default 1024 on cuda, 128 on cpu)")
    ap.add_argument("--views", type=int, help="views in the set, at most 16 (default 16 on cuda, 4 on cpu)")
    ap.add_argument("--configs", default="t4,speed,quality", help="comma-separated: " + ", ".join(CONFIGS))
    ap.add_argument("--out", type=Path, required=True, help="result JSON (the Markdown table goes beside it)")
    ap.add_argument("--models-dir", type=Path, help="a ready fixture models folder (default: build/link the "
                                                    "fixtures: full size on cuda, Vega size on cpu)")
    ap.add_argument("--repeat", type=int, help="our warm runs per config (default 3 on cuda, 1 on cpu)")
    ap.add_argument("--parts", default="ours,baseline,per_set,cost",
                    help="what to run: ours, baseline, per_set, cost (the work count and cost model at 1024 px)")
    ap.add_argument("--chunk-sweep", default="", help="ours again with these views per chunk, e.g. 1,2,4")
    ap.add_argument("--t4-vram-cap-gib", type=float,
                    help="cuda: the t4 workflow once more with its process capped at this much GPU memory (15)")
    ap.add_argument("--per-set-size", type=int, default=1024, help="per-set work resolution (default 1024)")
    ap.add_argument("--per-set-views", type=int, default=16)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="bench: %(message)s")
    signal.signal(signal.SIGTERM, _terminated)  # `timeout` in gpu.sh: stop the running child too
    cuda = args.device == "cuda"
    resolution = args.resolution or (1024 if cuda else 128)
    views = args.views or (16 if cuda else 4)
    repeat = args.repeat if args.repeat is not None else (3 if cuda else 1)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    parts = {p.strip() for p in args.parts.split(",")}
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or not 1 <= views <= 16 or resolution % 64 or resolution < 64:
        ap.error(f"configs must be among {list(CONFIGS)} (got {unknown}), views 1..16, resolution a multiple of 64")
    if cuda:
        import torch

        if not torch.cuda.is_available():
            ap.error("--device cuda but torch sees no CUDA device")
    os.environ.setdefault("COMFYUI_PATH", str(Path.home() / "ComfyUI"))

    models_dir, models_note = _models(args) if parts & {"ours", "baseline"} else (None, "none")
    result = {"bench": {
        "device": args.device, "gpu": gpu_name(args.device), "resolution": resolution, "views": views,
        "configs": configs, "repeat": repeat, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"), "host": platform.node(), "cpu_count": os.cpu_count(), "versions": versions(),
        "models": f"{'full-size' if cuda else 'Vega-size'} random-initialised fixtures ({models_note})",
        "dtype": "fp16 (ComfyUI's default dtypes on CUDA)" if cuda else "fp32",
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])},
        "configs": {}}
    if "per_set" in parts:  # first: CPU only, seconds, and a timeout later keeps it
        logging.info("our own per-set work: %d views at %d px", args.per_set_views, args.per_set_size)
        result["per_set"] = per_set.run(args.per_set_size, args.per_set_views)
        _write(args.out, result)
    cost_1024 = None
    if "cost" in parts:
        from . import cost

        p = result.get("per_set")
        host = p["total_s"] / p["views"] if p and p["size"] == 1024 else 0.0  # our nodes, measured at 1024 px only
        logging.info("work count and cost model at 1024 px")
        cost_1024 = cost.run(1024, configs, host)
        result["cost_model"] = {k: v for k, v in cost_1024.items() if k != "configs"}
        result["cost_model"]["host_s_per_view"] = host
        result["cost_model"]["note"] = cost.__doc__.split("\n\n", 2)[2]
    with tempfile.TemporaryDirectory(prefix="glimpse-bench-") as tmp:
        tmp = Path(tmp)
        if parts & {"ours", "baseline"}:
            set_dir = build_view_set(tmp / f"fox_{resolution}", resolution, views)
            common = ["--device", args.device, "--models-dir", str(models_dir), "--set", str(set_dir), "--views",
                      str(views), "--resolution", str(resolution)]
        for config in configs:
            entry = {}
            if "ours" in parts:
                logging.info("%s: ours", config)
                entry["ours"] = _child("bench.ours", [*common, "--config", config, "--repeat", str(repeat),
                                                      "--chunk-sweep", args.chunk_sweep],
                                       tmp / f"ours_{config}.json", tmp / f"ours_{config}.log")
                if config == "t4" and cuda and args.t4_vram_cap_gib:
                    logging.info("t4: ours under a %.1f GiB cap", args.t4_vram_cap_gib)
                    entry["ours_capped"] = _child(
                        "bench.ours", [*common, "--config", config, "--repeat", str(repeat), "--vram-cap-gib",
                                       str(args.t4_vram_cap_gib)], tmp / "ours_t4_cap.json", tmp / "ours_t4_cap.log")
            if "baseline" in parts:
                logging.info("%s: baseline", config)
                entry["baseline"] = _child("bench.baseline", [*common, "--config", config],
                                           tmp / f"baseline_{config}.json", tmp / f"baseline_{config}.log")
            o, bl = entry.get("ours", {}), entry.get("baseline", {})
            entry["ratio"] = (o["s_per_view"] / bl["s_per_view"]
                              if o.get("s_per_view") and bl.get("s_per_view") else None)
            entry["peak_gpu_gib"] = o.get("peak_gpu_allocated_gib")
            entry["peak_gpu_reserved_gib"] = o.get("peak_gpu_reserved_gib")
            entry["gpu"] = result["bench"]["gpu"]
            entry["wall_16_s"] = o.get("wall_16_s")
            entry["load_s"] = o.get("load_s")
            _model(entry, config, resolution, "full" if cuda else "vega", cost_1024, result.get("per_set"))
            if "s_per_view" in o:
                entry["targets"] = _targets(args.device, resolution, config, entry)
            result["configs"][config] = entry
            _write(args.out, result)  # partial results survive a later failure or a timeout
    sys.stdout.write(_write(args.out, result))
    failed = [n for n, c in result["configs"].items() if any(isinstance(v, dict) and "error" in v for v in c.values())]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
