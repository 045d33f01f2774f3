"""LightningLoader: an SDXL base plus an SDXL-Lightning distillation, with img2img sigmas on the distilled grid.

The node validates its inputs (file present, SDXL-shaped by safetensors header, step count consistent with the file
name, strength in (0, 1]) and then *expands* into core loader nodes, so that the executor caches and offloads every
model exactly as in a hand-wired core graph, and changing the strength re-runs only the two sigma nodes:

    GlimpseCheckpointLoader (comfy.sd.load_checkpoint_guess_config: CLIP, VAE, and the UNet unless a Lightning UNet
      replaces it) -> LoraLoaderModelOnly (LoRA source) | UNETLoader (UNet source) -> ModelSamplingDiscrete (eps / x0)
      -> BasicScheduler (sgm_uniform, N steps) -> SplitSigmas (step k): low_sigmas are the img2img sigmas.

KSamplerAdvanced equivalent: steps = N, start_at_step = k, end_at_step = N, add_noise enable, sampler euler, scheduler
sgm_uniform, cfg 1.0. (Never KSampler's denoise: it moves the timesteps off the grid the model was distilled on.)
"""
from __future__ import annotations

import logging

import torch

import comfy.sd
import folder_paths
from comfy_api.latest import io
from comfy_execution.graph_utils import GraphBuilder

from ..glimpse.lightning import (
    LIGHTNING_STEPS,
    check_strength,
    plan_img2img,
    resolve_steps,
    sampling_for,
    steps_from_name,
)
from ..glimpse.model_files import check_sdxl_lora, check_sdxl_unet, read_safetensors_header
from ..glimpse.presets import UNET_DTYPES
from ..glimpse.types import Settings as SettingsValue
from .types import Settings

NONE = "none"
AUTO = "auto"
SOURCE_FOLDERS = ("loras", "diffusion_models")  # combo entries read "<folder>/<file name>"
_FP8 = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3fn_fast": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def _safetensors(folder: str) -> list[str]:
    if folder not in folder_paths.folder_names_and_paths:
        return []
    return [f for f in folder_paths.get_filename_list(folder) if f.lower().endswith(".safetensors")]


def _source_options() -> list[str]:
    return [NONE] + [f"{folder}/{name}" for folder in SOURCE_FOLDERS for name in _safetensors(folder)]


def _split_source(lightning_file: str) -> tuple[str | None, str | None]:
    """("loras" | "diffusion_models" | None, file name | None) of a lightning_file combo entry."""
    if lightning_file in (None, "", NONE):
        return None, None
    folder, sep, name = lightning_file.partition("/")
    if not sep or folder not in SOURCE_FOLDERS or not name:
        raise ValueError(f"lightning_file {lightning_file!r} must be 'none' or 'loras/<file>' or "
                         "'diffusion_models/<file>'")
    return folder, name


def _full_path(folder: str, name: str, what: str) -> str:
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise FileNotFoundError(f"{what} {name} is not in the {folder} folder "
                                f"({', '.join(folder_paths.get_folder_paths(folder))})")
    if not name.lower().endswith(".safetensors"):
        raise ValueError(f"{what} {name} is not a .safetensors file; only safetensors files are loaded")
    return path


def _requested_steps(steps: str | int | None) -> int | None:
    if steps in (None, AUTO):
        return None
    if str(steps) not in {str(n) for n in LIGHTNING_STEPS}:
        raise ValueError(f"steps {steps!r} must be auto or one of {', '.join(map(str, LIGHTNING_STEPS))}")
    return int(steps)


