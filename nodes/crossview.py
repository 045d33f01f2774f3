"""CrossViewAttention: the views of a set share what they invent, through self-attention with anchor views."""
from __future__ import annotations

import logging

import torch

import comfy.model_management as mm
import nodes as comfy_nodes
from comfy_api.latest import io

from ..glimpse.crossview.graph_key import differences, graph_key, sampling_subgraph
from ..glimpse.crossview.record import AnchorRecord, RecordStore
from ..glimpse.presets import CROSS_VIEW_MODES, GIB, estimate_memory
from ..glimpse.types import Cameras as CamerasValue
from ..glimpse.types import DepthMaps
from ..glimpse.types import Settings as SettingsValue
from .crossview_patch import ChunkPlan, patched_model
from .types import Cameras, CrossView, Depth, Settings

log = logging.getLogger(__name__)

STORE = RecordStore()  # the anchors' records of this ComfyUI process, kept between prompts
RECORD_DEVICES = ("auto", "gpu", "cpu")
GPU_RECORD_MIN_TOTAL = 20 * GIB  # without a memory plan, keep the record on cards at least this big


def _names(views) -> str:
    return ", ".join(f"view_{int(v):02d}" for v in views)


def _is_sampler(class_type: str) -> bool:
    cls = comfy_nodes.NODE_CLASS_MAPPINGS.get(class_type)
    return cls is not None and "LATENT" in (getattr(cls, "RETURN_TYPES", None) or ())


def record_device(choice: str, settings: SettingsValue | None) -> torch.device:
    dev = mm.get_torch_device()
    if choice == "cpu" or dev.type == "cpu":
        return torch.device("cpu")
    if choice == "gpu":
        return dev
    if settings is not None:
        return dev if estimate_memory(settings).record_on_gpu else torch.device("cpu")
    return dev if mm.get_total_memory(dev) >= GPU_RECORD_MIN_TOTAL else torch.device("cpu")


def _views(cameras: CamerasValue) -> list[int]:
    return cameras.view_index.tolist() if cameras.view_index is not None else list(range(len(cameras)))


def _has_depth(depth: DepthMaps | None, row: int) -> bool:
    return depth is not None and bool(depth.valid[row].any())


class CrossViewAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GlimpseCrossViewAttention",
            display_name="Cross-View Attention (Glimpse)",
            category="Glimpse",
            description="Makes the views of a set agree: Load View Set's anchor views are sampled first, together, "
                        "and every other view attends to its nearest anchors at every self-attention layer and step "
                        "(their features are recorded once per set and reused by every later chunk and prompt).",
            is_input_list=True,
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
            inputs=[
                io.Model.Input("model", tooltip="The UNet to patch (e.g. Lightning Loader's MODEL). It is cloned, "
                                                "never changed; weight 0 or mode off passes it through untouched."),
                Cameras.Input("cameras", tooltip="Load View Set's cameras: which views are anchors, each view's "
                                                 "nearest anchors, and (correspondence mode) the geometry."),
                Depth.Input("depth", optional=True,
                            tooltip="Load View Set's renderer depth; needed by correspondence mode (views without "
                                    "depth fall back to extended mode, which the log says)."),
                io.Combo.Input("mode", options=list(CROSS_VIEW_MODES), default="correspondence",
                               tooltip="off: views sampled independently. extended: each view mixes its own "
                                       "attention with its attention over the anchors' whole images (robust, no "
                                       "depth needed, about 2x the attention cost). correspondence: a token mixes in "
                                       "the anchors' tokens only near its own 3D point, found with renderer depth and "
                                       "cameras and checked for occlusion (sharper agreement, needs depth). Ignored "
                                       "when settings are connected (their cross_view is used)."),
                io.Float.Input("weight", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="How much of a view's attention comes from its anchors: 0 is off (the model "
                                       "passes through untouched), 1 takes extended mode's attention or the local "
                                       "context of correspondence mode entirely from the anchors. Higher agrees "
                                       "more, but copies more of the anchors' look."),
                io.Int.Input("neighbours", default=2, min=1, max=8,
                             tooltip="How many of the nearest anchors (by viewing direction) each view attends to; "
                                     "each adds one attention (extended) or one local lookup (correspondence) per "
                                     "layer and step. Ignored when settings are connected."),
                io.Int.Input("window", default=0, min=0, max=2,
                             tooltip="Correspondence mode: the anchor tokens within this many tokens of the "
                                     "reprojected point are attended to. 0: the one token the point falls in (a "
                                     "gather, cheapest, sharpest); 1: the 3x3 around it, which tolerates depth error "
                                     "of up to a token (16-32 px at 1024 px) but costs about 9x the kernels."),
                io.Combo.Input("record_device", options=list(RECORD_DEVICES), default="auto",
                               tooltip="Where the anchors' record lives (at 1024 px in fp16, per anchor and "
                                       "executed step: correspondence mode keeps the values of the tokens with depth, "
                                       "at most 210 MB; extended mode keys and values of every token, 420 MB). "
                                       "auto: on the GPU when the connected preset's memory "
                                       "plan allows (or, without settings, on cards of 20 GiB or more), else in "
                                       "CPU RAM, copied to the GPU layer by layer."),
                Settings.Input("settings", optional=True,
                               tooltip="GLIMPSE_SETTINGS from MemoryPreset: its cross_view mode and "
                                       "anchor_neighbours are used, and its memory plan places the record."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", is_output_list=True,
                                tooltip="One patched MODEL per chunk of views (anchors first); wire it into the "
                                        "guider/sampler that samples those chunks."),
                CrossView.Output(display_name="cross_view", is_output_list=True,
                                 tooltip="Mode, weight, anchors and each view's anchors, per chunk: connect to Save "
                                         "View Set to record them in the manifest."),
            ],
        )

    @classmethod
    def execute(cls, model: list, cameras: list, mode: list, weight: list, neighbours: list, window: list,
                record_device: list, depth: list | None = None, settings: list | None = None) -> io.NodeOutput:
        model, mode, weight, neighbours = model[0], mode[0], float(weight[0]), int(neighbours[0])
        window, choice = int(window[0]), record_device[0]
        settings = settings[0] if settings else None
        if settings is not None:
            mode, neighbours = settings.cross_view, settings.anchor_neighbours
        depth = depth if depth else [None] * len(cameras)
        if len(depth) != len(cameras):
            raise ValueError(f"CrossViewAttention: {len(cameras)} camera chunks but {len(depth)} depth chunks")
        off = {"mode": "off"}
        if mode == "off" or weight == 0:
            return io.NodeOutput([model] * len(cameras), [off] * len(cameras))
        anchors = list(cameras[0].anchors)
        if not anchors:
            raise ValueError("CrossViewAttention: the view set has no anchor views (Load View Set's anchors is "
                             "'none'); set it to 'auto' or to view indices, or set the mode to off")
        set_key = cameras[0].set_key or "unnamed set"
        if any(c.set_key != cameras[0].set_key for c in cameras):
            raise ValueError("CrossViewAttention: the camera chunks come from different view sets")
        prompt, node_id = cls.hidden.prompt, cls.hidden.unique_id
        graph = sampling_subgraph(prompt, node_id, _is_sampler) if prompt and node_id else {}
        key = graph_key(graph)
        record = cls._anchor_record(cameras, depth, anchors, set_key, key, graph, choice, settings, mode, window)
        models, infos = [], []
        for chunk_cams, chunk_depth in zip(cameras, depth):
            plan = cls._plan(chunk_cams, chunk_depth, record, mode, weight, neighbours, window)
            models.append(patched_model(model, plan))
            infos.append({"mode": mode, "weight": weight, "neighbours": neighbours, "window": window,
                          "anchors": anchors, "record_device": str(record.device),
                          "view_anchors": {str(v): [record.anchors[int(j)] if plan.role == "view" else
                                                    plan.views[int(j)] for j in plan.refs[r]]
                                           for r, v in enumerate(plan.views)}})
        log.info("CrossViewAttention: %s mode, weight %g, anchors %s, %d chunk(s), record on %s", mode, weight,
                 _names(anchors), len(cameras), record.device)
        return io.NodeOutput(models, infos)

    @staticmethod
    def _anchor_record(cameras: list, depth: list, anchors: list[int], set_key: str, key: str, graph: dict,
                       choice: str, settings: SettingsValue | None, mode: str, window: int) -> AnchorRecord:
        """A new record when this prompt samples the anchors (they must be one chunk, the first), else the stored.

        Correspondence mode with depth on every anchor keeps only the anchors' tokens with depth (all a
        correspondence can land on), and only their values for a one-token window; otherwise keys and values of
        every token."""
        wanted = set(anchors)
        holding = [i for i, c in enumerate(cameras) if wanted & set(_views(c))]
        for i in holding:
            views = set(_views(cameras[i]))
            if views != wanted:
                raise ValueError(
                    f"CrossViewAttention: the anchors ({_names(anchors)}) must be sampled together as one chunk, but "
                    f"a chunk holds {_names(sorted(views))}; select all anchors or none of them in Load View Set")
        if holding:
            if holding != [0]:
                raise ValueError("CrossViewAttention: the anchors' chunk must come first (Load View Set orders them "
                                 "first); do not reorder the chunks")
            first = cameras[0]
            order = _views(first)
            surface = mode == "correspondence" and all(_has_depth(depth[0], r) for r in range(len(order)))
            return STORE.add(AnchorRecord(set_key=set_key, graph_key=key, graph=graph, anchors=order,
                                          depth=depth[0], cameras=first, device=record_device(choice, settings),
                                          layout="surface" if surface else "full",
                                          keep_keys=not surface or window > 0))
        record = STORE.find(set_key, key)
        if record is not None:
            log.info("CrossViewAttention: reusing the record of %s", record.summary())
            return record
        others = STORE.of_set(set_key)
        if others:
            raise ValueError("CrossViewAttention: the anchors of this view set were recorded with another sampling "
                             "graph (" + "; ".join(differences(others[-1].graph, graph)) + "): include the anchors ("
                             f"{_names(anchors)}) in Load View Set's views so they are sampled again")
        raise ValueError(f"CrossViewAttention: the anchors ({_names(anchors)}) have not been sampled in this ComfyUI "
                         "session: include them in Load View Set's views (they run first); the headless runner does "
                         "this itself")

    @staticmethod
    def _plan(cams: CamerasValue, depth: DepthMaps | None, record: AnchorRecord, mode: str, weight: float,
              neighbours: int, window: int) -> ChunkPlan:
        views = _views(cams)
        role = "anchor" if set(views) == set(record.anchors) else "view"
        if cams.anchor_order is None:
            raise ValueError("CrossViewAttention: the cameras carry no anchor order (connect Load View Set's cameras)")
        position = {a: i for i, a in enumerate(views if role == "anchor" else record.anchors)}
        available = len(record.anchors) - (1 if role == "anchor" else 0)
        m = min(neighbours, available)
        refs = torch.tensor([[position[int(a)] for a in row[:m]] for row in cams.anchor_order], dtype=torch.int64)
        refs = refs.reshape(len(views), m)
        extended = torch.tensor([mode == "correspondence" and not _has_depth(depth, r) for r in range(len(views))])
        if bool(extended.any()) and role == "view" and record.layout == "surface":
            log.warning("CrossViewAttention: %s have no renderer depth and the anchors' record keeps only their "
                        "surface tokens: sampled without cross-view attention",
                        _names([v for v, e in zip(views, extended) if e]))
            extended = torch.zeros_like(extended)
        elif bool(extended.any()):
            log.warning("CrossViewAttention: %s have no renderer depth: extended mode for them instead of "
                        "correspondence", _names([v for v, e in zip(views, extended) if e]))
        if mode == "correspondence" and role == "view":
            blind = [a for i, a in enumerate(record.anchors) if not _has_depth(record.depth, i)]
            if blind:
                log.warning("CrossViewAttention: anchors %s have no renderer depth: no correspondences into them",
                            _names(blind))
        return ChunkPlan(role=role, views=views, refs=refs, mode=mode, weight=weight, radius=window, record=record,
                         depth=depth, cameras=cams, extended_rows=extended)
