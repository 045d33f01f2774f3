"""The text of MemoryPreset's memory report, from plain numbers (the node gathers them from ComfyUI)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .presets import GIB, MemoryEstimate
from .types import Settings


@dataclass(frozen=True)
class LoadedModel:
    """One model ComfyUI holds: its class name, total weight bytes and the bytes currently on the compute device."""

    name: str
    size: int
    loaded: int


@dataclass(frozen=True)
class MemoryState:
    """A snapshot of the machine. ``peak_allocated`` is None where the device has no allocator statistics (CPU)."""

    device: str
    vram_total: int
    vram_free: int
    ram_total: int
    ram_free: int
    loaded_models: list[LoadedModel] = field(default_factory=list)
    peak_allocated: int | None = None
    anchor_records: list[str] = field(default_factory=list)  # CrossViewAttention's records held now (summaries)

    @property
    def reclaimable(self) -> int:
        """Bytes ComfyUI could free on the device by offloading the models it has loaded."""
        return sum(m.loaded for m in self.loaded_models)


def gib(n: int | float) -> str:
    return f"{n / GIB:.2f} GiB"


def needs_warning(state: MemoryState, estimate: MemoryEstimate) -> bool:
    """True when the plan exceeds what the device has free plus what ComfyUI's own loaded models occupy."""
    return estimate.peak > state.vram_free + state.reclaimable


def format_report(state: MemoryState, settings: Settings, estimate: MemoryEstimate, vae_dtype: str = "fp32") -> str:
    """A plain-text report: device and memory, loaded models, peak since the last report, the preset's estimate."""
    s, e = settings, estimate
    lines = [
        f"device: {state.device}",
        (f"VRAM: {gib(state.vram_free)} free of {gib(state.vram_total)}" if not state.device.startswith("cpu")
         else "compute device is the CPU: its memory is the RAM below"),
        f"RAM: {gib(state.ram_free)} free of {gib(state.ram_total)}",
    ]
    if state.loaded_models:
        lines.append(f"models loaded by ComfyUI ({len(state.loaded_models)}):")
        lines += [f"  {m.name}: {gib(m.size)} ({gib(m.loaded)} on device)" for m in state.loaded_models]
    else:
        lines.append("models loaded by ComfyUI: none")
    lines.append("peak allocated since last report: "
                 + (gib(state.peak_allocated) if state.peak_allocated is not None else "n/a (no CUDA device)"))
    lines += [
        f"preset {s.preset}: {s.steps} steps, strength {s.strength:g}, ControlNet {s.controlnet_strength:g} "
        f"({s.controlnet_size}), {e.width}x{e.height}, {s.views_per_chunk} view(s) per chunk, UNet {s.unet_dtype}, "
        + (f"tiled VAE {s.vae_tile_size} px" if s.tiled_vae else "untiled VAE"),
        f"estimate (VAE {vae_dtype}): {gib(e.peak)} at {e.peak_phase}; weights {gib(e.weights)} (UNet "
        f"{gib(e.unet_weights)}, ControlNet {gib(e.controlnet_weights)}, VAE {gib(e.vae_weights)}, text encoders "
        f"{gib(e.clip_weights)}), reserve {gib(e.overhead)}; phases: "
        + ", ".join(f"{k} {gib(v)}" for k, v in e.phases().items()),
    ]
    if s.cross_view != "off":
        lines.append(f"cross-view attention {s.cross_view}: {s.anchor_count} anchors sampled as one batch "
                     f"({gib(e.anchor_activations)} of activations, text encoders moved out), each view attends to "
                     f"{s.anchor_neighbours}; anchor record {gib(e.anchor_record)} "
                     + ("on the GPU (counted in every phase)" if e.record_on_gpu else "in CPU RAM (not on the GPU)"))
    lines += [f"anchor record held: {r}" for r in state.anchor_records]
    if needs_warning(state, e):
        lines.append(f"WARNING: the estimate {gib(e.peak)} exceeds the {gib(state.vram_free + state.reclaimable)} "
                     "ComfyUI can use (free + its own loaded models): expect offloading or out-of-memory; choose "
                     "t4_minimal, lower the resolution or views per chunk, enable tiled VAE, or start ComfyUI with "
                     "--lowvram")
    return "\n".join(lines)
