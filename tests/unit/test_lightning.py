"""The strength-to-steps rule and the file-name facts of glimpse.lightning, and the reference sgm_uniform grid."""
import sys
from pathlib import Path

import pytest
import torch

from glimpse.lightning import is_x0_name, plan_img2img, resolve_steps, sampling_for, steps_from_name

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `python -m pytest` already has it; a bare `pytest` may not
    sys.path.insert(0, str(REPO))

from tests.fixtures.sigmas import img2img_sigmas, sdxl_discrete_sigmas, sgm_uniform_sigmas  # noqa: E402


@pytest.mark.parametrize(("steps", "strength", "executed"), [
    (1, 0.01, 1), (1, 0.5, 1), (1, 1.0, 1),
    (2, 0.01, 1), (2, 0.5, 1), (2, 0.74, 1), (2, 0.75, 2), (2, 1.0, 2),
    (4, 0.01, 1), (4, 0.25, 1), (4, 0.5, 2), (4, 0.625, 3), (4, 0.65, 3), (4, 0.75, 3), (4, 1.0, 4),
    (8, 0.01, 1), (8, 0.3125, 3), (8, 0.5, 4), (8, 0.75, 6), (8, 1.0, 8),
])
def test_plan_runs_the_last_rounded_steps_never_zero(steps, strength, executed):
    plan = plan_img2img(steps, strength)
    assert plan.executed == executed
    assert plan.start_at_step == steps - executed
    assert plan.steps == steps


@pytest.mark.parametrize("strength", [0.0, -0.1, 1.0001, 2.0, float("nan")])
def test_strength_outside_zero_one_raises(strength):
    with pytest.raises(ValueError, match=r"outside \(0, 1\]"):
        plan_img2img(4, strength)


@pytest.mark.parametrize("steps", [0, 3, 5, 16, 2.5])
def test_steps_outside_lightning_counts_raise(steps):
    with pytest.raises(ValueError, match="not an SDXL-Lightning step count"):
        plan_img2img(steps, 0.5)


def test_discrete_table_is_sdxl_schedule():
    table = sdxl_discrete_sigmas()
    assert table.shape == (1000,)
    assert torch.all(table[1:] > table[:-1])
    assert table[0].item() == pytest.approx(0.02916, rel=1e-3)
    assert table[-1].item() == pytest.approx(14.6146, rel=1e-4)


def test_sgm_uniform_grid_timesteps():
    table = sdxl_discrete_sigmas()
    sig = sgm_uniform_sigmas(table, 4)
    assert sig.shape == (5,)
    assert sig[-1].item() == 0.0
    assert sig[0].item() == pytest.approx(table[999].item(), rel=1e-6)
    # timesteps 999, 749.25, 499.5, 249.75: log-sigma interpolation between the neighbouring table entries
    for value, t in zip(sig[1:4].tolist(), [749.25, 499.5, 249.75]):
        lo, w = int(t), t - int(t)
        expected = torch.exp((1 - w) * table[lo].log() + w * table[lo + 1].log()).item()
        assert value == pytest.approx(expected, rel=1e-6)
    assert torch.all(sig[:-1][1:] < sig[:-1][:-1])


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_img2img_sigmas_are_a_tail_of_the_full_grid(steps):
    table = sdxl_discrete_sigmas()
    full = sgm_uniform_sigmas(table, steps)
    for strength in (0.1, 0.3, 0.5, 0.65, 0.75, 1.0):
        plan = plan_img2img(steps, strength)
        sig = img2img_sigmas(table, steps, strength)
        assert sig.shape == (plan.executed + 1,)
        assert torch.equal(sig, full[plan.start_at_step:])
        assert sig[-1].item() == 0.0


@pytest.mark.parametrize(("name", "steps"), [
    ("sdxl_lightning_4step_lora.safetensors", 4),
    ("sdxl_lightning_1step_unet_x0.safetensors", 1),
    ("sdxl_lightning_2step_unet.safetensors", 2),
    ("loras/sub dir/sdxl_lightning_8step_lora.safetensors", 8),
    ("sdxl_lightning_8step.safetensors", 8),
    ("Hyper-SDXL-8steps-lora.safetensors", 8),
    ("SDXL_Lightning_4-Step.safetensors", 4),
    ("sd_xl_base_1.0.safetensors", None),
    ("mix_8step_4step.safetensors", None),  # two different counts: no inference
    ("8stepper_4step.safetensors", 4),
    ("my_12steps_thing.safetensors", 12),
])
def test_steps_from_name(name, steps):
    assert steps_from_name(name) == steps


def test_resolve_steps_infers_checks_and_names_the_file():
    assert resolve_steps("sdxl_lightning_4step_lora.safetensors", None) == 4
    assert resolve_steps("sdxl_lightning_4step_lora.safetensors", 4) == 4
    assert resolve_steps("sd_xl_base_1.0.safetensors", 2) == 2
    with pytest.raises(ValueError, match=r"steps 2 contradicts sdxl_lightning_4step_lora\.safetensors, a 4-step"):
        resolve_steps("sdxl_lightning_4step_lora.safetensors", 2)
    with pytest.raises(ValueError, match=r"preset speed 2 contradicts"):
        resolve_steps("sdxl_lightning_4step_lora.safetensors", 2, source="preset speed")
    with pytest.raises(ValueError, match=r"cannot tell the Lightning step count of sd_xl_base_1\.0\.safetensors"):
        resolve_steps("sd_xl_base_1.0.safetensors", None)
    with pytest.raises(ValueError, match=r"my_12steps\.safetensors says 12 steps"):
        resolve_steps("my_12steps.safetensors", None)


def test_x0_sampling():
    assert is_x0_name("sdxl_lightning_1step_unet_x0.safetensors")
    assert is_x0_name("sdxl_lightning_1step_x0.safetensors")
    assert not is_x0_name("sdxl_lightning_4step_lora.safetensors")
    assert not is_x0_name("xx0y_4step.safetensors")
    assert sampling_for("sdxl_lightning_1step_unet_x0.safetensors", 1) == "x0"
    assert sampling_for("sd_xl_base_1.0.safetensors", 1) == "x0"
    assert sampling_for(None, 1) == "x0"
    for n in (2, 4, 8):
        assert sampling_for(f"sdxl_lightning_{n}step_lora.safetensors", n) == "eps"
