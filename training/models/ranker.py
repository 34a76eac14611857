"""Multi-task ranker: a shared bottom MLP with one logistic head per engagement task.

Inputs are the dense features of `funnel.contracts.model_io.RANKER_DENSE` (counters, rates, time,
the two-tower retrieval score, text affinity, the follows-author flag) and embeddings of
hashed user/item ids and categoricals. The user-by-item cross enters through the retrieval
score, the text affinity and an explicit elementwise product of the user and item id
embeddings. The output is one logit per task in `TASKS` order.
"""

from __future__ import annotations

import torch
from torch import nn

from funnel.contracts.model_io import TASKS


class MultiTaskRanker(nn.Module):
    def __init__(self, *, n_dense: int, id_buckets: int, n_topic: int, n_modality: int,
                 n_age: int, emb_dim: int, hidden: int, n_layers: int, dropout: float) -> None:
        super().__init__()
        self.user = nn.Embedding(id_buckets, emb_dim)
        self.item = nn.Embedding(id_buckets, emb_dim)
        self.topic = nn.Embedding(n_topic, 8)
        self.modality = nn.Embedding(n_modality, 4)
        self.age = nn.Embedding(n_age, 4)
        self.dense_norm = nn.BatchNorm1d(n_dense)
        layers: list[nn.Module] = []
        width = n_dense + emb_dim * 3 + 16
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        self.bottom = nn.Sequential(*layers)
        self.heads = nn.Linear(width, len(TASKS))

    def forward(self, dense: torch.Tensor, user_hash: torch.Tensor, item_hash: torch.Tensor,
                topic: torch.Tensor, modality: torch.Tensor, age_band: torch.Tensor
                ) -> torch.Tensor:
        u = self.user(user_hash)
        i = self.item(item_hash)
        x = torch.cat([self.dense_norm(dense), u, i, u * i, self.topic(topic),
                       self.modality(modality), self.age(age_band)], dim=1)
        return self.heads(self.bottom(x))


def multitask_loss(logits: torch.Tensor, labels: torch.Tensor,
                   task_weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum of per-task binary cross-entropies."""
    per_task = nn.functional.binary_cross_entropy_with_logits(
        logits, labels, reduction="none").mean(dim=0)
    return (per_task * task_weights).sum()
