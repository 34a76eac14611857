"""Every name list that more than one package reads, written once: config validation
(serve/config.py), the Prometheus label sets pre-created at start (monitoring/metrics.py),
the event API and the experiment report, and the training schema all take them from here.

Adding a candidate source or a filter: its name here, its class in serve/sources/ or
serve/filters.py (a test checks the registries name exactly these).
"""

from __future__ import annotations

# candidate generators (serve/sources/): the registry SOURCES there has exactly these keys
SOURCES: tuple[str, ...] = ("ann", "social", "trending", "fresh")
# feed filters (serve/filters.py FILTERS), in the default run order
FILTERS: tuple[str, ...] = ("excluded", "seen", "blocked_author", "locale", "moderation")
# what POST /v1/events accepts, and what the experiment report counts
EVENT_TYPES: tuple[str, ...] = ("click", "like", "comment", "share", "hide", "report", "dwell")
# harm labels: the `label_<name>` columns of the posts table, the text head's outputs
HARM_LABELS: tuple[str, ...] = ("abuse", "hate", "nudity", "violence", "misinformation",
                                "spam")
# stages a feed or moderation response can name in `degraded` (funnel_degraded_total{stage})
DEGRADED_STAGES: tuple[str, ...] = ("ranker", *(f"source:{s}" for s in SOURCES),
                                    "moderation_text", "moderation_image", "interleaving",
                                    "review_queue", "features")
