"""The pack's custom ComfyUI socket types."""
from comfy_api.latest import io

Settings = io.Custom("GLIMPSE_SETTINGS")
Depth = io.Custom("GLIMPSE_DEPTH")
Cameras = io.Custom("GLIMPSE_CAMERAS")
CrossView = io.Custom("GLIMPSE_CROSS_VIEW")
