"""Canary and shadow rollout: config, sticky assignment, agreement, guardrails."""
