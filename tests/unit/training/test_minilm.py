"""The plain-torch MiniLM (training.models.minilm) is all-MiniLM-L6-v2: its pooled,
normalised output equals sentence-transformers' own encoding of the same texts, split or
whole, eager or TorchScript, and the serving path's chunked scoring equals one batch's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.models.minilm import (
    TOKENIZER_FILE,
    Tokenizer,
    build_classifier,
    classify,
    model_dir,
)

TEXTS = ["our team won the match last night", "x",
         "a much longer sentence about the weather, the trains and the price of bread " * 3]


@pytest.fixture(scope="module")
def parts() -> tuple[torch.nn.Module, Tokenizer]:
    torch.manual_seed(0)
    clf = build_classifier(n_labels=2, hidden=16, head_dropout=0.0, trainable_layers=2)
    return clf.eval(), Tokenizer(model_dir() / TOKENIZER_FILE, max_length=128)


def test_pooled_output_equals_sentence_transformers(parts) -> None:
    from training.text import MiniLMEncoder

    clf, tok = parts
    t = tok(TEXTS)
    with torch.no_grad():
        ids, mask = torch.from_numpy(t.ids), torch.from_numpy(t.mask)
        ours = clf.pooled(clf.lower(ids, mask), mask).numpy()
    np.testing.assert_allclose(ours, MiniLMEncoder().encode(TEXTS), atol=1e-5)


def test_split_whole_and_script_agree(parts) -> None:
    clf, tok = parts
    t = tok(TEXTS)
    ids, mask = torch.from_numpy(t.ids), torch.from_numpy(t.mask)
    with torch.no_grad():
        whole = clf(ids, mask)
        split = clf.upper(clf.lower(ids, mask), mask)
        scripted = torch.jit.script(clf)(ids, mask)
    torch.testing.assert_close(whole, split)
    torch.testing.assert_close(whole, scripted, atol=1e-5, rtol=1e-5)
    # padding does not change a text's score: chunked by length == one padded batch
    chunked = classify(clf, tok, TEXTS, chunk=1)
    np.testing.assert_allclose(chunked, torch.sigmoid(whole).numpy(), atol=1e-5)


def test_truncation_and_layer_choice(parts) -> None:
    _, tok = parts
    short = Tokenizer(model_dir() / TOKENIZER_FILE, max_length=8)
    assert short(TEXTS).ids.shape[1] == 8 and tok(TEXTS).ids.shape[1] > 8
    with pytest.raises(ValueError, match="trainable_layers"):
        build_classifier(n_labels=1, hidden=4, head_dropout=0.0, trainable_layers=7,
                         pretrained=False)
    clf = build_classifier(n_labels=1, hidden=4, head_dropout=0.0, trainable_layers=2,
                           pretrained=False)
    clf.freeze_lower()
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert all(n.startswith(("layers.4.", "layers.5.", "head.")) for n in trainable)
    assert {p for p in clf.trainable_parameters()} == {
        p for p in clf.parameters() if p.requires_grad}
