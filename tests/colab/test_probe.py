"""The Colab-shaped stage can fail: three deliberately broken probe notebooks must each fail it, with a
message that names the notebook and the package at fault.

- ``numpy_2_2_api``: calls ``np.matvec`` (numpy >= 2.2; Colab has 2.1.3);
- ``ipywidgets_8_api``: builds ``widgets.Stack`` (ipywidgets 8; Colab has 7.7.1);
- ``upgrades_numpy``: its setup cell runs ``%pip install numpy==2.2.6``; every cell succeeds, so only the
  check of Colab's preinstalled versions after the notebook can catch it.

Runs in `make test` after the Colab-shaped stage (it needs .venv-colab, which that stage builds); the
unit stage leaves this folder out.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import colab

PROBES = Path(__file__).parent / "probes"
EXPECTED = {  # notebook -> words its failure line must contain
    "numpy_2_2_api.ipynb": ("numpy", "matvec"),
    "ipywidgets_8_api.ipynb": ("ipywidgets", "Stack"),
    "upgrades_numpy.ipynb": ("numpy 2.1.3 -> 2.2.6", "changed Colab's preinstalled packages"),
}


@pytest.fixture(scope="module")
def outcome():
    if not (colab.FROZEN_FILE.exists() and colab.KEY_FILE.exists()):
        pytest.skip("no .venv-colab yet: `make colab` (or the Colab-shaped stage of `make test`) builds it")
    colab.reset_venv()
    results = colab.run(sorted(PROBES.glob("*.ipynb")), jobs=2, report=None, times=None)
    return {Path(r["path"]).name: r for r in results}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_probe_fails_the_stage_naming_notebook_and_package(outcome, name, capsys):
    result = outcome[name]
    assert result["failure"], f"{name} passed the Colab-shaped stage, but it is broken for Colab"
    line = f"{result['path']}: {result['failure']}"  # the line tools/colab.py prints for a failure
    assert name in line
    for word in EXPECTED[name]:
        assert word in line, f"the failure line does not say {word!r}: {line}"


def test_the_probes_did_not_touch_the_pinned_venv(outcome):
    """Each notebook ran in its own copy: the cached venv is still exactly as pinned."""
    import json

    assert colab.installed(colab.VENV / "bin" / "python") == json.loads(colab.FROZEN_FILE.read_text())
