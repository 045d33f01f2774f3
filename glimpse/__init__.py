"""Glimpse Enhance's pure library: torch/numpy/Pillow only, never imports ComfyUI."""

__version__ = "0.1.0"
