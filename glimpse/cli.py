"""The ``glimpse-enhance`` console command: one argparse parser with a subcommand per task.

``run`` and ``loop`` drive ComfyUI over HTTP (``glimpse.runner``); ``fleet`` drives many servers through Ray.
Subcommand modules are imported only when their subcommand runs, so ``glimpse-enhance --help`` stays fast.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("viewset", metavar="VIEWSET_DIR", type=Path,
                   help="a view set folder (view_XX.png, cameras.json, optional depth and masks), or a folder of sets")
    p.add_argument("--server", dest="servers", action="extend", nargs="+", default=[], metavar="URL",
                   help="ComfyUI server(s) to use (repeatable); views are spread over them. Default: start an embedded "
                        "ComfyUI from $COMFYUI_PATH (or ~/ComfyUI) for this run")
    _add_workflow_options(p)


def _add_workflow_options(p: argparse.ArgumentParser) -> None:
    """The workflow, its overrides and the execution options: the same for run, loop and fleet."""
    p.add_argument("--workflow", default=None, metavar="NAME|FILE",
                   help="bundled API workflow name (t4, speed, quality -> workflows/api/glimpse_enhance_<NAME>.json) "
                        "or an API-format .json file. Default: t4")
    g = p.add_argument_group("workflow overrides (applied by node class and input name)")
    g.add_argument("--preset", help="MemoryPreset preset (t4_balanced, t4_minimal, speed, quality, custom)")
    g.add_argument("--steps", type=int, help="LightningLoader steps")
    g.add_argument("--strength", type=float, help="LightningLoader img2img strength")
    g.add_argument("--seed", type=int, help="sampler noise seed, shared by every view")
    g.add_argument("--cross-view", choices=("off", "extended", "correspondence"),
                   help="Cross-View Attention mode (and the MemoryPreset's, which then becomes custom)")
    g.add_argument("--subject", help="GlimpsePrompt subject text")
    g.add_argument("--template", help="GlimpsePrompt template")
    g.add_argument("--resolution", type=int, help="working resolution (LoadViewSet or MemoryPreset)")
    g.add_argument("--save-hints", action="store_true", default=None, help="also write the depth hints as hint_XX.png")
    e = p.add_argument_group("execution")
    e.add_argument("--chunk", type=int, metavar="N",
                   help="views per queued prompt (default: the preset's views_per_chunk, else 4); finished chunks "
                        "are on disk before the next starts")
    e.add_argument("--models-dir", type=Path, metavar="DIR",
                   help="embedded server only: a folder in ComfyUI's model layout (checkpoints/, loras/, "
                        "diffusion_models/, controlnet/, depth_estimators/) added to its model paths")
    e.add_argument("--cpu", action="store_true", default=None,
                   help="embedded server only: run on the CPU (the default when torch sees no GPU)")
    e.add_argument("--comfy-arg", dest="comfy_args", action="append", default=[], metavar="ARG",
                   help="embedded server only: extra argument for ComfyUI's main.py (repeatable), e.g. "
                        "--comfy-arg=--bf16-unet")
    e.add_argument("--plain", action="store_true", help="plain line-per-update progress even on a terminal")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glimpse-enhance", description="Glimpse Enhance command line tools.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run_p = sub.add_parser("run", help="enhance a view set through ComfyUI (resumable)",
                           description="Enhance every view of a view set with an API workflow on one or more ComfyUI "
                                       "servers. A rerun skips finished views; Ctrl-C keeps them.")
    _add_run_options(run_p)
    run_p.add_argument("--out", required=True, type=Path, metavar="OUT_DIR",
                       help="where view_XX.png, confidence_XX.png, hint_XX.png and manifest.json go")

    loop_p = sub.add_parser("loop", help="rounds of enhance -> refit -> render with your own commands",
                            description="Round r: enhance the round's views, run --refit-cmd, run --render-cmd (which "
                                        "writes the next round's views). Placeholders: {round} {views_dir} "
                                        "{enhanced_dir} {render_dir} {round_dir} {work_dir}.")
    _add_run_options(loop_p)
    loop_p.add_argument("--rounds", type=int, default=3, help="number of rounds (default 3)")
    loop_p.add_argument("--refit-cmd", required=True, help="shell command that refits the 3D model on {enhanced_dir}")
    loop_p.add_argument("--render-cmd", required=True,
                        help="shell command that renders the refitted model's views into {render_dir}")
    loop_p.add_argument("--work", type=Path, metavar="WORK_DIR",
                        help="where round_<r>/ folders go (default: <VIEWSET_DIR>_loop beside the set)")

    fleet_p = sub.add_parser("fleet", help="many view sets over many ComfyUI servers on Ray (resumable)",
                             description="Enhance every view set of SETS_DIR with one Ray actor per ComfyUI server; "
                                         "a set runs end to end on one server as `run` runs it. Needs the fleet extra: "
                                         "pip install 'glimpse-enhance[fleet]'. Ctrl-C keeps finished views; the same "
                                         "command resumes.")
    fleet_p.add_argument("viewset", metavar="SETS_DIR", type=Path, help="a folder of view set folders")
    fleet_p.add_argument("--out", required=True, type=Path, metavar="OUT_DIR",
                         help="OUT_DIR/<set>/ as run writes it, and OUT_DIR/fleet.json")
    r = fleet_p.add_argument_group("Ray")
    r.add_argument("--address", metavar="auto|local|ray://HOST:PORT",
                   help="the Ray cluster (default: $RAY_ADDRESS, else a new local Ray on this machine)")
    r.add_argument("--gpus-per-server", type=float, metavar="G",
                   help="GPUs each server's actor holds (default: 1 when the cluster has GPUs, else 0)")
    r.add_argument("--servers-per-node", type=int, metavar="N",
                   help="servers started on each node (default: the node's GPUs / --gpus-per-server, else 1)")
    r.add_argument("--attach", metavar="URL",
                   help="use the ComfyUI already running at URL on each node instead of starting one")
    r.add_argument("--shared-fs", action="store_true",
                   help="SETS_DIR, OUT_DIR and the workflow are at the same paths on every node: actors read and "
                        "write them directly (default: files travel through Ray and the driver writes OUT_DIR)")
    r.add_argument("--retries", type=int, default=2, metavar="N",
                   help="times a set lost with its server (actor, ComfyUI or node died) is retried (default 2)")
    _add_workflow_options(fleet_p)

    from .score import add_parser as add_score_parser  # light: no torch work at import

    add_score_parser(sub)
    return parser


def run_options(args: argparse.Namespace):
    from .runner.prepare import USER_OPTIONS, RunOptions

    return RunOptions(viewset=args.viewset, out=getattr(args, "out", None), servers=getattr(args, "servers", []),
                      workflow=args.workflow, overrides={k: getattr(args, k) for k in USER_OPTIONS},
                      chunk=args.chunk, models_dir=args.models_dir, cpu=args.cpu, comfy_args=args.comfy_args,
                      tty=False if args.plain else None)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        from .runner.run import run

        return run(run_options(args))
    if args.command == "loop":
        from .runner.loop import loop

        return loop(run_options(args), args.rounds, args.refit_cmd, args.render_cmd, args.work)
    if args.command == "fleet":
        from .runner.fleet import FleetOptions, fleet

        return fleet(FleetOptions(run_options(args), args.address, args.gpus_per_server, args.servers_per_node,
                                  args.attach, args.shared_fs, args.retries))
    if args.command == "score":
        from .score import main as score_main

        return score_main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
