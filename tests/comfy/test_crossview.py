"""Cross-view attention in a real ComfyUI: whole prompts (LoadViewSet -> LightningLoader -> GlimpseCrossViewAttention
-> SamplerCustomAdvanced with GlimpseViewNoise) run by ComfyUI's own PromptExecutor in this process, on the
random-initialised Vega-size fixtures. Random weights say nothing about quality: these tests check the mechanics
(what changes, what must not, and the messages)."""
from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
FOX = REPO / "samples" / "fox"
LORA = "loras/sdxl_lightning_4step_lora.safetensors"


class Runner:
    """Queues API prompts on one PromptExecutor (so ComfyUI's cache and our record store behave as on a server)."""

    def __init__(self, comfy):
        import execution

        self.execution = execution
        server = sys.modules["glimpse_tests_comfy_process"].SilentServer()  # tests/comfy/comfy_process.py
        self.executor = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC)
        self.comfy = comfy

    def run(self, prompt: dict) -> dict:
        """Execute ``prompt``; return {view index: sampled latent [C,h,w]} (raises with ComfyUI's error message)."""
        ex = self.execution
        pid = uuid.uuid4().hex
        valid = asyncio.run(ex.validate_prompt(pid, prompt, None))
        if not valid[0]:
            raise ValueError(f"{valid[1].get('message')}: {valid[1].get('details')} {json.dumps(valid[3])[:2000]}")
        self.executor.execute(prompt, pid, {}, valid[2])
        if not self.executor.success:
            err = [m for m in self.executor.status_messages if m[0] == "execution_error"]
            raise RuntimeError(err[-1][1]["exception_message"] if err else "execution failed")
        latents = self.executor.caches.outputs.get("11")[0]
        cameras = self.executor.caches.outputs.get("2")[3]
        out = {}
        for lat, cams in zip(latents, cameras):
            for row, v in enumerate(cams.view_index.tolist()):
                out[v] = lat["samples"][row]
        return out


@pytest.fixture(scope="module")
def runner(comfy):
    r = Runner(comfy)
    yield r
    store().clear()
    r.executor = None
    comfy.free()


def store():
    return sys.modules[next(m for m in sys.modules if m.endswith("nodes.crossview"))].STORE


def graph(path, *, resolution=64, chunk=1, mode="correspondence", weight=0.5, anchors="auto", count=4,
          views="all", seed=42, node=True, lora=LORA, noise="GlimpseViewNoise", neighbours=2, window=0,
          strength=0.75) -> dict:
    g = {
        "2": {"class_type": "LoadViewSet", "inputs": {
            "path": str(path), "views": views, "background": "#808080", "resolution": resolution,
            "views_per_chunk": chunk, "strip_views": 0, "depth_png_scale": 0.0, "anchors": anchors,
            "anchor_count": count}},
        "3": {"class_type": "LightningLoader", "inputs": {
            "ckpt_name": "sd_xl_base_1.0.safetensors", "lightning_file": lora, "steps": "auto", "strength": strength}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["3", 1], "text": "a low-poly fox"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["3", 1], "text": ""}},
        "7": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["3", 2]}},
        "8": ({"class_type": "GlimpseViewNoise", "inputs": {"noise_seed": seed, "cameras": ["2", 3]}}
              if noise == "GlimpseViewNoise" else {"class_type": noise, "inputs": {}}),
        "9": {"class_type": "CFGGuider", "inputs": {"model": ["20", 0] if node else ["3", 0], "positive": ["5", 0],
                                                   "negative": ["6", 0], "cfg": 1.0}},
        "10": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "11": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["8", 0], "guider": ["9", 0], "sampler": ["10", 0], "sigmas": ["3", 3],
            "latent_image": ["7", 0]}},
        "12": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["3", 2]}},
        "13": {"class_type": "PreviewImage", "inputs": {"images": ["12", 0]}},
    }
    if node:
        g["20"] = {"class_type": "GlimpseCrossViewAttention", "inputs": {
            "model": ["3", 0], "cameras": ["2", 3], "depth": ["2", 2], "mode": mode, "weight": weight,
            "neighbours": neighbours, "window": window, "record_device": "auto"}}
    return g


