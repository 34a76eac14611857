"""The HTTP edge: one router module per concern (feed and events, moderation, review,
rollout admin, health and metrics, the Open Inference Protocol), assembled by
`asgi.build_http_app`. Each route parses, calls a service (`serve.services`), maps errors."""
