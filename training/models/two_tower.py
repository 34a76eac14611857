"""Two-tower retrieval model trained with in-batch negatives and logQ correction.

Each tower maps its side's features to an L2-normalised vector; the score is their dot
product over a temperature. In a batch of B (user, clicked item) pairs, every other item is a
negative. Popular items turn up as in-batch negatives more often than their share of the
catalogue, which would push them down; the logQ correction (Yi et al., 2019) subtracts
log q(item), the item's sampling probability, from each logit before the softmax.
"""

from __future__ import annotations

import torch
from torch import nn


def _mlp(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, out_dim))


class UserTower(nn.Module):
    """user id hash, age band, country, language, text profile, click history -> unit vector.

    The history is a fixed-length row of item hashes (0 = padding) pooled by a masked mean of
    their embeddings. In training, the positive item is passed as `exclude` and masked out of
    its own user's history, so the tower cannot learn "the target is in the history", a
    shortcut that would not exist when it scores items the user has not seen.
    """

    def __init__(self, *, id_buckets: int, n_age: int, n_country: int, n_language: int,
                 text_dim: int, emb_dim: int, hidden: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.user = nn.Embedding(id_buckets, emb_dim)
        self.age = nn.Embedding(n_age, 8)
        self.country = nn.Embedding(n_country, 8)
        self.language = nn.Embedding(n_language, 8)
        self.text = nn.Linear(text_dim, emb_dim)
        self.history = nn.Embedding(id_buckets, emb_dim, padding_idx=0)
        self.mlp = _mlp(emb_dim * 3 + 24, hidden, out_dim, dropout)

    def forward(self, user_hash: torch.Tensor, age_band: torch.Tensor, country: torch.Tensor,
                language: torch.Tensor, profile: torch.Tensor, history: torch.Tensor,
                exclude: torch.Tensor | None = None) -> torch.Tensor:
        mask = history != 0
        if exclude is not None:
            mask = mask & (history != exclude.unsqueeze(1))
        w = mask.to(self.history.weight.dtype).unsqueeze(2)
        pooled = (self.history(history) * w).sum(1) / w.sum(1).clamp(min=1.0)
        x = torch.cat([self.user(user_hash), self.age(age_band), self.country(country),
                       self.language(language), self.text(profile), pooled], dim=1)
        return nn.functional.normalize(self.mlp(x), dim=1)


class ItemTower(nn.Module):
    """item id hash, author hash, topic, modality, text embedding -> unit vector."""

    def __init__(self, *, id_buckets: int, author_buckets: int, n_topic: int, n_modality: int,
                 text_dim: int, emb_dim: int, hidden: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.item = nn.Embedding(id_buckets, emb_dim)
        self.author = nn.Embedding(author_buckets, emb_dim)
        self.topic = nn.Embedding(n_topic, 16)
        self.modality = nn.Embedding(n_modality, 4)
        self.text = nn.Linear(text_dim, emb_dim)
        self.mlp = _mlp(emb_dim * 3 + 20, hidden, out_dim, dropout)

    def forward(self, item_hash: torch.Tensor, author_hash: torch.Tensor, topic: torch.Tensor,
                modality: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.item(item_hash), self.author(author_hash), self.topic(topic),
                       self.modality(modality), self.text(text)], dim=1)
        return nn.functional.normalize(self.mlp(x), dim=1)


class TwoTower(nn.Module):
    def __init__(self, user_tower: UserTower, item_tower: ItemTower, *,
                 temperature: float) -> None:
        super().__init__()
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.temperature = temperature

    def forward(self, user_hash: torch.Tensor, age_band: torch.Tensor, country: torch.Tensor,
                language: torch.Tensor, profile: torch.Tensor, history: torch.Tensor,
                item_hash: torch.Tensor, author_hash: torch.Tensor, topic: torch.Tensor,
                modality: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both towers in one call, so that DistributedDataParallel sees the whole graph; the
        positive item is masked out of its user's history."""
        return (self.user_tower(user_hash, age_band, country, language, profile, history,
                                item_hash),
                self.item_tower(item_hash, author_hash, topic, modality, text))


def in_batch_logq_loss(user_vec: torch.Tensor, item_vec: torch.Tensor, log_q: torch.Tensor,
                       *, temperature: float, item_ids: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """Sampled-softmax loss over in-batch negatives with logQ correction.

    `log_q[j]` is the log sampling probability of batch item j. Where the same item occurs
    twice in a batch, its duplicate is masked out as a negative (it is a positive too).
    """
    logits = user_vec @ item_vec.T / temperature - log_q.unsqueeze(0)
    if item_ids is not None:
        dup = item_ids.unsqueeze(0) == item_ids.unsqueeze(1)
        dup.fill_diagonal_(False)
        logits = logits.masked_fill(dup, float("-inf"))
    target = torch.arange(len(user_vec), device=user_vec.device)
    return nn.functional.cross_entropy(logits, target)
