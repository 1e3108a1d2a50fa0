"""Tests of dlbook.weights: the shipped files are intact, come from the shipped code, and reach the wheel."""

import sys
from pathlib import Path

import pytest
import torch

from dlbook import weights
from dlbook.pretrain.shipped import replay
from dlbook.pretrain import PretrainTokenizer, docstring_task, pretrained, pretraining_text

ROOT = Path(__file__).resolve().parent.parent


def _same_python(name: str) -> bool:
    """The pretraining text depends on the standard library's docstrings: only the Python version that made
    a file is expected to rebuild its text."""
    return weights.manifest()[name]["python"] == ".".join(map(str, sys.version_info[:2]))


@pytest.fixture(scope="module")
def corpus():
    text = pretraining_text(docstring_task())
    tok = PretrainTokenizer(text, level="word")
    return text, tok, tok.encode(text)


def test_every_recipe_has_a_file_that_matches_its_sha256_and_recipe():
    """Each shipped model is in the manifest with its recipe, and the file's bytes hash to the recorded SHA-256."""
    entries = weights.manifest()
    assert set(entries) == set(weights.RECIPES)
    for name, entry in entries.items():
        assert entry["recipe"] == weights.RECIPES[name]
        assert weights.file_sha256(weights.path(name)) == entry["sha256"], name
        assert weights.path(name).stat().st_size < 1.1e6, name      # the DESIGN's "about 1 MB per model"


def test_a_file_that_does_not_match_its_sha256_is_refused(tmp_path, monkeypatch):
    """A corrupt or hand-edited file raises a ValueError that says how to re-create it, and is never loaded."""
    bad = tmp_path / "mlm_600.pt"
    data = bytearray(weights.path("mlm_600").read_bytes())
    data[len(data) // 2] ^= 1                                    # one bit of one weight
    bad.write_bytes(bytes(data))
    monkeypatch.setattr(weights, "FOLDER", tmp_path)
    with pytest.raises(ValueError, match="train-weights mlm_600"):
        weights.read("mlm_600")


def test_unknown_names_and_replays_beyond_the_warmup_are_refused():
    """Only recipe names are accepted; a replay longer than the warmup would not equal the full run's first steps."""
    with pytest.raises(ValueError, match="unknown shipped model"):
        weights.path("gpt4")
    with pytest.raises(ValueError, match="steps must be"):
        replay("clm_300", steps=weights.warmup_steps("clm_300") + 1)


@pytest.mark.parametrize("name", list(weights.RECIPES))
def test_the_first_steps_of_each_recipe_reproduce_the_recorded_losses(name, corpus):
    """Re-training from scratch with the shipped code gives the recorded losses of the first 4 steps (to 1e-3:
    other CPU kernels round differently), so the file was made by this recipe, not by something else."""
    text, tok, ids = corpus
    if not _same_python(name):
        pytest.skip("another Python version's standard library builds another pretraining text")
    assert weights.text_sha256(text) == weights.manifest()[name]["text_sha256"]   # whatever else is imported
    state = weights.read(name)
    assert state["tokenizer"]["itos"] == tok.itos
    again = replay(name, 4, tok, ids)
    assert again == pytest.approx(state["losses"][:4], abs=1e-3)
    assert len(state["losses"]) == weights.RECIPES[name]["steps"]


def test_pretrained_loads_the_shipped_weights_only_for_the_text_they_were_trained_on(corpus, monkeypatch):
    """With the shipped text, pretrained() returns the stored float16 values without training; with any
    other text (another Python's docstrings) load() declines, so pretrained() trains instead."""
    text, _, _ = corpus
    if not _same_python("mlm_600"):
        pytest.skip("another Python version's standard library builds another pretraining text")
    model, _, info = pretrained("mlm")
    assert info["shipped"] and info["cached"]
    stored = torch.load(weights.path("mlm_600"), weights_only=True)["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, stored[key].float()), key
    assert weights.read("mlm_600", text + " ") is None


def test_the_wheel_includes_the_weights():
    """pyproject's package-data names the .pt files and the manifest, so a built wheel (Colab) carries them."""
    tomllib = pytest.importorskip("tomllib")              # Python 3.11+
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = data["dlbook.weights"]
    for file in weights.FOLDER.iterdir():
        if file.suffix in (".pt", ".json"):
            assert any(file.match(p) for p in patterns), file.name
