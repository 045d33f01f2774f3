"""GlimpsePrompt in-process, on the Vega fixture's real SDXL CLIP (CLIP-L + bigG)."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from glimpse.types import Cameras

SAMPLE_CAMERAS = Path(__file__).resolve().parents[2] / "samples" / "fox" / "cameras.json"  # SyncDreamer's 16


CHECKPOINT = "sd_xl_base_1.0.safetensors"  # the official name; the fixture set links the Vega-layout model under it


def syncdreamer_cameras() -> Cameras:
    views = json.loads(SAMPLE_CAMERAS.read_text())["views"]
    t = lambda key: torch.tensor([v[key] for v in views], dtype=torch.float64)  # noqa: E731
    return Cameras(intrinsics=t("K"), world_to_camera=t("world_to_camera"), camera_to_world=t("camera_to_world"),
                   azimuth_deg=t("azimuth_deg"), elevation_deg=t("elevation_deg"), image_size=(256, 256))


@pytest.fixture(scope="module")
def vega(comfy):
    model, clip, vae = comfy.run("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    yield SimpleNamespace(model=model, clip=clip, vae=vae)
    del model, clip, vae
    comfy.free()


@pytest.fixture
def prompt_folder(comfy) -> Path:
    folder = Path(comfy.folder_paths.get_folder_paths("glimpse_prompts")[0])
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def counting_clip(clip):
    """The real CLIP, with its encode call and tokenized texts recorded."""
    spy = clip.clone()
    spy.texts, spy.encodes = [], 0
    tokenize, encode = spy.tokenize, spy.encode_from_tokens_scheduled

    def counted_tokenize(text, *args, **kwargs):
        spy.texts.append(text)
        return tokenize(text, *args, **kwargs)

    def counted_encode(tokens, *args, **kwargs):
        spy.encodes += 1
        return encode(tokens, *args, **kwargs)

    spy.tokenize, spy.encode_from_tokens_scheduled = counted_tokenize, counted_encode
    return spy


def test_vega_fixture_is_detected_as_segmind_vega(vega, fixture_size):
    if fixture_size != "vega":
        pytest.skip("the full-size process loads the SDXL base layout")
    assert type(vega.model.model.model_config).__name__ == "Segmind_Vega"
    assert type(vega.model.model).__name__ == "SDXL"


def test_encodes_sdxl_conditioning_once_each(comfy, vega):
    clip = counting_clip(vega.clip)
    pos, neg, pos_text, neg_text = comfy.run("GlimpsePrompt", clip=clip, template="object", subject="a low-poly fox",
                                             extra="orange fur")
    assert pos_text.startswith("a low-poly fox, single object,") and pos_text.endswith(", orange fur")
    assert "blurry" in neg_text
    for cond in (pos, neg):
        assert len(cond) == 1
        assert cond[0][0].shape == (1, 77, 2048)
        assert cond[0][1]["pooled_output"].shape == (1, 1280)
    assert clip.encodes == 2 and clip.texts == [neg_text, pos_text]
    (ref,) = comfy.run("CLIPTextEncode", clip=vega.clip, text=pos_text)
    assert torch.equal(pos[0][0], ref[0][0]) and torch.equal(pos[0][1]["pooled_output"], ref[0][1]["pooled_output"])


def test_cameras_give_one_conditioning_per_view_in_view_order(comfy, vega):
    clip = counting_clip(vega.clip)
    cams = syncdreamer_cameras()
    pos, neg, pos_text, neg_text = comfy.run("GlimpsePrompt", clip=clip, template="default", subject="a fox",
                                             extra="", cameras=cams)
    lines = pos_text.split("\n")
    assert len(lines) == 16
    assert lines[0].endswith(", front view") and lines[8].endswith(", back view") and lines[4].endswith(", side view")
    assert pos[0][0].shape == (16, 77, 2048) and pos[0][1]["pooled_output"].shape == (16, 1280)
    assert neg[0][0].shape == (16, 77, 2048) and neg[0][1]["pooled_output"].shape == (16, 1280)
    # Encoded once per distinct text: three direction texts and the negative, not 17 encodes.
    assert clip.encodes == 4 and sorted(clip.texts) == sorted({*lines, neg_text})
    for view in (0, 4, 8):
        (ref,) = comfy.run("CLIPTextEncode", clip=vega.clip, text=lines[view])
        assert torch.equal(pos[0][0][view], ref[0][0][0])
        assert torch.equal(pos[0][1]["pooled_output"][view], ref[0][1]["pooled_output"][0])
    assert torch.equal(pos[0][0][0], pos[0][0][1]) and not torch.equal(pos[0][0][0], pos[0][0][8])


def test_chunks_of_one_set_reuse_the_encodings(comfy, vega):
    """LoadViewSet hands cameras over in chunks and ComfyUI runs the node once per chunk: the texts are still
    encoded once for the set, and each chunk gets the conditioning of its own views."""
    from glimpse.cameras import select_cameras

    clip = counting_clip(vega.clip)
    cams = syncdreamer_cameras()
    chunks = [comfy.run("GlimpsePrompt", clip=clip, template="default", subject="a fox", extra="",
                        cameras=select_cameras(cams, range(start, start + 4))) for start in range(0, 16, 4)]
    assert clip.encodes == 4
    (whole, *_) = comfy.run("GlimpsePrompt", clip=clip, template="default", subject="a fox", extra="", cameras=cams)
    assert clip.encodes == 4
    assert torch.equal(torch.cat([c[0][0][0] for c in chunks]), whole[0][0])


def test_front_azimuth_moves_the_front(comfy, vega):
    *_, pos_text, _ = comfy.run("GlimpsePrompt", clip=vega.clip, template="default", subject="", extra="",
                                cameras=syncdreamer_cameras(), front_azimuth=180.0)
    lines = pos_text.split("\n")
    assert lines[8].endswith("front view") and lines[0].endswith("back view")


def test_empty_subject_is_allowed(comfy, vega):
    pos, _, pos_text, _ = comfy.run("GlimpsePrompt", clip=vega.clip, template="product", subject="", extra="")
    assert pos_text.startswith("studio product shot,")
    assert pos[0][0].shape == (1, 77, 2048)


def test_user_template_without_subject_slot_is_allowed(comfy, vega, prompt_folder):
    (prompt_folder / "plain.json").write_text(
        json.dumps({"templates": {"plain": {"positive": "clean render", "negative": "smear"}}}), encoding="utf-8")
    _, _, pos_text, neg_text = comfy.run("GlimpsePrompt", clip=vega.clip, template="plain", subject="a fox",
                                         extra="", user_templates="plain.json")
    assert (pos_text, neg_text) == ("a fox, clean render", "smear")


def test_unknown_template_is_a_clear_error(comfy, vega):
    node = comfy.pack["GlimpsePrompt"]
    message = node.validate_inputs(template="nope")
    assert message.startswith("unknown prompt template 'nope' (built-in: default, photorealistic,")
    with pytest.raises(ValueError, match="unknown prompt template 'nope'"):
        comfy.run(node, clip=vega.clip, template="nope", subject="", extra="")


@pytest.mark.parametrize(
    "name, data, expected",
    [
        ("broken.json", b'{"templates": {"a": {"positive": "x",}}}',
         "broken.json is not valid JSON: Expecting property name enclosed in double quotes at line 1 column 38"),
        ("latin1.json", '{"templates": {"caf\xe9": {"positive": "x"}}}'.encode("latin-1"),
         "latin1.json is not UTF-8 text (byte 0xe9 at offset 19); save it as UTF-8"),
        ("typo.json", b'{"templates": {"a": {"positve": "x"}}}', "template 'a' has unknown keys ['positve']"),
    ],
)
def test_malformed_user_template_file_names_the_file_and_problem(comfy, vega, prompt_folder, name, data, expected):
    (prompt_folder / name).write_bytes(data)
    node = comfy.pack["GlimpsePrompt"]
    message = node.validate_inputs(template="default", user_templates=name)
    assert str(prompt_folder / name) in message and expected in message
    with pytest.raises(ValueError) as e:
        comfy.run(node, clip=vega.clip, template="default", subject="", extra="", user_templates=name)
    assert str(e.value) == message


def test_user_template_file_outside_the_folder_is_reported(comfy):
    message = comfy.pack["GlimpsePrompt"].validate_inputs(template="default", user_templates="missing.json")
    assert "user template file 'missing.json' is not in the glimpse_prompts model folder" in message


def test_each_view_is_sampled_with_its_own_conditioning(comfy, vega):
    """Two views (front, back) in one batch sample like each view alone with its own prompt."""
    cams = syncdreamer_cameras()
    pick = torch.tensor([0, 8])
    two = Cameras(intrinsics=cams.intrinsics[pick], world_to_camera=cams.world_to_camera[pick],
                  camera_to_world=cams.camera_to_world[pick], azimuth_deg=cams.azimuth_deg[pick],
                  elevation_deg=cams.elevation_deg[pick], image_size=cams.image_size)
    pos, neg, pos_text, neg_text = comfy.run("GlimpsePrompt", clip=vega.clip, template="default", subject="a fox",
                                             extra="", cameras=two)
    front_text, back_text = pos_text.split("\n")

    def sample(positive, negative, batch):
        (latent,) = comfy.run("EmptyLatentImage", width=64, height=64, batch_size=batch)
        (out,) = comfy.run("KSamplerAdvanced", model=vega.model, add_noise="enable", noise_seed=3, steps=4, cfg=1.0,
                           sampler_name="euler", scheduler="sgm_uniform", positive=positive, negative=negative,
                           latent_image=latent, start_at_step=2, end_at_step=4, return_with_leftover_noise="disable")
        return out["samples"]

    both = sample(pos, neg, 2)
    (single_neg,) = comfy.run("CLIPTextEncode", clip=vega.clip, text=neg_text)
    (front,) = comfy.run("CLIPTextEncode", clip=vega.clip, text=front_text)
    (back,) = comfy.run("CLIPTextEncode", clip=vega.clip, text=back_text)
    alone_front = sample(front, single_neg, 1)[0]  # the batch's first noise is the single sample's noise
    alone_back_prompt = sample(back, single_neg, 1)[0]
    prompt_effect = (alone_back_prompt - alone_front).abs().max()
    batch_error = (both[0] - alone_front).abs().max()
    assert prompt_effect > 0
    assert batch_error < 1e-3 * prompt_effect + 1e-5, f"batched view 0 is {batch_error} off, prompts {prompt_effect}"
