"""The online feature store: what users did seconds ago, in Redis, merged over the bundle's
features at serving time (docs/features.md). `layout.py`: keys, bounds, decay (pure);
`store.py`: the Redis client serving reads and event writes; `rebuild.py`: refilling it from
the impression log."""
