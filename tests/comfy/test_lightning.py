"""LightningLoader, MemoryPreset and MemoryReport on a real ComfyUI with the Vega-size fixtures.

LightningLoader expands into core loader nodes, so in this process it runs through ComfyUI's own PromptExecutor
(expansion, caching) rather than ``comfy.run``; sampling then goes through core nodes with ``comfy.run``. The executor
talks to a ``_Transport`` that records the messages a server would forward to the browser.
"""
from __future__ import annotations

import importlib.util
import re
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from glimpse.lightning import plan_img2img

# the reference grid, loaded by path: ComfyUI's own `tests` package would shadow this repository's
_spec = importlib.util.spec_from_file_location("glimpse_tests_sigmas",
                                               Path(__file__).resolve().parents[1] / "fixtures" / "sigmas.py")
_sigmas = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_sigmas)
sgm_uniform_sigmas = _sigmas.sgm_uniform_sigmas

CKPT = "sd_xl_base_1.0.safetensors"
LORAS = {n: f"loras/sdxl_lightning_{n}step_lora.safetensors" for n in (2, 4, 8)}
UNETS = {1: "diffusion_models/sdxl_lightning_1step_unet_x0.safetensors",
         **{n: f"diffusion_models/sdxl_lightning_{n}step_unet.safetensors" for n in (2, 4, 8)}}
STRENGTHS = (0.1, 0.5, 0.65, 0.75, 1.0)
LOAD_LINES = ("model_type ", "VAE load device", "CLIP/text encoder model load device")  # one per model built


class _Transport:
    """PromptExecutor's link to the server: in this process nobody listens, so it only records the messages."""

    client_id = None
    last_node_id = None
    sockets_metadata: dict = {}

    def __init__(self):
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


class Graph:
    """ComfyUI's PromptExecutor in this process, one per module so that its cache lives across prompts."""

    def __init__(self, comfy):
        self.comfy = comfy
        self.transport = _Transport()
        self.executor = comfy._execution.PromptExecutor(self.transport)

    def run(self, prompt: dict, outputs: list[str]) -> dict[str, tuple]:
        self.transport.messages.clear()
        self.executor.execute(prompt, uuid.uuid4().hex, {"client_id": "in-process"}, outputs)
        errors = [d for e, d in self.executor.status_messages if e == "execution_error"]
        if errors:
            raise RuntimeError(f"{errors[0]['node_type']}: {errors[0]['exception_message']}")
        return {n: tuple(o[0] for o in self.executor.caches.outputs.get(n)) for n in outputs}

    def error(self, prompt: dict, outputs: list[str]) -> str:
        self.executor.execute(prompt, uuid.uuid4().hex, {}, outputs)
        errors = [d for e, d in self.executor.status_messages if e == "execution_error"]
        assert errors, "the prompt ran without an error"
        return errors[0]["exception_message"]

    def executed_classes(self) -> list[str]:
        dp = self.executor.caches.outputs.dynprompt
        return [dp.get_node(d["node"])["class_type"] for e, d in self.transport.messages
                if e == "executing" and d.get("node") is not None]


def loader(lightning_file="none", steps="auto", strength=0.75, ckpt=CKPT, **extra) -> dict:
    return {"1": {"class_type": "LightningLoader",
                  "inputs": {"ckpt_name": ckpt, "lightning_file": lightning_file, "steps": steps,
                             "strength": strength, **extra}}}


def load_count(log: str) -> int:
    return sum(line.count(p) for line in log.splitlines() for p in LOAD_LINES)


@pytest.fixture(scope="module")
def graph(comfy):
    g = Graph(comfy)
    yield g
    g.executor.reset()
    comfy.free()


def test_sigmas_are_comfyui_sgm_uniform_sliced_by_the_rule(comfy, graph):
    import comfy.model_sampling as ms  # ComfyUI's, importable once the comfy fixture ran
    import comfy.samplers as samplers

    before = load_count(comfy.log())
    for n in (1, 2, 4, 8):
        for s in STRENGTHS:
            model, clip, vae, sigmas, k, steps = graph.run(loader("none", str(n), s), ["1"])["1"]
            plan = plan_img2img(n, s)
            sampling = model.get_model_object("model_sampling")
            full = samplers.calculate_sigmas(sampling, "sgm_uniform", n).cpu()
            assert (steps, k) == (n, plan.start_at_step), (n, s)
            assert sigmas.shape == (plan.executed + 1,)
            assert torch.equal(sigmas, full[k:]), (n, s, sigmas, full)
            assert sigmas[-1].item() == 0.0
            # the pure re-statement in glimpse.lightning gives the same grid from the model's sigma table
            torch.testing.assert_close(sgm_uniform_sigmas(sampling.sigmas, n)[k:], sigmas, rtol=1e-6, atol=0)
            assert isinstance(sampling, ms.X0) == (n == 1), (n, type(sampling).__mro__)
            assert isinstance(sampling, ms.EPS)
    # 20 prompts, one checkpoint load: the expanded core loader is cached while only steps/strength change
    assert load_count(comfy.log()) - before <= 3


