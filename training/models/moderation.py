"""Multi-label moderation head over all-MiniLM-L6-v2 sentence embeddings.

Harm labels are rare (~3 % of posts, split over six labels), so plain BCE learns to say
"no" to everything. Two remedies, chosen by config: class-weighted BCE (positive weight =
negatives / positives per label, capped) or focal loss (Lin et al., 2017), which scales each
example's loss by (1 - p_t) ** gamma so easy negatives stop dominating.
"""

from __future__ import annotations

import torch
from torch import nn


class ModerationHead(nn.Module):
    def __init__(self, *, text_dim: int, hidden: int, n_labels: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(text_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, n_labels))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net(embedding)


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, *, gamma: float,
               alpha: float = 0.25) -> torch.Tensor:
    p = torch.sigmoid(logits)
    ce = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    p_t = p * labels + (1 - p) * (1 - labels)
    a_t = alpha * labels + (1 - alpha) * (1 - labels)
    return (a_t * (1 - p_t) ** gamma * ce).mean()


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor,
                 pos_weight: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits, labels,
                                                          pos_weight=pos_weight)
