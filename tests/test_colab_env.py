"""requirements/colab.txt, the one definition of "Colab-shaped" (tools/colab.py builds .venv-colab from it)."""

from __future__ import annotations

import tomllib

from packaging.requirements import Requirement

from tools import colab
from tools.environment import CONSTRAINTS, pins
from tools.nbtools import ROOT

PREINSTALLED = ("torch", "numpy", "matplotlib", "scikit-learn", "tqdm", "ipywidgets", "ipykernel", "ipython")


def test_colab_pins_name_every_preinstalled_package_dlbook_meets():
    pinned = colab.colab_pins()
    missing = [name for name in PREINSTALLED if name not in pinned]
    assert not missing, f"requirements/colab.txt must pin Colab's {missing}"


def test_installing_dlbook_on_colab_changes_none_of_its_versions():
    """Every dependency of dlbook accepts Colab's version, so pip has nothing to upgrade there."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = colab.colab_pins()
    for line in project["dependencies"]:
        req = Requirement(line)
        name = colab.norm(req.name)
        assert name in pinned, f"dlbook depends on {name}, which requirements/colab.txt does not pin"
        assert req.specifier.contains(pinned[name]), f"{line} rejects Colab's {name} {pinned[name]}"


def test_venv_takes_the_local_torch_wheel_and_the_tooling_from_constraints():
    """Colab's torch has no CPU wheel here: the venv gets the local pin, and says so."""
    wanted, note = colab.install_pins()
    local = pins(CONSTRAINTS.read_text())
    assert wanted["torch"] == local["torch"] and colab.colab_pins()["torch"] in note
    for tool in colab.TOOLING:
        assert wanted[tool] == local[tool]
    assert {k: v for k, v in wanted.items() if k not in ("torch", *colab.TOOLING)} == \
        {k: v for k, v in colab.colab_pins().items() if k != "torch"}
