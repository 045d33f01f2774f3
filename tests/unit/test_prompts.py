import json

import pytest
import torch

from glimpse.prompts import (
    BUILTIN_TEMPLATES,
    Template,
    compose,
    fill,
    load_user_templates,
    parse_user_templates,
    resolve_template,
    stack_token_sequences,
    unique_in_order,
    view_direction,
    view_directions,
)

SEED_NAMES = ["default", "photorealistic", "product", "character", "environment", "object", "anime_style"]


def test_builtins_are_the_seven_seed_templates_with_a_subject_slot_and_a_negative():
    assert list(BUILTIN_TEMPLATES) == SEED_NAMES
    for name, t in BUILTIN_TEMPLATES.items():
        assert t.positive.count("{subject}") == 1, name
        assert t.negative and "{subject}" not in t.negative, name


def test_compose_fills_subject_then_extra_then_direction():
    pos, neg = compose(Template("{subject}, sharp", "blurry"), "a red fox", "studio light", "front view")
    assert pos == "a red fox, sharp, studio light, front view"
    assert neg == "blurry"


@pytest.mark.parametrize("name", SEED_NAMES)
def test_empty_subject_leaves_no_dangling_commas(name):
    pos, _ = compose(BUILTIN_TEMPLATES[name], "", "")
    assert not pos.startswith(",") and ", ," not in pos and "  " not in pos
    assert pos == fill(BUILTIN_TEMPLATES[name].positive, "   ")


def test_template_without_slot_gets_subject_in_front_and_keeps_other_braces():
    assert fill("sharp {style} render", "a fox") == "a fox, sharp {style} render"
    assert fill("sharp {style} render", "") == "sharp {style} render"
    assert fill("a {subject} on a table", "vase") == "a vase on a table"


def test_parse_user_templates_accepts_schema_and_bom():
    data = json.dumps({"templates": {"clay": {"positive": "{subject}, clay", "negative": "shiny"},
                                     "bare": {"positive": "just this"}}}).encode()
    got = parse_user_templates(b"\xef\xbb\xbf" + data, "mine.json")
    assert got == {"clay": Template("{subject}, clay", "shiny"), "bare": Template("just this", "")}


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"\xff\xfe{}", "mine.json is not UTF-8 text (byte 0xff at offset 0)"),
        (b'{"templates": {"a": {"positive": "x",}}}', "mine.json is not valid JSON: Expecting property name"),
        (b"[1, 2]", 'mine.json must hold a JSON object with a "templates" object'),
        (b'{"templates": {}}', "mine.json defines no templates"),
        (b'{"templates": {"a": {"positive": "x"}}, "version": 2}', "unknown top-level keys ['version']"),
        (b'{"templates": {"a": "x"}}', "template 'a' must be an object"),
        (b'{"templates": {"a": {"positve": "x"}}}', "template 'a' has unknown keys ['positve']"),
        (b'{"templates": {"a": {"negative": "x"}}}', "template 'a' has no \"positive\" prompt"),
        (b'{"templates": {"a": {"positive": 3}}}', 'template \'a\': "positive" must be a string, not a number'),
        (b'{"templates": {" ": {"positive": "x"}}}', "has a template with an empty name"),
    ],
)
def test_parse_user_templates_names_the_file_and_the_problem(data, expected):
    with pytest.raises(ValueError) as e:
        parse_user_templates(data, "mine.json")
    assert "user template file mine.json" in str(e.value)
    assert expected in str(e.value)


def test_load_user_templates_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
        load_user_templates(tmp_path / "nope.json")


def test_load_user_templates_reads_a_file(tmp_path):
    p = tmp_path / "t.json"
    p.write_text('{"templates": {"x": {"positive": "{subject} x"}}}', encoding="utf-8")
    assert load_user_templates(p) == {"x": Template("{subject} x", "")}


def test_resolve_template_prefers_user_and_lists_names_when_unknown():
    user = {"default": Template("mine"), "extra": Template("e")}
    assert resolve_template("default", user) == Template("mine")
    assert resolve_template("object", user) is BUILTIN_TEMPLATES["object"]
    with pytest.raises(ValueError) as e:
        resolve_template("nope", user, "u.json")
    msg = str(e.value)
    assert "unknown prompt template 'nope'" in msg and "anime_style" in msg and "from u.json: default, extra" in msg


@pytest.mark.parametrize(
    "az, el, words",
    [
        (0, 30, "front view"),
        (45, 30, "front view"),
        (-45, 30, "front view"),
        (45.0001, 30, "side view"),
        (90, 30, "side view"),
        (270, 30, "side view"),
        (135, 30, "back view"),
        (180, 30, "back view"),
        (225, 30, "back view"),
        (360, 0, "front view"),
        (0, 45, "front view, from above"),
        (180, 80, "back view, from above"),
        (90, -60, "side view, from below"),
    ],
)
def test_view_direction(az, el, words):
    assert view_direction(az, el) == words


def test_view_direction_front_azimuth_is_a_parameter():
    assert view_direction(180, 0, front_azimuth_deg=180) == "front view"
    assert view_direction(0, 0, front_azimuth_deg=180) == "back view"
    assert view_direction(90, 0, front_azimuth_deg=-90) == "back view"


def test_syncdreamer_sixteen_views_view0_is_front_view8_is_back():
    az = torch.arange(16, dtype=torch.float64) * 22.5
    words = view_directions(az, torch.full((16,), 30.0, dtype=torch.float64))
    assert words[0] == "front view" and words[8] == "back view" and words[4] == words[12] == "side view"
    assert words == ["front view"] * 3 + ["side view"] * 3 + ["back view"] * 5 + ["side view"] * 3 + ["front view"] * 2


def test_view_directions_length_mismatch():
    with pytest.raises(ValueError, match="2 azimuths but 1 elevations"):
        view_directions([0, 1], [0])


def test_unique_in_order():
    assert unique_in_order(["b", "a", "b", "c", "a"]) == (["b", "a", "c"], [0, 1, 0, 2, 1])


def test_stack_token_sequences_repeats_to_lcm_and_keeps_attention_result():
    short, long = torch.randn(1, 77, 8), torch.randn(1, 154, 8)
    out = stack_token_sequences([short, long, short])
    assert out.shape == (3, 154, 8)
    assert torch.equal(out[0, :77], short[0]) and torch.equal(out[0, 77:], short[0]) and torch.equal(out[1], long[0])
    q = torch.randn(1, 5, 8)
    ref = torch.nn.functional.scaled_dot_product_attention(q, short, short)
    got = torch.nn.functional.scaled_dot_product_attention(q, out[:1], out[:1])
    torch.testing.assert_close(got, ref)