def max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[v] - b[v]).abs().max()) for v in a)


def sphere_set(folder: Path, size: int, views: int = 8, same_view: bool = False, depth: bool = True,
               patch: tuple[int, int, int] | None = None) -> Path:
    """A view set of a textured sphere ray-cast at ``views`` orbit cameras (all view 0's with ``same_view``).

    ``patch`` (view, top-left, side): paint a flat square over that view's image (a perturbation of its input).
    """
    from glimpse.cameras import orbit_cameras, select_cameras
    from glimpse.output import cameras_to_json
    from tests.unit.spheres import render, texture

    cams = orbit_cameras(views, (size, size))
    if same_view:
        cams = select_cameras(cams, [0] * views)
        cams = type(cams)(**{**cams.__dict__, "view_index": torch.arange(views)})
    colour, alpha, d = render([(torch.zeros(3), 0.45, texture)], cams, size)
    folder.mkdir(parents=True, exist_ok=True)
    rgba = torch.cat([colour, alpha[..., None]], -1)
    if patch is not None:
        v, at, side = patch
        rgba[v, at:at + side, at:at + side, :3] = torch.tensor([0.1, 0.9, 0.2])
    for i in range(views):
        Image.fromarray((rgba[i].clamp(0, 1) * 255).round().byte().numpy()).save(folder / f"view_{i:02d}.png")
        if depth:
            np.save(folder / f"view_{i:02d}_depth.npy", d.depth[i].numpy())
    (folder / "cameras.json").write_text(json.dumps(cameras_to_json(cams)))
    return folder


def test_off_is_bit_identical_to_the_graph_without_the_node(runner):
    without = runner.run(graph(FOX, views="0-5", node=False))
    assert len(without) == 6
    for mode, weight in (("off", 0.5), ("correspondence", 0.0)):
        got = runner.run(graph(FOX, views="0-5", mode=mode, weight=weight))
        assert all(torch.equal(got[v], without[v]) for v in without), (mode, weight)
    on = runner.run(graph(FOX, views="0-5", anchors="0,1", count=2, mode="extended"))
    assert max_diff(on, without) > 1e-2  # and on, it does something


def test_chunking_does_not_change_any_view(runner):
    """16 views in chunks of 1, 4 and 16 (the anchors always first, as one batch), and a resumed run that queues only
    the views a killed run left: the same views to float tolerance."""
    runs = {c: runner.run(graph(FOX, chunk=c, mode="extended")) for c in (1, 4, 16)}
    scale = max(float(t.abs().max()) for t in runs[1].values())
    for c in (4, 16):
        assert max_diff(runs[c], runs[1]) <= 1e-5 * scale, c
    resumed = runner.run(graph(FOX, chunk=4, mode="extended", views="9-11,13-15"))  # anchors: from the record
    assert max_diff(resumed, {v: runs[1][v] for v in resumed}) <= 1e-5 * scale
    # the same prompts without the per-view noise (core RandomNoise draws by batch position) do not agree
    plain = {c: runner.run({**graph(FOX, chunk=c, mode="off"), "8": {
        "class_type": "RandomNoise", "inputs": {"noise_seed": 42}}}) for c in (1, 4)}
    assert max_diff(plain[1], plain[4]) > 1e-2 * scale


@pytest.mark.parametrize("mode", ["extended", "correspondence"])
def test_identical_views_cameras_and_noise_change_nothing(runner, tmp_path, mode):
    folder = sphere_set(tmp_path / "same", 128, views=4, same_view=True)
    off = runner.run(graph(folder, resolution=128, mode="off", anchors="0,1", noise="DisableNoise"))
    on = runner.run(graph(folder, resolution=128, mode=mode, weight=1.0, anchors="0,1", noise="DisableNoise"))
    scale = max(float(t.abs().max()) for t in off.values())
    # float noise only: the anchors' hidden states come from a batch of two, a view's own from a batch of one (CPU
    # kernels round them differently in the last bits), and weight 1 passes that difference straight through
    same = max_diff(on, off)
    # the same setting on views that differ does change them (so the check above is not vacuous)
    varied = sphere_set(tmp_path / "varied", 128, views=4)
    off_v = runner.run(graph(varied, resolution=128, mode="off", anchors="0,1", noise="DisableNoise"))
    on_v = runner.run(graph(varied, resolution=128, mode=mode, weight=1.0, anchors="0,1", noise="DisableNoise"))
    differ = max_diff(on_v, off_v)
    assert same <= 1e-4 * scale and differ > 100 * same, (same, differ, scale)


