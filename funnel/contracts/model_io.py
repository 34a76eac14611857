"""The models' inputs and outputs, as training writes them and serving feeds them: the
tower inputs, the ranker's input tensors and task heads, and the default dense-feature
layout (a bundle's own layout is in its manifest: `models.ranker.dense_features`)."""

from __future__ import annotations

# The two-tower's inputs, in the order its towers take them.
USER_KEYS: tuple[str, ...] = ("user_hash", "age_band", "country", "language", "profile",
                              "history")
ITEM_KEYS: tuple[str, ...] = ("item_hash", "author_hash", "topic", "modality", "text")

# The ranker's input tensors (Triton's and the Open Inference Protocol's names) and its task
# heads, in the order of its output columns.
RANKER_KEYS: tuple[str, ...] = ("dense", "user_hash", "item_hash", "topic", "modality",
                                "age_band")
TASKS: tuple[str, ...] = ("click", "like", "comment", "share", "hide")

# Every dense feature the ranker's feature code computes, in the default order.
RANKER_DENSE: tuple[str, ...] = (
    "hour_sin", "hour_cos", "dow_sin", "dow_cos", "log_post_age_h",
    "post_ctr", "log_post_imps", "author_ctr", "user_ctr", "log_user_clicks",
    "user_topic_ctr", "follows_author", "retrieval_score", "text_affinity",
)
