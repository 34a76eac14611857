"""The two-tower model at serving time: user tower online, item vectors in faiss HNSW.

Loaded from a verified bundle. The user tower is TorchScript, fed by the same
`FeatureTransform.user_features` that built its training inputs; item vectors live in the
bundle's HNSW index, which also answers `item_vectors` (for retrieval scores of candidates
other sources proposed, and for MMR diversity) without keeping a second copy in memory.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch

from funnel.contracts.bundle import VerifiedBundle
from funnel.contracts.model_io import USER_KEYS
from serve.types import UserRow
from training.features import FeatureTransform, UserAlignment


class TwoTowerRetrieval:
    """User embedding, ANN search and item-vector lookup for one bundle."""

    def __init__(self, bundle: VerifiedBundle, features: FeatureTransform, *,
                 ef_search: int | None = None) -> None:
        self.features = features
        self.user_tower = torch.jit.load(str(bundle.file("models/user_tower.pt"))).eval()
        self.index = faiss.read_index(str(bundle.file("index/items.faiss")))
        if ef_search is not None:
            faiss.ParameterSpace().set_index_parameter(self.index, "efSearch", ef_search)
        self.item_ids = np.load(bundle.file("index/item_ids.npy"), allow_pickle=False)
        self._order = np.argsort(self.item_ids, kind="stable")
        self._sorted = self.item_ids[self._order]

    @torch.no_grad()
    def user_vector(self, user: UserRow, aligned: UserAlignment | None = None,
                    recent_clicks: np.ndarray | None = None) -> np.ndarray:
        """Unit vector [dim] of one user's catalog row. `aligned`: this retrieval's
        features laid out by the catalog's users (`FeatureTransform.align_users`), read at
        `user.row` instead of computed; the inputs are the same. `recent_clicks`: posts
        clicked since the bundle was built (the online feature store), oldest first,
        appended to the history input."""
        arrays = (self.features.user_features_at(aligned, user.row)
                  if aligned is not None and user.row >= 0
                  else self.features.user_features(user.columns()))
        if recent_clicks is not None and len(recent_clicks):
            arrays = self.features.with_recent_clicks(arrays, recent_clicks)
        out = self.user_tower(*(torch.from_numpy(arrays[k]) for k in USER_KEYS))
        return out[0].numpy().astype(np.float32)

    def search(self, user_vec: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(item ids, inner products) of the k nearest items, best first."""
        rows, scores = self.search_positions(user_vec, k)
        return self.item_ids[rows], scores

    def search_positions(self, user_vec: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(index rows, inner products) of the k nearest items, best first; `item_ids[row]`
        is the item."""
        scores, rows = self.index.search(user_vec.reshape(1, -1), k)
        ok = rows[0] >= 0
        return rows[0][ok], scores[0][ok]

    def rows_of(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index rows of item ids and a mask of those the index holds."""
        ids = np.asarray(item_ids, dtype=np.int64)
        pos = np.searchsorted(self._sorted, ids).clip(0, max(len(self._sorted) - 1, 0))
        found = self._sorted[pos] == ids
        return self._order[pos], found

    @property
    def sorted_item_ids(self) -> np.ndarray:
        """The index's item ids, sorted: `vectors_at` takes positions in this array."""
        return self._sorted

    def vectors_at(self, positions: np.ndarray) -> np.ndarray:
        """[n, dim] vectors of the items at `positions` in `sorted_item_ids`; zeros for -1
        (serving maps catalog rows to positions once, `Catalog.row_map`)."""
        out = np.zeros((len(positions), self.index.d), dtype=np.float32)
        ok = positions >= 0
        if ok.any():
            out[ok] = self.index.reconstruct_batch(self._order[positions[ok]].astype(np.int64))
        return out

    def item_vectors(self, item_ids: np.ndarray) -> np.ndarray:
        """[n, dim] stored item vectors; zeros for ids the index does not hold."""
        rows, found = self.rows_of(item_ids)
        out = np.zeros((len(rows), self.index.d), dtype=np.float32)
        if found.any():
            out[found] = self.index.reconstruct_batch(rows[found].astype(np.int64))
        return out
