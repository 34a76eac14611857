"""Torch models: two-tower retrieval, multi-task ranker, multi-label moderation head."""
