"""Glimpse Enhance: a ComfyUI node pack that refines renders of a coarse 3D reconstruction into sharp, consistent
views."""


async def comfy_entrypoint():
    from .nodes import GlimpseExtension

    return GlimpseExtension()