def check_inputs(ckpt_name: str, lightning_file: str, steps: str | int | None, strength: float,
                 source: str = "steps", steps_known: bool = True) -> tuple[int | None, str, str | None, str | None]:
    """Validate everything that can be checked before loading: return (N, sampling, folder, file name).

    Reads safetensors headers only. Raises FileNotFoundError / ValueError naming the file. ``steps_known`` False
    (prompt validation, where a connected MemoryPreset may still supply the count) lets an unstated count through as
    N = None instead of raising.
    """
    check_strength(strength)
    ckpt_path = _full_path("checkpoints", ckpt_name, "checkpoint")
    folder, name = _split_source(lightning_file)
    if folder is not None:
        path = _full_path(folder, name, "Lightning LoRA" if folder == "loras" else "Lightning UNet")
        header = read_safetensors_header(path)
        if folder == "loras":
            check_sdxl_lora(header, name)
        else:
            check_sdxl_unet(header, name, role="UNet")
    check_sdxl_unet(read_safetensors_header(ckpt_path), ckpt_name, role="checkpoint")
    named_file = name if folder is not None else ckpt_name
    requested = _requested_steps(steps)
    if requested is None and not steps_known and steps_from_name(named_file) is None:
        return None, "eps", folder, name
    n = resolve_steps(named_file, requested, source=source)
    return n, sampling_for(named_file, n), folder, name


