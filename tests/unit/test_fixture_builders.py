"""The pure parts of tests/fixtures: the streaming safetensors writer, fill rules, cache keys, LoRA names, catalog."""
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `python -m pytest` already has it; a bare `pytest` may not
    sys.path.insert(0, str(REPO))

from tests.fixtures import cache, catalog  # noqa: E402
from tests.fixtures.tensors import TensorSpec, default_init, fan_in_std, read_header, write_safetensors  # noqa: E402


def small_specs():
    return {
        "b.weight": TensorSpec((8, 4, 3, 3)),
        "a.norm.weight": TensorSpec((8,), init="ones"),
        "a.norm.bias": TensorSpec((8,), torch.bfloat16, init="zeros"),
        "pos": TensorSpec((1, 77), torch.int64, init="arange"),
        "scale": TensorSpec((), torch.float32, init="const", value=4.5),
    }


def test_streamed_file_reads_back_with_the_safetensors_library(tmp_path):
    path = tmp_path / "x.safetensors"
    size = write_safetensors(path, small_specs(), seed=3, metadata={"k": "v"})
    sd = load_file(path)
    assert size == path.stat().st_size
    assert sd["b.weight"].shape == (8, 4, 3, 3) and sd["b.weight"].dtype == torch.float16
    assert 0.01 < sd["b.weight"].float().std() < 0.03
    assert torch.equal(sd["a.norm.weight"], torch.ones(8, dtype=torch.float16))
    assert sd["a.norm.bias"].dtype == torch.bfloat16 and not sd["a.norm.bias"].any()
    assert torch.equal(sd["pos"], torch.arange(77)[None])
    assert sd["scale"].shape == () and sd["scale"].item() == 4.5
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"k": "v"}
    assert not list(tmp_path.glob("*.partial"))


def test_values_depend_on_seed_and_key_only(tmp_path):
    one = {"w": TensorSpec((16, 16)), "other": TensorSpec((4, 4))}
    two = {"w": TensorSpec((16, 16))}
    write_safetensors(tmp_path / "1.safetensors", one, seed=1)
    write_safetensors(tmp_path / "2.safetensors", two, seed=1)
    write_safetensors(tmp_path / "3.safetensors", two, seed=2)
    a, b, c = (load_file(tmp_path / f"{i}.safetensors")["w"] for i in (1, 2, 3))
    assert torch.equal(a, b) and not torch.equal(a, c)
    shared = {"x": TensorSpec((16, 16), seed_name="w")}
    write_safetensors(tmp_path / "4.safetensors", shared, seed=1)
    assert torch.equal(load_file(tmp_path / "4.safetensors")["x"], a)


def test_header_is_aligned_and_sorted(tmp_path):
    path = tmp_path / "x.safetensors"
    write_safetensors(path, small_specs(), seed=0)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert n % 8 == 0
    header = read_header(path)
    keys = list(header)
    assert keys == sorted(keys)
    assert header["pos"]["dtype"] == "I64" and header["a.norm.bias"]["dtype"] == "BF16"
    end = max(v["data_offsets"][1] for v in header.values())
    assert 8 + n + end == len(raw)


@pytest.mark.parametrize("key,shape,init", [
    ("x.proj.bias", (320,), "zeros"),
    ("x.norm1.weight", (320,), "ones"),
    ("x.attn.to_q.weight", (320, 320), "normal"),
    ("x.conv.weight", (320, 4, 3, 3), "normal"),
    ("emb.token_embedding.weight", (49408, 768), "normal"),
])
def test_default_init_rules(key, shape, init):
    spec = default_init(key, shape)
    assert spec.init == init and spec.shape == shape and spec.dtype == torch.float16


def test_fan_in_std():
    assert fan_in_std((320, 4, 3, 3)) == pytest.approx(1 / 6)
    assert fan_in_std((10, 100)) == pytest.approx(0.1)


def test_unknown_init_and_dtype_are_refused(tmp_path):
    with pytest.raises(ValueError, match="bad.*unknown init"):
        write_safetensors(tmp_path / "x.safetensors", {"bad": TensorSpec((2,), init="uniform")}, 0)
    with pytest.raises(ValueError, match="bad: dtype"):
        write_safetensors(tmp_path / "y.safetensors", {"bad": TensorSpec((2,), torch.complex64)}, 0)
    assert not list(tmp_path.iterdir())


def test_cache_key_follows_params_and_source(tmp_path):
    src = tmp_path / "builder.py"
    src.write_text("A = 1\n")
    k1 = cache.fixture_key("f", {"size": "vega"}, [src])
    assert k1 == cache.fixture_key("f", {"size": "vega"}, [src]) and len(k1) == 12
    assert k1 != cache.fixture_key("f", {"size": "full"}, [src])
    assert k1 != cache.fixture_key("g", {"size": "vega"}, [src])
    src.write_text("A = 2\n")
    assert k1 != cache.fixture_key("f", {"size": "vega"}, [src])


