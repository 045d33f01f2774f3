"""The harness itself: the pack loads like a user's install, and `.run` executes core V1 and V3 nodes."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_pack_loads_as_a_linked_custom_node(comfy, pack_node_ids):
    loaded = comfy.nodes.LOADED_MODULE_DIRS["glimpse-enhance"]
    assert os.path.realpath(loaded) == str(REPO)
    assert set(comfy.pack) == pack_node_ids
    assert "GlimpsePrompt" in comfy.pack


def test_repo_root_is_not_on_sys_path(comfy):
    import sys

    assert str(REPO) not in [os.path.realpath(p or os.getcwd()) for p in sys.path]
    assert Path(comfy.nodes.__file__).resolve().parent == Path(os.environ["COMFYUI_PATH"]).expanduser().resolve()


def test_run_executes_v1_and_v3_core_nodes(comfy):
    (latent,) = comfy.run("EmptyLatentImage", width=64, height=64, batch_size=2)  # V1: FUNCTION
    assert latent["samples"].shape == (2, 4, 8, 8)
    assert hasattr(comfy.nodes.NODE_CLASS_MAPPINGS["LatentMultiply"], "GET_SCHEMA")
    (doubled,) = comfy.run("LatentMultiply", samples={"samples": latent["samples"] + 1}, multiplier=2.0)  # V3
    assert float(doubled["samples"].min()) == 2.0 and float(doubled["samples"].max()) == 2.0


def test_run_fails_on_non_finite_outputs_and_unknown_inputs(comfy):
    (latent,) = comfy.run("EmptyLatentImage", width=64, height=64, batch_size=1)
    with pytest.raises(AssertionError, match="non-finite"):
        comfy.run("LatentMultiply", samples=latent, multiplier=float("nan"))
    with pytest.raises(TypeError, match="has no inputs \\['widht'\\]"):
        comfy.run("EmptyLatentImage", widht=64, height=64, batch_size=1)


def test_model_folders_are_registered(comfy, models_dir):
    for sub in models_dir.iterdir():
        if sub.is_dir():
            assert str(sub) in comfy.folder_paths.get_folder_paths(sub.name)


def test_outputs_go_to_the_temporary_base_directory(comfy):
    assert Path(comfy.folder_paths.get_output_directory()).is_relative_to(comfy.base_dir)
