"""The conda environment, the pip constraints and the package metadata agree."""

import re
import tomllib
from pathlib import Path

import yaml

from tools.environment import CONSTRAINTS, ENVIRONMENT, pins

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_carries_exactly_the_pip_pins():
    conda = yaml.safe_load(ENVIRONMENT.read_text())
    pip_section = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict) and "pip" in d)
    in_conda = pins("\n".join(pip_section))
    in_constraints = pins(CONSTRAINTS.read_text())
    assert in_conda == in_constraints, {
        "only in environment.yml": sorted(set(in_conda.items()) - set(in_constraints.items())),
        "only in constraints.txt": sorted(set(in_constraints.items()) - set(in_conda.items())),
    }


def test_constraints_pin_the_tested_torch_and_every_runtime_dependency():
    constraints = pins(CONSTRAINTS.read_text())
    assert constraints["torch"] == "2.13.0"
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for requirement in meta["project"]["dependencies"]:
        name = re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0].lower()
        assert name in constraints, f"{name} is a dependency of dlbook but not pinned in constraints.txt"


def test_package_metadata_has_lower_bounds_only_for_colab_preinstalls():
    """Installing dlbook on Colab must never replace its torch, numpy or ipywidgets."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for requirement in meta["project"]["dependencies"]:
        assert "==" not in requirement, f"{requirement}: pin versions in constraints.txt, not in the package"
        if requirement.startswith(("torch", "numpy")):
            assert "<" not in requirement, f"{requirement}: no upper bound on Colab's preinstalled packages"
    ipywidgets = next(r for r in meta["project"]["dependencies"] if r.startswith("ipywidgets"))
    assert ">=7.7" in ipywidgets, "Colab ships ipywidgets 7.7.1; dlbook must accept it"