def _reprojected_region(folder: Path, size: int, src: int, dst: int, at: int, side: int) -> torch.Tensor:
    """bool [size, size]: pixels of view ``dst`` whose surface point is visible in view ``src`` inside the square."""
    from glimpse.cameras import depth_to_world, load_cameras, project, select_cameras

    cams = load_cameras(folder / "cameras.json")
    z = torch.from_numpy(np.load(folder / f"view_{dst:02d}_depth.npy")).double()
    z_src = torch.from_numpy(np.load(folder / f"view_{src:02d}_depth.npy")).double()
    points = depth_to_world(z[None], select_cameras(cams, [dst]))
    uv, zp = project(points, cams.intrinsics[src:src + 1], cams.world_to_camera[src:src + 1])
    col, row = uv[0, ..., 0].floor().long(), uv[0, ..., 1].floor().long()
    inside = (col >= at) & (col < at + side) & (row >= at) & (row < at + side) & (z > 0)
    seen = z_src[row.clamp(0, size - 1), col.clamp(0, size - 1)]
    return inside & ((zp[0] - seen).abs() <= 0.03 * seen)


def _change_ratio(before: dict, after: dict, view: int, region: torch.Tensor, fg: torch.Tensor) -> float:
    """Mean latent change inside the region's latent cells over the mean change on the rest of the foreground."""
    delta = (after[view] - before[view]).abs().mean(0)
    cells = torch.nn.functional.adaptive_max_pool2d(region[None, None].float(), delta.shape)[0, 0] > 0
    fg_cells = torch.nn.functional.adaptive_max_pool2d(fg[None, None].float(), delta.shape)[0, 0] > 0
    return float(delta[cells].mean() / delta[fg_cells & ~cells].mean())


def test_correspondence_routes_an_anchor_change_to_its_reprojection(runner, tmp_path):
    size, at, side = 256, 112, 40
    clean = sphere_set(tmp_path / "clean", size)
    painted = sphere_set(tmp_path / "painted", size, patch=(0, at, side))
    region = _reprojected_region(clean, size, src=0, dst=1, at=at, side=side)
    fg = torch.from_numpy(np.load(clean / "view_01_depth.npy")) > 0
    assert 100 < int(region.sum()) < int(fg.sum()) // 4
    ratios = {}
    for mode in ("correspondence", "extended"):
        # window 0 (the default): only the token at the reprojection (window 1 reaches one 32 px token further at
        # 1/32 here, and its ratio measured 1.3)
        kw = dict(resolution=size, mode=mode, weight=1.0, anchors="0,4", views="0,1,4", window=0)
        before, after = runner.run(graph(clean, **kw)), runner.run(graph(painted, **kw))
        ratios[mode] = _change_ratio(before, after, 1, region, fg)
    print("inside/outside change of view 1:", ratios)
    # Measured 2.0-2.1 and 0.8-1.0. With random weights the anchor's own layers (GroupNorm statistics, near-uniform
    # self-attention) spread the paint over the whole anchor, and that reaches every corresponding token: the routed
    # part is what stands above it.
    assert ratios["correspondence"] > 1.5 and ratios["correspondence"] > 1.5 * ratios["extended"]
    assert 0.6 < ratios["extended"] < 1.4  # extended: everywhere alike