class GlimpseCheckpointLoader(io.ComfyNode):
    """ComfyUI's checkpoint loader with a UNet weight dtype and the option to skip the UNet (Lightning UNet source)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GlimpseCheckpointLoader",
            display_name="Load SDXL Checkpoint (Glimpse)",
            category="Glimpse",
            description="Loads a checkpoint with ComfyUI's own loader (comfy.sd.load_checkpoint_guess_config), with "
                        "the UNet weight dtype of UNETLoader and the option to skip the UNet when another one replaces "
                        "it. LightningLoader uses it inside; it works on its own too.",
            inputs=[
                io.Combo.Input("ckpt_name", options=_safetensors("checkpoints"),
                               tooltip="The SDXL checkpoint (checkpoints folder)."),
                io.Combo.Input("weight_dtype", options=list(UNET_DTYPES), default="default",
                               tooltip="UNet weight storage dtype, as in core 'Load Diffusion Model': default or fp8 "
                                       "(halves UNet memory, computed in fp16/bf16)."),
                io.Boolean.Input("load_unet", default=True,
                                 tooltip="Off: load only CLIP and VAE (MODEL output is empty), for when a separate "
                                         "UNet file replaces the checkpoint's."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The checkpoint's UNet (empty when load_unet is off)."),
                io.Clip.Output(display_name="CLIP", tooltip="The checkpoint's text encoders."),
                io.Vae.Output(display_name="VAE", tooltip="The checkpoint's VAE."),
            ],
        )

    @classmethod
    def execute(cls, ckpt_name: str, weight_dtype: str, load_unet: bool) -> io.NodeOutput:
        path = _full_path("checkpoints", ckpt_name, "checkpoint")
        options = {"dtype": _FP8[weight_dtype]} if weight_dtype in _FP8 else {}
        if weight_dtype == "fp8_e4m3fn_fast":
            options["fp8_optimizations"] = True
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(
            path, output_vae=True, output_clip=True, output_model=load_unet,
            embedding_directory=folder_paths.get_folder_paths("embeddings"), model_options=options)[:3]
        return io.NodeOutput(model, clip, vae)


class LightningLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LightningLoader",
            display_name="Lightning Loader (Glimpse)",
            category="Glimpse",
            description="SDXL base + SDXL-Lightning (LoRA, full UNet, or an all-in-one checkpoint) for img2img on the "
                        "distilled N-step grid: strength s runs the last max(1, round(N*s)) of the N sgm_uniform "
                        "steps. "
                        "Use SIGMAS with SamplerCustomAdvanced (euler, cfg 1.0), or KSamplerAdvanced with steps = N, "
                        "start_at_step = k, end_at_step = N, euler, sgm_uniform, cfg 1.0. Loads through core loader "
                        "nodes, so models are cached and offloaded by ComfyUI; files are checked to be SDXL-shaped "
                        "before anything loads.",
            enable_expand=True,
            inputs=[
                io.Combo.Input("ckpt_name", options=_safetensors("checkpoints"),
                               tooltip="SDXL base checkpoint (checkpoints folder); gives CLIP and VAE, and the UNet "
                                       "unless a Lightning UNet replaces it. May be a Lightning all-in-one checkpoint "
                                       "(then lightning_file is none)."),
                io.Combo.Input("lightning_file", options=_source_options(), default=NONE,
                               tooltip="The Lightning distillation: loras/<file> (a LoRA applied to the base UNet at "
                                       "strength 1), diffusion_models/<file> (a full UNet that replaces the base "
                                       "UNet), or none when the checkpoint already is Lightning. Must be SDXL-shaped."),
                io.Combo.Input("steps", options=[AUTO] + [str(n) for n in LIGHTNING_STEPS], default=AUTO,
                               tooltip="N, the step count the file was distilled for (KSamplerAdvanced steps). auto "
                                       "reads it from the file name (sdxl_lightning_4step_lora -> 4); a number that "
                                       "contradicts the name is an error. 1-step uses x0 sampling."),
                io.Float.Input("strength", default=0.75, min=0.0, max=1.0, step=0.01,
                               tooltip="How much of the render to redo, in (0, 1]: runs the last max(1, round(N * "
                                       "strength)) of the N grid steps, i.e. skips k = N - that many "
                                       "(KSamplerAdvanced start_at_step = k). Ignored when settings are connected."),
                Settings.Input("settings", optional=True,
                               tooltip="GLIMPSE_SETTINGS from MemoryPreset: when connected, its strength and UNet "
                                       "dtype are used, and its step count must agree with the file (the steps "
                                       "widget still wins when it is not auto)."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL",
                                tooltip="The Lightning UNet with ModelSamplingDiscrete eps (x0 for 1-step)."),
                io.Clip.Output(display_name="CLIP", tooltip="The checkpoint's text encoders."),
                io.Vae.Output(display_name="VAE", tooltip="The checkpoint's VAE."),
                io.Sigmas.Output(display_name="SIGMAS",
                                 tooltip="img2img sigmas for SamplerCustomAdvanced: ComfyUI's N-step sgm_uniform "
                                         "sigmas from step k on (executed steps + 1 values, ending in 0)."),
                io.Int.Output(display_name="start_at_step",
                              tooltip="k, the grid steps skipped: KSamplerAdvanced start_at_step (end_at_step = N)."),
                io.Int.Output(display_name="steps", tooltip="N, the distilled step count: KSamplerAdvanced steps."),
            ],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name: str, lightning_file: str, steps: str, strength: float) -> bool | str:
        try:
            check_inputs(ckpt_name, lightning_file, steps, strength, steps_known=False)
        except (ValueError, FileNotFoundError) as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, ckpt_name: str, lightning_file: str, steps: str, strength: float,
                settings: SettingsValue | None = None) -> io.NodeOutput:
        unet_dtype = "default"
        requested, source = steps, "steps"
        if settings is not None:
            strength, unet_dtype = settings.strength, settings.unet_dtype
            if steps in (None, AUTO):
                requested, source = settings.steps, f"preset {settings.preset} steps"
        n, sampling, folder, name = check_inputs(ckpt_name, lightning_file, requested, strength, source=source)
        plan = plan_img2img(n, strength)
        logging.info("LightningLoader: %s + %s, %d-step grid (%s), strength %g runs %d step(s) from step %d",
                     ckpt_name, name or "no Lightning file", n, sampling, strength, plan.executed, plan.start_at_step)

        g = GraphBuilder()
        ckpt = g.node("GlimpseCheckpointLoader", ckpt_name=ckpt_name, weight_dtype=unet_dtype,
                      load_unet=folder != "diffusion_models")
        model = ckpt.out(0)
        if folder == "loras":
            model = g.node("LoraLoaderModelOnly", model=model, lora_name=name, strength_model=1.0).out(0)
        elif folder == "diffusion_models":
            model = g.node("UNETLoader", unet_name=name, weight_dtype=unet_dtype).out(0)
        model = g.node("ModelSamplingDiscrete", model=model, sampling=sampling, zsnr=False).out(0)
        full = g.node("BasicScheduler", model=model, scheduler="sgm_uniform", steps=n, denoise=1.0)
        split = g.node("SplitSigmas", sigmas=full.out(0), step=plan.start_at_step)
        return io.NodeOutput(model, ckpt.out(1), ckpt.out(2), split.out(1), plan.start_at_step, n,
                             expand=g.finalize())
