"""The human-review queue: items the moderation policy sent to `review`, reviewer decisions,
and the append-only audit of every moderation decision."""
