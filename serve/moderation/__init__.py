"""Content moderation: the policy (pure), the models (kserve.Model shape), media limits."""
