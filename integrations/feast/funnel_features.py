"""Funnel's online features as Feast objects, for teams that run Feast.

These views mirror the per-user and per-item features that Funnel keeps in Redis itself
(key layout in docs/features.md): a user's recent clicks, the posts they saw and the authors
they reported, and each post's time-decayed engagement counts. Funnel's serving path does not
read them through Feast.

Feast's Redis layout is its own: one hash per entity, keyed by the serialized entity key plus
the project name, with murmur3-hashed "view:feature" field names and protobuf-encoded values.
Funnel's own keys are plain (`funnel:f:u:{user}:h`, ...), so a Feast reader and Funnel's reader
never share keys, even in the same Redis database. A team that runs Feast pushes the same
events to the push sources below (`FeatureStore.push`) and reads them with
`get_online_features`.

Each push source is backed by a FileSource: the offline copy of the pushed rows that
`PushMode.ONLINE_AND_OFFLINE` appends to and `feast materialize` reads.
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float64, Int64

TIMESTAMP_FIELD = "event_timestamp"
HISTORY_LEN = 50  # the last clicked posts kept, newest last
SEEN_CAP = 1000  # posts seen in the last SEEN_DAYS, at most this many
SEEN_DAYS = 7
HALF_LIFE_H = 6.0  # of the engagement counts
ENGAGEMENT_EVENTS = ("click", "like", "comment", "share", "hide", "report", "dwell")

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.INT64,
    description="A Funnel user (the feed's viewer).",
)

item = Entity(
    name="item",
    join_keys=["item_id"],
    value_type=ValueType.INT64,
    description="A Funnel post.",
)

user_recent_activity_push = PushSource(
    name="user_recent_activity_push",
    batch_source=FileSource(
        name="user_recent_activity_file",
        path="data/user_recent_activity.parquet",
        timestamp_field=TIMESTAMP_FIELD,
    ),
    description="Each row replaces a user's three lists, as Funnel's event writer keeps them.",
)

item_engagement_push = PushSource(
    name="item_engagement_push",
    batch_source=FileSource(
        name="item_engagement_file",
        path="data/item_engagement.parquet",
        timestamp_field=TIMESTAMP_FIELD,
    ),
    description="Each row replaces a post's decayed counts, as of its event_timestamp.",
)

user_recent_activity = FeatureView(
    name="user_recent_activity",
    entities=[user],
    ttl=timedelta(days=SEEN_DAYS),
    schema=[
        Field(
            name="history",
            dtype=Array(Int64),
            description=f"The last {HISTORY_LEN} clicked post ids, newest last.",
        ),
        Field(
            name="seen",
            dtype=Array(Int64),
            description=f"Post ids seen in the last {SEEN_DAYS} days, at most {SEEN_CAP}.",
        ),
        Field(
            name="reported_authors",
            dtype=Array(Int64),
            description="Author ids the user reported.",
        ),
    ],
    online=True,
    source=user_recent_activity_push,
    tags={"owner": "funnel"},
)

item_engagement = FeatureView(
    name="item_engagement",
    entities=[item],
    ttl=timedelta(days=2),
    schema=[
        Field(
            name=event,
            dtype=Float64,
            description=f"Time-decayed {event} count (half-life {HALF_LIFE_H:g} h).",
        )
        for event in ENGAGEMENT_EVENTS
    ],
    online=True,
    source=item_engagement_push,
    tags={"owner": "funnel"},
)
