"""What the Comfy registry gets: the dependencies it lists and the files `comfy node pack` ships."""
from __future__ import annotations

import re
import tomllib
import zipfile
from pathlib import Path

import pytest
from comfy_cli.file_utils import zip_files

REPO = Path(__file__).resolve().parents[2]


def requirement_lines(path: Path) -> list[str]:
    return [line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()]


def test_dependencies_are_static_and_equal_to_requirements_txt():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "dependencies" not in project.get("dynamic", []), "comfy node publish reads only project.dependencies"
    assert project["dependencies"] == requirement_lines(REPO / "requirements.txt")
    assert not any(re.match(r"torch\b", d) for d in project["dependencies"]), "ComfyUI owns torch"


@pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")  # inside comfy-cli's pathspec use
def test_the_pack_ships_the_nodes_workflows_and_the_fox_but_no_tests(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # comfy-cli packs the current folder: git-tracked files minus .comfyignore
    zip_files(tmp_path / "node.zip")
    with zipfile.ZipFile(tmp_path / "node.zip") as z:
        names = set(z.namelist())
    top = {n.split("/")[0] for n in names}
    assert top == {"__init__.py", "nodes", "glimpse", "workflows", "samples", "README.md", "LICENSE",
                   "pyproject.toml", "requirements.txt", ".comfyignore"}, sorted(top)
    assert {"nodes/viewset.py", "glimpse/runner/run.py", "workflows/api/glimpse_enhance_t4.json",
            "workflows/glimpse_enhance_t4.jpg", "samples/fox/cameras.json", "samples/fox/view_15.png",
            "samples/fox/README.md"} <= names
    size = sum(i.file_size for i in zipfile.ZipFile(tmp_path / "node.zip").infolist())
    print(f"comfy node pack: {len(names)} files, {size / 2**20:.2f} MiB uncompressed")