def test_bad_input_is_named(runner, tmp_path):
    with pytest.raises(ValueError, match=r"anchors: view selection '16' is outside 0-15 \(the set has 16 views"):
        runner.run(graph(FOX, anchors="0,16"))
    with pytest.raises(RuntimeError, match="the view set has no anchor views .*anchors is 'none'"):
        runner.run(graph(FOX, anchors="none", views="0-1"))
    with pytest.raises(RuntimeError, match=r"the anchors \(view_00, view_08\) must be sampled together as one chunk, "
                                           "but a chunk holds view_08"):
        runner.run(graph(FOX, anchors="0,8", views="6-9"))
    store().clear()
    with pytest.raises(RuntimeError, match=r"the anchors \(view_00, view_08\) have not been sampled in this ComfyUI "
                                           "session: include them"):
        runner.run(graph(FOX, anchors="0,8", views="1-2"))
    # a LoRA swap between the anchors' prompt and a later chunk's is named, not silently mixed
    runner.run(graph(FOX, anchors="0,8", views="0,8"))
    with pytest.raises(RuntimeError, match="recorded with another sampling graph .*LightningLoader.lightning_file: "
                                           "'loras/sdxl_lightning_4step_lora.safetensors' -> "
                                           "'diffusion_models/sdxl_lightning_4step_unet.safetensors'"):
        runner.run(graph(FOX, anchors="0,8", views="1-2",
                         lora="diffusion_models/sdxl_lightning_4step_unet.safetensors"))


def test_correspondence_without_depth_falls_back_to_extended_and_says_so(runner, comfy, tmp_path):
    folder = sphere_set(tmp_path / "nodepth", 64, views=4, depth=False)
    kw = dict(resolution=64, anchors="0,2", weight=1.0)
    before = len(comfy.log())
    fallback = runner.run(graph(folder, mode="correspondence", **kw))
    assert "view_00, view_02 have no renderer depth: extended mode for them instead of correspondence" in \
        comfy.log()[before:]
    extended = runner.run(graph(folder, mode="extended", **kw))
    assert all(torch.equal(fallback[v], extended[v]) for v in extended)


def test_a_view_without_depth_keeps_its_own_attention_when_the_record_keeps_surface_tokens(runner, comfy, tmp_path):
    folder = sphere_set(tmp_path / "partial", 128, views=4)
    (folder / "view_01_depth.npy").unlink()  # the anchors (0, 2) have depth: their record keeps surface tokens only
    kw = dict(resolution=128, anchors="0,2", weight=1.0)
    before = len(comfy.log())
    on = runner.run(graph(folder, mode="correspondence", **kw))
    assert ("view_01 have no renderer depth and the anchors' record keeps only their surface tokens: sampled "
            "without cross-view attention") in comfy.log()[before:]
    off = runner.run(graph(folder, mode="off", **kw))
    scale = max(float(t.abs().max()) for t in off.values())
    assert float((on[1] - off[1]).abs().max()) <= 1e-6 * scale  # its own attention only
    assert float((on[3] - off[3]).abs().max()) > 1e-3 * scale  # a view with depth does attend to the anchors


def test_memory_report_lists_the_anchor_record(runner, comfy):
    runner.run(graph(FOX, anchors="0,8", views="0,8,3"))
    (settings, _) = comfy.run("MemoryPreset", preset="t4_balanced", steps="4", strength=0.75,
                              controlnet_strength=0.5, resolution=1024, views_per_chunk=1, tiled_vae=True,
                              vae_tile_size=384, unet_dtype="default", controlnet_size="small")
    (text,) = comfy.run("GlimpseMemoryReport", settings=settings)
    held = [line for line in text.splitlines() if line.startswith("anchor record held:")]
    assert held and "view_00, view_08: 3 step(s)" in held[-1] and "MiB on cpu" in held[-1]
    assert "cross-view attention correspondence: 4 anchors sampled as one batch" in text
    record = store().records()[-1]
    layers = {k[1] for k in record.features}
    assert len(record.sigmas) == 3 and len(layers) > 10  # every self-attention layer at every executed step
    # correspondence with a one-token window and depth on every anchor: only the values of tokens with depth
    assert record.layout == "surface" and all(keys is None for keys, _ in record.features.values())
    assert record.nbytes == sum(values.numel() * 4 for _, values in record.features.values())
    assert "values of tokens with depth" in held[-1]
