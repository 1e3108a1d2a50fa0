"""Tests for dlbook.pretrain: the objectives' corruption statistics, representations, the
leakage-free task split, and the training/caching helpers."""

import inspect

import pytest
import torch
import torch.nn.functional as F

from dlbook.pretrain import (
    IGNORE_INDEX, MLMEncoder, PretrainTokenizer, SequenceClassifier, build_model, combine_layers,
    docstring_task, finetune_classifier, hidden_states, mask_tokens, module_docstrings, pad_sequences, pool, pretrain,
    pretrained, pretraining_text, span_corrupt, span_restore,
)
from dlbook.transformer import GPT

V, MASK, SPECIALS = 40, 3, (0, 1, 2)


def _ids(n=100_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(MASK + 1, V, (n,), generator=g)  # ordinary tokens (the text never holds [MASK])
    ids[::10] = 0  # sprinkle specials in: they must never be touched
    ids[5::10] = 1
    return ids


# ----------------------------------------------------------------------------- mask_tokens

def test_mask_tokens_fractions_on_1e5_tokens():
    """15% of ordinary tokens are selected; of those 80% [MASK], 10% random, 10% unchanged
    (tolerances are > 5 binomial standard deviations at these counts)."""
    ids = _ids()
    inputs, labels = mask_tokens(ids, MASK, V, SPECIALS, p=0.15, generator=torch.Generator().manual_seed(1))
    ordinary = ~torch.isin(ids, torch.tensor(SPECIALS))
    sel = labels != IGNORE_INDEX
    frac = sel.sum().item() / ordinary.sum().item()
    assert abs(frac - 0.15) < 0.007, frac
    n = sel.sum().item()
    to_mask = (inputs[sel] == MASK).sum().item() / n
    same = (inputs[sel] == ids[sel]).sum().item() / n
    rand = 1 - to_mask - same
    assert abs(to_mask - 0.8) < 0.02 and abs(rand - 0.1) < 0.015, (to_mask, rand)
    # "unchanged" also gets the random draws that happen to hit the same token (about 0.1 / 36)
    assert abs(same - 0.1 - 0.1 / 36) < 0.015, same


def test_mask_tokens_labels_exactly_at_selected_positions_and_specials_untouched():
    """labels hold the original id where selected and -100 elsewhere; unselected inputs are the
    original; specials are never selected; random replacements are never special or [MASK]."""
    ids = _ids(20_000, seed=2).view(40, 500)
    inputs, labels = mask_tokens(ids, MASK, V, SPECIALS, p=0.3, generator=torch.Generator().manual_seed(3))
    assert inputs.shape == labels.shape == ids.shape
    sel = labels != IGNORE_INDEX
    assert torch.equal(labels[sel], ids[sel])
    assert torch.equal(inputs[~sel], ids[~sel])
    special = torch.isin(ids, torch.tensor(SPECIALS))
    assert not sel[special].any()
    replaced = sel & (inputs != ids) & (inputs != MASK)
    assert replaced.any() and not torch.isin(inputs[replaced], torch.tensor(SPECIALS + (MASK,))).any()


def test_mask_tokens_is_reproducible_and_loss_covers_selected_only():
    """The same generator seed gives the same corruption; F.cross_entropy with ignore_index
    equals the mean over the selected positions computed by hand (float64, 1e-12)."""
    ids = _ids(2000).view(4, 500)
    a = mask_tokens(ids, MASK, V, SPECIALS, generator=torch.Generator().manual_seed(5))
    b = mask_tokens(ids, MASK, V, SPECIALS, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    logits = torch.randn(4, 500, V, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    labels = a[1]
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    sel = labels != IGNORE_INDEX
    by_hand = -logits.log_softmax(-1)[sel].gather(-1, labels[sel][:, None]).mean()
    torch.testing.assert_close(loss, by_hand, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    ({"p": 0.0}, "open interval"), ({"p": 1.0}, "open interval"), ({"p": 1.5}, "open interval"),
    ({"mask_id": V}, "mask_id"),
])
def test_mask_tokens_rejects_bad_arguments(kwargs, match):
    args = {"mask_id": MASK, "vocab_size": V, "special_ids": SPECIALS, "p": 0.15} | kwargs
    with pytest.raises(ValueError, match=match):
        mask_tokens(_ids(100), **args)
    with pytest.raises(TypeError):
        mask_tokens(torch.rand(10), MASK, V, SPECIALS)


# ----------------------------------------------------------------------------- span_corrupt

SENT = tuple(range(100, 140))


@pytest.mark.parametrize("n", [3, 4, 7, 50, 128, 501])
def test_span_corrupt_round_trips(n):
    """inputs + targets rebuild the original sequence exactly, for many seeds and lengths."""
    for seed in range(20):
        ids = torch.randint(0, 40, (n,), generator=torch.Generator().manual_seed(seed))
        inputs, targets = span_corrupt(ids, SENT, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(span_restore(inputs, targets, SENT), ids)


def test_span_corrupt_layout_and_statistics():
    """T5 layout: sentinels in order, targets = sentinel + span each; about 15% of tokens in
    spans of mean length about 3; lengths N - noise + spans and noise + spans."""
    g = torch.Generator().manual_seed(0)
    noise, spans, total = 0, 0, 0
    for _ in range(300):
        ids = torch.randint(0, 40, (200,), generator=g)
        inputs, targets = span_corrupt(ids, SENT, p=0.15, mean_span=3.0, generator=g)
        s_in = [t for t in inputs.tolist() if t in SENT]
        s_out = [t for t in targets.tolist() if t in SENT]
        assert s_in == s_out == list(SENT[:len(s_in)]) and targets[0].item() == SENT[0]
        k, m = len(s_in), len(targets) - len(s_in)
        assert len(inputs) == 200 - m + k
        noise, spans, total = noise + m, spans + k, total + 200
    assert abs(noise / total - 0.15) < 0.005
    assert abs(noise / spans - 3.0) < 0.2


def test_span_corrupt_rejects_bad_arguments():
    ids = torch.arange(20)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        span_corrupt(ids, SENT, p=1.0)
    with pytest.raises(ValueError, match="empty"):
        span_corrupt(torch.arange(0), SENT)
    with pytest.raises(ValueError, match="sentinels"):
        span_corrupt(torch.arange(400), SENT[:2])
    with pytest.raises(ValueError, match="mean_span"):
        span_corrupt(ids, SENT, mean_span=0.5)
    with pytest.raises(TypeError):
        span_corrupt(ids.view(4, 5), SENT)


# ----------------------------------------------------------------------------- representations

def test_pool_mean_ignores_padding_exactly():
    """Mean pooling of a padded batch equals the plain mean of each sequence's real tokens,
    whatever garbage sits in the padded positions (float64, exact to 1e-12)."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 6, 4, dtype=torch.float64, generator=g)
    lengths = [6, 2, 4]
    mask = torch.arange(6)[None, :] < torch.tensor(lengths)[:, None]
    h_garbage = h.masked_fill(~mask[..., None], 1e6)
    out = pool(h_garbage, mask, "mean")
    ref = torch.stack([h[i, :n].mean(0) for i, n in enumerate(lengths)])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(pool(h, None, "cls"), h[:, 0])
    with pytest.raises(ValueError, match="'cls' or 'mean'"):
        pool(h, mask, "max")


def test_encoder_padding_and_bidirectionality():
    """The MLM encoder's states of real tokens do not change with padding, and a change to the
    last token changes the first token's state (attention looks both ways)."""
    torch.manual_seed(0)
    enc = MLMEncoder(30, 16, n_layer=2, n_head=2, n_embd=16).double()
    x = torch.randint(5, 30, (1, 7))
    padded = torch.cat([x, torch.zeros(1, 9, dtype=torch.long)], dim=1)
    alone = enc.hidden_states(x)
    with_pad = enc.hidden_states(padded)
    assert len(alone) == 3
    for a, b in zip(alone, with_pad):
        torch.testing.assert_close(a, b[:, :7], rtol=0, atol=1e-10)
    y = x.clone()
    y[0, -1] = 5 if x[0, -1] != 5 else 6
    assert (enc.encode(y)[0, 0] - enc.encode(x)[0, 0]).abs().max() > 1e-6
    logits, loss = enc(x, labels=x)
    assert logits.shape == (1, 7, 30) and loss.ndim == 0


def test_hidden_states_match_each_models_own_forward():
    """hidden_states() of a GPT feeds its head to give GPT's logits; of an EncoderDecoder its last
    state equals encode(); combine_layers sums or concatenates the chosen layers."""
    torch.manual_seed(0)
    gpt = build_model("clm", 30, 16, n_layer=2, n_embd=16)
    x = torch.randint(1, 30, (2, 10))
    states = hidden_states(gpt, x)
    assert len(states) == 3
    torch.testing.assert_close(gpt.head(states[-1]), gpt(x)[0])
    ed = build_model("span", 30, 16, n_layer=2, n_embd=16)
    torch.testing.assert_close(hidden_states(ed, x)[-1], ed.encode(x)[0])
    torch.testing.assert_close(combine_layers(states, (-2, -1), "sum"), states[-2] + states[-1])
    assert combine_layers(states, (0, 1, 2), "concat").shape == (2, 10, 48)
    with pytest.raises(ValueError):
        combine_layers(states, (5,))


def test_frozen_classifier_trains_only_its_head_with_fit():
    """finetune_classifier (through dlbook.train.fit) changes the head of a frozen classifier and
    leaves the backbone's weights untouched; unfrozen, the backbone changes too."""
    torch.manual_seed(0)
    X = torch.randint(5, 30, (64, 12))
    X[:, 8:] = 0
    y = (X[:, 1] > 17).long()
    for freeze in (True, False):
        enc = MLMEncoder(30, 12, n_layer=2, n_head=2, n_embd=16)
        before = {k: v.clone() for k, v in enc.state_dict().items()}
        clf = SequenceClassifier(enc, 2, how="mean", freeze=freeze)
        head0 = clf.head.weight.clone()
        hist = finetune_classifier(clf, (X, y), (X, y), epochs=2, batch_size=16)
        assert "val_accuracy" in hist.epochs[-1]
        assert not torch.equal(head0, clf.head.weight)
        same = all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
        assert same == freeze


def test_pretrain_objectives_reduce_their_loss():
    """A few dozen steps of each objective lower its loss on a repetitive toy stream."""
    tok = PretrainTokenizer("abcdefgh", n_sentinels=8)
    ids = tok.encode("abcdefgh" * 200)
    torch.manual_seed(0)
    for objective in ("mlm", "clm", "span"):
        model = build_model(objective, tok.vocab_size, 16, n_layer=2, n_embd=32)
        losses = pretrain(model, ids, objective, 40, tokenizer=None if objective == "clm" else tok,
                          batch_size=16, lr=3e-3)
        assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, (objective, losses[:5], losses[-5:])
    with pytest.raises(ValueError, match="objective"):
        pretrain(model, ids, "rtd", 1, tokenizer=tok)
    with pytest.raises(ValueError, match="tokenizer"):
        pretrain(model, ids, "mlm", 1)


# ----------------------------------------------------------------------------- data and cache

def test_task_split_by_docstring_and_no_leak_into_pretraining_text():
    """No docstring is in two splits, every class is in every split, and no validation or test
    docstring occurs (even as a substring) in the pretraining text; the train ones may."""
    task = docstring_task()
    tr, va, te = (set(s[0]) for s in (task.train, task.val, task.test))
    assert not (tr & va) and not (tr & te) and not (va & te)
    for split in (task.train, task.val, task.test):
        assert set(split[1]) == set(range(len(task.classes)))
    text = pretraining_text(task)
    assert not any(d in text for d in va | te)
    assert sum(d in text for d in tr) > 0.9 * len(tr)
    tok = PretrainTokenizer(text)
    X, y = task.tensors(tok, 64, "test")
    assert X.shape == (len(te), 64) and (X[:, 0] == tok.cls_id).all() and len(y) == len(te)


def test_tokenizer_specials_and_unknowns():
    tok = PretrainTokenizer("hello", n_sentinels=3)
    assert tok.special_ids == tuple(range(8)) and tok.sentinel_ids == (5, 6, 7)
    assert tok.decode(tok.encode("hole")) == "hole"
    assert tok.encode("hé")[1].item() == tok.unk_id
    batch = tok.encode_batch(["he", "hello"], 4)
    assert batch.tolist() == [[1, tok.stoi["h"], tok.stoi["e"], 0], [1] + tok.encode("hel").tolist()]
    assert PretrainTokenizer.from_state_dict(tok.state_dict()).itos == tok.itos
    assert pad_sequences([torch.tensor([1, 2]), torch.tensor([3])], -100).tolist() == [[1, 2], [3, -100]]


def test_pretrained_caches_atomically_and_reloads_the_same_weights(tmp_path, monkeypatch):
    """The first call trains and writes one .pt file (no temporary left behind); the second
    loads it and returns identical weights without training."""
    import dlbook.pretrain.checkpoints as checkpoints
    from dlbook.pretrain import PretrainTokenizer as Tok

    monkeypatch.setattr(checkpoints, "pretraining_text", lambda task: "some short text for a tiny test. " * 40)
    model, tok, info = pretrained("mlm", steps=2, block_size=16, n_layer=1, n_embd=16, batch_size=4,
                                  root=tmp_path, verbose=False)
    assert not info["cached"] and isinstance(tok, Tok)
    assert [p.name for p in tmp_path.iterdir()] == [info["path"].name]
    again, _, info2 = pretrained("mlm", steps=2, block_size=16, n_layer=1, n_embd=16, batch_size=4,
                                 root=tmp_path, verbose=False)
    assert info2["cached"] and info2["losses"] == info["losses"]
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_word_level_tokenizer_keeps_frequent_words_and_maps_the_rest_to_unk():
    """Word level: lower-cased words, numbers and single marks; words seen once are left out
    (-> [UNK]); the most frequent word gets the first id after the specials."""
    tok = PretrainTokenizer("The cat sat. the cat ran, the dog 42 42!", n_sentinels=2, level="word")
    assert tok.itos[tok.n_special] == "the"
    assert tok.tokens("The cat, 42!") == ["the", "cat", ",", "42", "!"]
    ids = tok.encode("the cat sat")
    assert tok.decode(ids[:2]) == "the cat" and ids[2].item() == tok.unk_id     # "sat" was seen once
    assert PretrainTokenizer.from_state_dict(tok.state_dict()).encode("the cat").tolist() == ids[:2].tolist()
    with pytest.raises(ValueError, match="level"):
        PretrainTokenizer("abc", level="byte")


def test_module_docstrings_do_not_depend_on_what_else_was_imported():
    """Submodules are skipped, so the task and the corpus are the same in a plain script and in a
    kernel that imported more (os.path is an attribute of os; its docstring must not be collected)."""
    import inspect
    import os

    from dlbook.pretrain import module_docstrings

    docs = module_docstrings("os")
    assert docs and inspect.getdoc(os.path) not in docs
    assert module_docstrings("os") == docs


def test_module_docstrings_can_skip_data_values_whose_docstring_is_their_types():
    """A list or enum member stored in a module or class has only its type's docstring, and such values
    depend on what else was imported (pytest adds a list to argparse.Namespace): data_values=False leaves
    them out (as pretraining_text does, so its text is the same in any process); classes stay."""
    import argparse

    list_doc = inspect.getdoc(list)
    argparse.Namespace._dlbook_probe = [1, 2]
    try:
        assert list_doc in module_docstrings("argparse", min_length=10)
        assert list_doc not in module_docstrings("argparse", min_length=10, data_values=False)
    finally:
        del argparse.Namespace._dlbook_probe
    assert inspect.getdoc(argparse.ArgumentParser) in module_docstrings("argparse", min_length=10, data_values=False)