def test_cached_build_builds_once_and_never_leaves_partial_folders(tmp_path):
    src = tmp_path / "b.py"
    src.write_text("")
    calls = []

    def build(out):
        calls.append(out)
        (out / "model.safetensors").write_bytes(b"x")

    folder, built = cache.cached_build("f", {"a": 1}, [src], build, root=tmp_path / "cache")
    again, built_again = cache.cached_build("f", {"a": 1}, [src], build, root=tmp_path / "cache")
    assert (built, built_again) == (True, False) and folder == again and len(calls) == 1
    assert (folder / "model.safetensors").read_bytes() == b"x"
    assert json.loads((folder / "fixture.json").read_text())["params"] == {"a": 1}

    def broken(out):
        (out / "half").write_bytes(b"")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cache.cached_build("f", {"a": 2}, [src], broken, root=tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")) == [folder.name]


def test_link_replaces_an_existing_link(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("a")
    b.write_text("b")
    dest = tmp_path / "models" / "loras" / "x.safetensors"
    cache.link(a, dest)
    cache.link(b, dest)
    assert dest.read_text() == "b" and a.read_text() == "a"


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    assert cache.cache_root() == tmp_path


def test_lora_names_are_kohya_names_of_diffusers_modules():
    from tests.fixtures.sdxl import lora_name

    assert lora_name("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight") == \
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    with pytest.raises(ValueError):
        lora_name("conv_in.bias")


def test_catalog_official_names_and_both_sets_alike():
    for size, fixtures in catalog.SETS.items():
        targets = sorted(t for f in fixtures for ts in f.links.values() for t in ts)
        assert len(targets) == len(set(targets)), f"{size}: two fixtures link the same name"
        assert "checkpoints/sd_xl_base_1.0.safetensors" in targets
        assert "diffusion_models/sdxl_lightning_1step_unet_x0.safetensors" in targets
        assert "diffusion_models/sdxl_lightning_4step_unet.safetensors" in targets
        assert {f"loras/sdxl_lightning_{n}step_lora.safetensors" for n in (2, 4, 8)} <= set(targets)
        assert {"controlnet/controlnet-depth-sdxl-1.0.safetensors",
                "controlnet/controlnet-depth-sdxl-1.0-small.safetensors",
                "controlnet/t2i-adapter-depth-midas-sdxl-1.0.safetensors",
                "controlnet/controlnet-union-sdxl-1.0_promax.safetensors",
                "depth_estimators/depth-anything-small/config.json"} <= set(targets)
        for f in fixtures:
            assert all(p.is_file() for p in f.source_paths()), f.name
    vega = {t for f in catalog.SETS["vega"] for ts in f.links.values() for t in ts}
    full = {t for f in catalog.SETS["full"] for ts in f.links.values() for t in ts}
    assert vega == full  # a workflow runs on either set unchanged


def test_command_lists_without_building(capsys, tmp_path, monkeypatch):
    from tests.fixtures.__main__ import main

    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    assert main(["--list", "--size", "full"]) == 0
    out = capsys.readouterr().out
    assert "sdxl-full-checkpoint" in out and str(tmp_path) in out
    assert not any(tmp_path.iterdir())
    with pytest.raises(SystemExit):
        main([])


def test_prune_deletes_only_stale_builds_of_known_fixtures(tmp_path, monkeypatch):
    from tests.fixtures.__main__ import prune

    f = catalog.SETS["vega"][0]
    current = tmp_path / f"{f.name}-{cache.fixture_key(f.name, f.params, f.source_paths())}"
    stale = tmp_path / f"{f.name}-000000000000"
    other = tmp_path / "someone-elses-thing-123"
    for p in (current, stale, other):
        p.mkdir()
    assert prune(tmp_path) == [stale]
    assert current.is_dir() and other.is_dir() and not stale.exists()


def test_command_names_the_missing_comfyui_before_building(tmp_path, monkeypatch, caplog):
    from tests.fixtures.__main__ import main

    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "no-comfy"))
    assert main(["--models-dir", str(tmp_path / "models"), "--only", "sdxl-vega-checkpoint"]) == 2
    assert "no-comfy has no comfy/sd.py: set COMFYUI_PATH" in caplog.text
    assert not (tmp_path / "models").exists()


def test_command_refuses_unknown_fixture_names(tmp_path, monkeypatch, caplog):
    from tests.fixtures.__main__ import main

    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    assert main(["--models-dir", str(tmp_path / "models"), "--only", "sdxl-huge"]) == 2
    assert "no fixture named ['sdxl-huge'] in the vega set" in caplog.text
