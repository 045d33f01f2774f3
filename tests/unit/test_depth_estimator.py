"""glimpse.depth_estimator on the tiny Depth Anything fixture (tests/fixtures/depth.py), built into a temporary folder:
offline loading, the preprocessing it reads, and what a call returns."""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from glimpse.depth_estimator import (
    DEFAULT_PREPROCESSING,
    folder_stamp,
    input_size,
    is_estimator_folder,
    load_estimator,
    read_preprocessing,
)

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `python -m pytest` already has it; a bare `pytest` may not
    sys.path.insert(0, str(REPO))

from tests.fixtures.depth import build_depth_anything  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("depth-anything-tiny")
    build_depth_anything(out, "tiny", seed=0)
    return out


@pytest.fixture(scope="module")
def views() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, 48)
    base = torch.stack([ramp[None, :].expand(32, 48), ramp[:, None][:32].expand(32, 48), ramp[:32, None] * ramp], -1)
    return (base[None] + 0.2 * torch.rand(4, 32, 48, 3, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("size, expect", [((64, 64), (518, 518)), ((1024, 512), (1036, 518)),
                                          ((32, 48), (518, 784)), ((3000, 100), (15540, 518))])
def test_input_size_covers_the_target_in_multiples_of_14(size, expect):
    assert input_size(*size, DEFAULT_PREPROCESSING) == expect
    assert input_size(64, 64, {"size": 224, "ensure_multiple_of": 32}) == (224, 224)


def test_folder_is_read_offline_with_its_preprocessing(folder, tmp_path):
    assert is_estimator_folder(folder) and not is_estimator_folder(tmp_path)
    mine = shutil.copytree(folder, tmp_path / "mine")
    (mine / "preprocessor_config.json").write_text(json.dumps({
        **json.loads((folder / "preprocessor_config.json").read_text()), "image_mean": [0.5, 0.5, 0.5],
        "do_pad": True}))
    pre = read_preprocessing(mine)
    assert set(pre) == set(DEFAULT_PREPROCESSING)  # keys the estimator does not use are not taken
    assert pre["image_mean"] == [0.5, 0.5, 0.5] and pre["image_std"] == DEFAULT_PREPROCESSING["image_std"]
    assert read_preprocessing(tmp_path) == DEFAULT_PREPROCESSING
    estimator = load_estimator(mine)
    assert estimator.preprocessing == pre and estimator.relative and not estimator.training
    with pytest.raises(FileNotFoundError, match="no config.json and .safetensors model"):
        load_estimator(tmp_path)


def test_folder_stamp_changes_with_a_file(folder, tmp_path):
    mine = shutil.copytree(folder, tmp_path / "mine")
    before = folder_stamp(mine)
    assert before[0] == str(mine) and "config.json" in dict(before[1])
    (mine / "notes.txt").write_text("replaced")
    assert folder_stamp(mine) != before


def test_estimate_is_per_view_inverse_depth_at_the_view_size(folder, views):
    estimator = load_estimator(folder)
    estimator.preprocessing = {**estimator.preprocessing, "size": {"height": 112, "width": 112}}  # fast on a CPU
    pred = estimator(views)
    assert pred.shape == (4, 32, 48) and pred.dtype == torch.float32 and torch.isfinite(pred).all()
    assert float(pred.std(dim=(1, 2)).min()) > 0  # every view gets a map that varies
    assert torch.allclose(estimator(views[1:3]), pred[1:3], atol=1e-5)  # batches are independent
    assert torch.allclose(estimator(views[..., :3].contiguous()), estimator(torch.cat([views, views[..., :1]], -1)))
    estimator.relative = False  # a metric model's depth is inverted
    assert torch.allclose(estimator(views), 1.0 / pred.clamp_min(1e-6))
