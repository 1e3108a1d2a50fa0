"""dlbook.data: offline datasets, tokenizer, windows and checksummed downloads."""

import gzip
import hashlib
import struct

import numpy as np
import pytest
import torch

from dlbook import data


def test_digits_split_sizes_shapes_and_stratification():
    s = data.load_digits()
    assert (len(s.X_train), len(s.X_val), len(s.X_test)) == (1077, 360, 360)
    assert s.X_train.shape[1:] == (64,) and s.X_train.dtype == torch.float32
    assert s.y_train.dtype == torch.int64
    # Stratified: every class appears in every split in nearly equal numbers.
    counts = torch.bincount(s.y_test, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38


def test_digits_split_is_fixed_and_disjoint():
    a, b = data.load_digits(), data.load_digits()
    assert torch.equal(a.X_test, b.X_test)
    train = {tuple(r) for r in a.X_train.tolist()}
    # A handful of digits images are exact duplicates of each other in the dataset itself,
    # so require that almost no test row is also a training row.
    overlap = sum(tuple(r) in train for r in a.X_test.tolist())
    assert overlap <= 3


def test_digits_standardization_guards_constant_pixels():
    """Pixels that are constant in training must not blow up on other splits."""
    s = data.load_digits()
    for X in (s.X_train, s.X_val, s.X_test):
        assert X.abs().max() <= 16
    assert torch.allclose(s.X_train.mean(0), torch.zeros(64), atol=1e-4)


def test_digits_images_shape_when_not_flattened():
    s = data.load_digits(flatten=False, standardize=False)
    assert s.X_train.shape[1:] == (1, 8, 8)
    assert 0.0 <= s.X_train.min() and s.X_train.max() <= 1.0


def test_digits_rejects_bad_fractions():
    with pytest.raises(ValueError, match="val_frac"):
        data.load_digits(val_frac=1.5)
    with pytest.raises(ValueError, match="< 1"):
        data.load_digits(val_frac=0.6, test_frac=0.5)


def test_make_regression_is_linear_plus_noise():
    X, y, w = data.make_regression(500, 3, noise=0.0, seed=1)
    assert X.shape == (500, 3) and y.shape == (500,) and w.shape == (3,)
    assert torch.allclose(X @ w, y, atol=1e-5)


@pytest.mark.parametrize("kind", ["blobs", "spirals", "moons"])
def test_make_classification_shapes_and_balance(kind):
    X, y = data.make_classification(300, 2 if kind == "moons" else 3, kind=kind, seed=0)
    assert X.shape == (300, 2) and y.shape == (300,)
    assert torch.bincount(y).min() >= 99


def test_make_classification_rejects_bad_kind():
    with pytest.raises(ValueError, match="kind"):
        data.make_classification(kind="circles")
    with pytest.raises(ValueError, match="moons"):
        data.make_classification(n_classes=3, kind="moons")


def test_tensor_loader_reshuffles_every_epoch_reproducibly():
    X = torch.arange(20.0)[:, None]
    loader = data.tensor_loader(X, torch.arange(20), batch_size=5, seed=0)
    first = torch.cat([x for x, _ in loader]).squeeze(1)
    second = torch.cat([x for x, _ in loader]).squeeze(1)
    assert not torch.equal(first, second)  # a new order each epoch
    again = torch.cat([x for x, _ in data.tensor_loader(X, torch.arange(20), batch_size=5, seed=0)]).squeeze(1)
    assert torch.equal(first, again)  # same seed, same first epoch


def test_tensor_loader_rejects_bad_input():
    with pytest.raises(ValueError, match="batch_size"):
        data.tensor_loader(torch.zeros(3, 1), torch.zeros(3), batch_size=0)
    with pytest.raises(ValueError, match="same length"):
        data.tensor_loader(torch.zeros(3, 1), torch.zeros(4))


def test_pydoc_text_is_a_real_english_corpus():
    text = data.pydoc_text()
    assert len(text) > 300_000
    assert text.count(" the ") > 1000
    assert text == data.pydoc_text()  # stable order


def test_docstring_corpus_is_labelled_by_module():
    pairs = data.docstring_corpus(["json", "random"], min_length=100)
    labels = {m for _, m in pairs}
    assert labels == {"json", "random"}
    assert all(len(doc) >= 100 for doc, _ in pairs)


def test_docstring_corpus_does_not_depend_on_which_submodules_were_imported(monkeypatch):
    """A submodule that happens to be an attribute (because something imported it) adds nothing."""
    import json
    import types

    before = data.docstring_corpus(["json"], min_length=100)
    sub = types.ModuleType("json.imported_elsewhere", "A submodule docstring that is long enough to count. " * 5)
    monkeypatch.setattr(json, "imported_elsewhere", sub, raising=False)
    assert data.docstring_corpus(["json"], min_length=100) == before
    assert before, "json has documented functions of its own"


def test_key_value_sequences_hold_one_consistent_one_to_one_map_per_sequence():
    """Within a sequence the same key always has the same value and distinct keys distinct values;
    maps differ between sequences; a seeded generator repeats the draw; bad sizes are clear errors."""
    seq = data.key_value_sequences(200, 12, 8, 8, generator=torch.Generator().manual_seed(0))
    assert seq.shape == (200, 24) and seq.dtype == torch.int64
    keys, values = seq[:, 0::2], seq[:, 1::2]
    assert keys.min() >= 0 and keys.max() < 8 and values.min() >= 8 and values.max() < 16
    maps = set()
    for k, v in zip(keys.tolist(), values.tolist()):
        pairs = set(zip(k, v))
        assert len({a for a, _ in pairs}) == len(pairs) == len({b for _, b in pairs})
        maps.add(frozenset(pairs))
    assert len(maps) > 150
    again = data.key_value_sequences(200, 12, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(seq, again)
    with pytest.raises(ValueError, match="n_values must be >= n_keys"):
        data.key_value_sequences(2, 3, n_keys=8, n_values=4)
    with pytest.raises(TypeError):
        data.key_value_sequences(2.5, 3)


def test_char_tokenizer_round_trip_and_errors():
    tok = data.CharTokenizer("hello world")
    assert tok.vocab_size == len(set("hello world"))
    ids = tok.encode("hold")
    assert ids.dtype == torch.int64 and tok.decode(ids) == "hold"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("xyz")
    with pytest.raises(ValueError, match="token ids"):
        tok.decode([99])
    with pytest.raises(ValueError):
        data.CharTokenizer("")


def test_windows_targets_are_inputs_shifted_by_one():
    ids = torch.arange(50)
    X, Y = data.windows(ids, block_size=8)
    assert X.shape == Y.shape == (6, 8)
    assert torch.equal(Y, X + 1)
    Xs, _ = data.windows(ids, block_size=8, stride=1)
    assert len(Xs) == 42


def test_random_batch_shapes_and_reproducibility():
    ids = torch.arange(100)
    g = torch.Generator().manual_seed(0)
    X, Y = data.random_batch(ids, 10, 4, generator=g)
    assert X.shape == (4, 10) and torch.equal(Y, X + 1)
    X2, _ = data.random_batch(ids, 10, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(X, X2)


def test_windows_reject_short_streams_and_bad_sizes():
    with pytest.raises(ValueError, match="more than block_size"):
        data.windows(torch.arange(5), 8)
    with pytest.raises(ValueError, match="1-D"):
        data.random_batch(torch.zeros(3, 3, dtype=torch.long), 2, 2)
    with pytest.raises(TypeError):
        data.windows(torch.arange(50), 2.5)


def test_split_ids_keeps_order():
    train, val = data.split_ids(torch.arange(100), 0.1)
    assert torch.equal(train, torch.arange(90)) and torch.equal(val, torch.arange(90, 100))


# ----------------------------------------------------------------------------- downloads, all local

def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def local_remote(tmp_path):
    """A RemoteFile served from a local file:// URL (tests never use the internet)."""
    images = np.arange(2 * 3 * 3).reshape(2, 3, 3)
    payload = gzip.compress(_idx_bytes(images), mtime=0)
    src = tmp_path / "server" / "images.gz"
    src.parent.mkdir()
    src.write_bytes(payload)
    remote = data.RemoteFile(src.as_uri(), hashlib.sha256(payload).hexdigest(), "images.gz")
    return remote, images


def test_fetch_downloads_verifies_and_caches(local_remote, tmp_path):
    remote, images = local_remote
    cache = tmp_path / "cache"
    path = data.fetch(remote, root=cache)
    assert path == cache / "images.gz"
    assert np.array_equal(data.read_idx(path), images)
    # Second call uses the cache even when the source is gone.
    (tmp_path / "server" / "images.gz").unlink()
    assert data.fetch(remote, root=cache) == path


def test_fetch_refuses_a_corrupt_download(local_remote, tmp_path):
    remote, _ = local_remote
    bad = data.RemoteFile(remote.url, "0" * 64, remote.filename)
    with pytest.raises(data.DownloadError, match="checksum mismatch"):
        data.fetch(bad, root=tmp_path / "cache")
    assert not (tmp_path / "cache" / "images.gz").exists()
    assert not list((tmp_path / "cache").glob("*.part"))


def test_fetch_replaces_a_corrupt_cache_entry(local_remote, tmp_path):
    remote, images = local_remote
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "images.gz").write_bytes(b"truncated")
    path = data.fetch(remote, root=cache)
    assert np.array_equal(data.read_idx(path), images)


def test_fetch_offline_gives_a_clear_error(tmp_path):
    missing = data.RemoteFile((tmp_path / "nowhere.gz").as_uri(), "0" * 64, "nowhere.gz")
    with pytest.raises(data.DownloadError, match="optional and needs a network"):
        data.fetch(missing, root=tmp_path / "cache")


def test_fetch_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown dataset"):
        data.fetch("imagenet")


def test_registered_datasets_have_sha256_checksums():
    for remote in data.DATASETS.values():
        assert len(remote.sha256) == 64 and int(remote.sha256, 16) >= 0


def test_read_idx_rejects_non_idx_files(tmp_path):
    p = tmp_path / "x.idx"
    p.write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        data.read_idx(p)