def _sample(comfy, model, clip, vae, sigmas, views=2, seed=7):
    """SamplerCustomAdvanced (euler, no CFG) on a 64x64 render batch, counting UNet evaluations per view."""
    calls = []

    def counting(apply_model, args):
        calls.append(args["input"].shape[0])
        return apply_model(args["input"], args["timestep"], **args["c"])

    counted = model.clone()
    counted.set_model_unet_function_wrapper(counting)
    cond = comfy.run("CLIPTextEncode", clip=clip, text="a sharp photo of a small object")[0]
    renders = torch.rand((views, 64, 64, 3), generator=torch.Generator().manual_seed(seed))
    latent = comfy.run("VAEEncode", pixels=renders, vae=vae)[0]
    noise = comfy.run("RandomNoise", noise_seed=seed)[0]
    guider = comfy.run("BasicGuider", model=counted, conditioning=cond)[0]
    sampler = comfy.run("KSamplerSelect", sampler_name="euler")[0]
    out = comfy.run("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                    latent_image=latent)[0]
    image = comfy.run("VAEDecode", samples=out, vae=vae)[0]
    assert image.shape == (views, 64, 64, 3)
    return out, cond, latent, calls


SOURCES = [LORAS[2], LORAS[4], LORAS[8], UNETS[1], UNETS[2], UNETS[4], UNETS[8]]


@pytest.mark.parametrize("source", SOURCES, ids=[s.split("/")[1].removesuffix(".safetensors") for s in SOURCES])
def test_lightning_sources_sample_with_the_planned_number_of_evaluations(comfy, graph, source):
    import comfy.model_sampling as ms

    strength = 0.75
    model, clip, vae, sigmas, k, n = graph.run(loader(source, "auto", strength), ["1"])["1"]
    expected_n = int(re.search(r"_(\d)step", source).group(1))
    plan = plan_img2img(expected_n, strength)
    assert (n, k) == (expected_n, plan.start_at_step)
    assert isinstance(model.get_model_object("model_sampling"), ms.X0) == (n == 1)
    executed = graph.executed_classes()
    core = "LoraLoaderModelOnly" if source.startswith("loras/") else "UNETLoader"
    assert core in executed and "ModelSamplingDiscrete" in executed, executed
    out, cond, latent, calls = _sample(comfy, model, clip, vae, sigmas, views=2)  # comfy.run asserts finite outputs
    assert len(calls) == plan.executed  # one batched UNet call per executed step (cfg 1: no uncond pass)
    assert sum(calls) / 2 == plan.executed  # evaluations per view
    assert out["samples"].shape == (2, 4, 8, 8)
    if n == 4:  # the documented KSamplerAdvanced equivalent gives the same latents with the same evaluations
        ks_calls = []

        def counting(apply_model, args):
            ks_calls.append(args["input"].shape[0])
            return apply_model(args["input"], args["timestep"], **args["c"])

        m = model.clone()
        m.set_model_unet_function_wrapper(counting)
        ks = comfy.run("KSamplerAdvanced", model=m, add_noise="enable", noise_seed=7, steps=n, cfg=1.0,
                       sampler_name="euler", scheduler="sgm_uniform", positive=cond, negative=cond,
                       latent_image=latent, start_at_step=k, end_at_step=n, return_with_leftover_noise="disable")[0]
        assert len(ks_calls) == plan.executed
        torch.testing.assert_close(ks["samples"], out["samples"], rtol=1e-4, atol=1e-4)


def test_memory_report_after_a_run_lists_loaded_models(comfy, graph):
    model, clip, vae, sigmas, k, n = graph.run(loader(LORAS[4], "auto", 0.5), ["1"])["1"]
    _sample(comfy, model, clip, vae, sigmas, views=1)
    settings, text = comfy.run("MemoryPreset", preset="t4_balanced", steps="4", strength=0.75,
                               controlnet_strength=0.5, resolution=1024, views_per_chunk=1, tiled_vae=True,
                               vae_tile_size=384, unet_dtype="default", controlnet_size="small")
    print(text)
    assert settings.preset == "t4_balanced" and settings.steps == 4
    models = re.findall(r"^  (\w+): ([0-9.]+) GiB \(([0-9.]+) GiB on device\)$", text, re.MULTILINE)
    names = [m[0] for m in models]
    assert "SDXL" in names and "AutoencodingEngine" in names and "SDXLClipModel" in names, text
    assert all(float(size) > 0 for _, size, _ in models), text
    assert "device: cpu" in text and "peak allocated since last report: n/a" in text
    report = comfy.run("GlimpseMemoryReport", settings=settings)
    assert list(report.ui["text"]) == [report[0]] and "models loaded by ComfyUI" in report[0]


# -- bad input -------------------------------------------------------------------------------------------------------

def _sd15_lora(path):
    """An SD1.5-shaped LoRA: kohya keys of SD1.5's UNet, cross-attention pairs on 768-dim text embeddings."""
    g = torch.Generator().manual_seed(0)
    t = {}
    for block, ch in (("down_blocks_0_attentions_0", 320), ("down_blocks_1_attentions_0", 640),
                      ("up_blocks_3_attentions_2", 320)):
        for proj, fan_in in (("attn1_to_q", ch), ("attn2_to_k", 768), ("attn2_to_v", 768)):
            name = f"lora_unet_{block}_transformer_blocks_0_{proj}"
            t[f"{name}.lora_down.weight"] = torch.randn((4, fan_in), generator=g).half()
            t[f"{name}.lora_up.weight"] = torch.randn((ch, 4), generator=g).half()
            t[f"{name}.alpha"] = torch.tensor(4.0).half()
    save_file(t, str(path))


def _sd15_unet(path):
    """An SD1.5-shaped UNet (ldm keys): 768-dim cross-attention, no pooled/size embedding."""
    g = torch.Generator().manual_seed(1)
    shapes = {"input_blocks.0.0.weight": (320, 4, 3, 3), "input_blocks.0.0.bias": (320,),
              "time_embed.0.weight": (1280, 320),
              "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
              "input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight": (320, 768),
              "out.2.weight": (4, 320, 3, 3)}
    save_file({k: torch.randn(s, generator=g).half() for k, s in shapes.items()}, str(path))


@pytest.fixture(scope="module")
def bad_files(comfy, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-models")
    (root / "loras").mkdir()
    (root / "diffusion_models").mkdir()
    _sd15_lora(root / "loras" / "sd15_random_4step_lora.safetensors")
    _sd15_unet(root / "diffusion_models" / "sd15_random_unet.safetensors")
    for folder in ("loras", "diffusion_models"):
        comfy.folder_paths.add_model_folder_path(folder, str(root / folder))
    return root


@pytest.mark.parametrize(("inputs", "message"), [
    (dict(lightning_file="loras/sd15_random_4step_lora.safetensors"),
     r"sd15_random_4step_lora\.safetensors is not an SDXL LoRA: its cross-attention pairs expect 768-dim text "
     r"embeddings \(SD1\.x\)"),
    (dict(lightning_file="diffusion_models/sd15_random_unet.safetensors", steps="4"),
     r"sd15_random_unet\.safetensors is not an SDXL UNet: its cross-attention expects 768-dim text embeddings "
     r"\(SD1\.x\); it has no SDXL pooled/size conditioning input"),
    (dict(lightning_file=LORAS[4], strength=0.0), r"strength 0\.0 is outside \(0, 1\]"),
    (dict(lightning_file=LORAS[4], strength=1.5), r"strength 1\.5 is outside \(0, 1\]"),
    (dict(lightning_file=LORAS[4], steps="2"),
     r"steps 2 contradicts sdxl_lightning_4step_lora\.safetensors, a 4-step Lightning file"),
    (dict(lightning_file=UNETS[1], steps="8"),
     r"steps 8 contradicts sdxl_lightning_1step_unet_x0\.safetensors, a 1-step Lightning file"),
    (dict(lightning_file="loras/sdxl_lightning_4step_lora_missing.safetensors"),
     r"Lightning LoRA sdxl_lightning_4step_lora_missing\.safetensors is not in the loras folder"),
    (dict(ckpt="no_such_base.safetensors"), r"checkpoint no_such_base\.safetensors is not in the checkpoints folder"),
    (dict(steps="auto"), r"cannot tell the Lightning step count of sd_xl_base_1\.0\.safetensors"),
], ids=["sd15-lora", "sd15-unet", "strength-0", "strength-1.5", "steps-vs-name", "steps-vs-1step-name",
        "missing-lora", "missing-checkpoint", "unknown-steps"])
def test_bad_input_is_rejected_before_any_model_loads(comfy, graph, bad_files, inputs, message):
    cls = comfy.pack["LightningLoader"]
    args = dict(dict(lightning_file="none", steps="auto", strength=0.75, ckpt=CKPT), **inputs)
    prompt = loader(**args)
    valid = cls.validate_inputs(**{k: v for k, v in prompt["1"]["inputs"].items()})
    if inputs != {"steps": "auto"}:  # with steps auto a connected MemoryPreset may still name the count
        assert isinstance(valid, str) and re.search(message, valid), valid
    before = load_count(comfy.log())
    assert re.search(message, graph.error(prompt, ["1"]))
    assert load_count(comfy.log()) == before


@pytest.mark.allow_comfy_warnings("lora key not loaded")
def test_core_loads_the_sd15_lora_silently_which_is_why_the_loader_checks(comfy, graph, bad_files):
    model = graph.run(loader("none", "4", 0.75), ["1"])["1"][0]
    before = len(comfy.log())
    patched = comfy.run("LoraLoaderModelOnly", model=model, lora_name="sd15_random_4step_lora.safetensors",
                        strength_model=1.0)[0]
    assert patched is not None  # no error from core ...
    assert "lora key not loaded" in comfy.log()[before:]  # ... only warnings, and the base model samples unchanged


def test_preset_steps_contradicting_the_file_name(comfy, graph):
    prompt = {"2": {"class_type": "MemoryPreset",
                    "inputs": {"preset": "speed", "steps": "4", "strength": 0.75, "controlnet_strength": 0.5,
                               "resolution": 1024, "views_per_chunk": 1, "tiled_vae": True, "vae_tile_size": 384,
                               "unet_dtype": "default", "controlnet_size": "small"}},
              **loader(LORAS[4], "auto", 0.75, settings=["2", 0])}
    assert re.search(r"preset speed steps 2 contradicts sdxl_lightning_4step_lora\.safetensors, a 4-step",
                     graph.error(prompt, ["1"]))
    prompt["2"]["inputs"]["preset"] = "quality"  # 4 steps, strength 0.65 -> 3 executed steps
    _, _, _, sigmas, k, n = graph.run(prompt, ["1"])["1"]
    assert (n, k, sigmas.shape[0]) == (4, 1, 4)


def _preset_inputs(preset, **custom):
    inputs = {"preset": preset, "steps": "4", "strength": 0.75, "controlnet_strength": 0.5, "resolution": 1024,
              "views_per_chunk": 1, "tiled_vae": True, "vae_tile_size": 384, "unet_dtype": "default",
              "controlnet_size": "small"}
    return {**inputs, **custom}


def test_settings_carry_strength_and_fp8_unet_dtype_into_the_loader(comfy, graph):
    prompt = {"2": {"class_type": "MemoryPreset", "inputs": _preset_inputs("t4_minimal")},
              **loader(UNETS[4], "auto", 1.0, settings=["2", 0])}
    model, clip, vae, sigmas, k, n = graph.run(prompt, ["1"])["1"]
    assert model.model.get_dtype() == torch.float8_e4m3fn  # t4_minimal stores the UNet in fp8
    assert (n, k) == (4, 1)  # the preset's strength 0.75, not the widget's 1.0
    _sample(comfy, model, clip, vae, sigmas, views=1)  # finite (comfy.run checks)


def test_memory_preset_custom_fields_and_their_validation(comfy):
    cls = comfy.pack["MemoryPreset"]
    settings, text = comfy.run(cls, **_preset_inputs("custom", steps="8", strength=0.4, resolution=768,
                                                      views_per_chunk=2))
    assert (settings.preset, settings.steps, settings.strength, settings.resolution, settings.views_per_chunk) == \
        ("custom", 8, 0.4, 768, 2)
    assert "preset custom: 8 steps, strength 0.4" in text and "768x768" in text
    named, _ = comfy.run(cls, **_preset_inputs("quality", steps="8"))
    assert (named.steps, named.strength, named.controlnet_size) == (4, 0.65, "full")  # custom fields ignored
    assert cls.validate_inputs(**_preset_inputs("custom", resolution=1000)) == \
        "resolution 1000 must be a multiple of 64, at least 64 (long side in pixels)"
    assert "strength 0.0 is outside (0, 1]" in cls.validate_inputs(**_preset_inputs("custom", strength=0.0))
    assert cls.validate_inputs(**_preset_inputs("t4_balanced")) is True


# -- server ----------------------------------------------------------------------------------------------------------

def _server_prompt(preset="t4_balanced", strength=0.75):
    custom = {"steps": "4", "strength": strength, "controlnet_strength": 0.5, "resolution": 1024,
              "views_per_chunk": 1, "tiled_vae": True, "vae_tile_size": 384, "unet_dtype": "default",
              "controlnet_size": "small"}
    return {
        "2": {"class_type": "MemoryPreset", "inputs": {"preset": preset, **custom}},
        **loader(LORAS[4], "auto", 0.75, settings=["2", 0]),
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a sharp photo"}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
        "6": {"class_type": "BasicGuider", "inputs": {"model": ["1", 0], "conditioning": ["3", 0]}},
        "7": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "8": {"class_type": "SamplerCustomAdvanced",
              "inputs": {"noise": ["5", 0], "guider": ["6", 0], "sampler": ["7", 0], "sigmas": ["1", 3],
                         "latent_image": ["4", 0]}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "PreviewImage", "inputs": {"images": ["9", 0]}},
        "11": {"class_type": "GlimpseMemoryReport", "inputs": {"settings": ["2", 0], "after": ["9", 0]}},
    }


def _cached(entry) -> set[str]:
    return {n for e, d in entry["status"]["messages"] if e == "execution_cached" for n in d["nodes"]}


@pytest.mark.server
def test_server_second_queue_reloads_nothing_and_strength_change_reloads_no_model(comfy_server):
    first = comfy_server.queue(_server_prompt())
    comfy_server.timings["lightning graph, 1st queue"] = comfy_server.last_prompt_s
    loads = load_count(comfy_server.log())
    assert loads >= 3  # UNet, CLIP and VAE built once
    report = first["outputs"]["11"]["text"][0]
    sizes = re.findall(r"^  (\w+): ([0-9.]+) GiB", report, re.MULTILINE)
    assert sizes and all(float(s) > 0 for _, s in sizes), report

    second = comfy_server.queue(_server_prompt())
    comfy_server.timings["lightning graph, identical 2nd queue"] = comfy_server.last_prompt_s
    assert _cached(second) == set(_server_prompt()) - {"11"}  # everything but the always-run report
    assert load_count(comfy_server.log()) == loads

    third = comfy_server.queue(_server_prompt(preset="custom", strength=0.5))
    assert {"1", "2", "8"}.isdisjoint(_cached(third))  # preset, loader and sampler ran again ...
    assert load_count(comfy_server.log()) == loads  # ... but the expanded core loaders came from the cache
    comfy_server.timings["lightning graph, strength-change queue"] = comfy_server.last_prompt_s


@pytest.mark.server
def test_server_rejects_sd15_lora_at_validation(comfy_server, models_dir):
    bad = models_dir / "loras" / f"sd15_server_{uuid.uuid4().hex[:6]}.safetensors"
    _sd15_lora(bad)
    try:
        prompt = loader(f"loras/{bad.name}", "4", 0.75)
        prompt["2"] = {"class_type": "PreviewAny", "inputs": {"source": ["1", 4]}}
        with pytest.raises(comfy_server.PromptError) as e:
            comfy_server.queue(prompt)
        assert f"{bad.name} is not an SDXL LoRA" in str(e.value)
    finally:
        bad.unlink()


def test_a_custom_preset_written_before_cross_view_samples_views_independently(comfy):
    """An API prompt from before the cross-view fields existed validates and gets cross-view attention off."""
    fields = dict(preset="custom", steps="4", strength=0.75, controlnet_strength=0.5, resolution=512,
                  views_per_chunk=2, tiled_vae=False, vae_tile_size=512, unet_dtype="default", controlnet_size="small")
    assert comfy.pack["MemoryPreset"].validate_inputs(**fields) is True
    settings, _ = comfy.run("MemoryPreset", **fields)
    assert (settings.cross_view, settings.anchor_count, settings.views_per_chunk) == ("off", 4, 2)
    settings, _ = comfy.run("MemoryPreset", **fields, cross_view="extended", anchor_count=3)
    assert (settings.cross_view, settings.anchor_count) == ("extended", 3)
