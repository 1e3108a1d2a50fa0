"""tools/nbtools.py: the setup cell's install block, its override, and `sync` across both forms of the block."""

from __future__ import annotations

import nbformat

from tools import nbtools

OLD_BLOCK = (
    "# Setup: installs dlbook only if it is missing (as on Colab); never reinstalls torch or numpy.\n"
    "try:\n"
    "    import dlbook\n"
    "except ImportError:\n"
    '    %pip install -q "dlbook @ git+https://github.com/dlbook/dlbook"\n'
)


def _notebook(tmp_path, setup_source):
    path = tmp_path / "nb.ipynb"
    nb = nbtools.new_notebook([nbtools.md("# T"), nbtools.code(setup_source), nbtools.code("x = 1")])
    nbformat.write(nb, path)
    return path


def test_install_block_reads_the_override_and_falls_back_to_the_repository():
    """One cell text for everyone: DLBOOK_SOURCE when set (CI), the repository URL otherwise."""
    block = nbtools.install_block()
    assert f'os.environ.get("{nbtools.SOURCE_ENV}", "dlbook @ git+{nbtools.repository_url()}")' in block
    assert '%pip install -q "$dlbook_source"' in block


def test_sync_rewrites_the_old_block_and_keeps_the_rest_of_the_cell(tmp_path):
    """Chapters generated from the older block (no override line) are brought to the current one."""
    rest = "from dlbook.device import info, seed_everything\n\nseed_everything(0)\ndevice = info()"
    path = _notebook(tmp_path, OLD_BLOCK + rest)
    assert nbtools.sync(path)
    cell = nbtools.first_code_cell(nbformat.read(path, as_version=4))
    assert cell.source == nbtools.install_block() + rest
    assert not nbtools.sync(path), "a second sync changes nothing"


def test_sync_leaves_a_current_block_alone(tmp_path):
    path = _notebook(tmp_path, nbtools.setup_source("import torch"))
    assert not nbtools.sync(path)
