"""Funnel's command-line root (`funnel ...`); the platform itself lives in training/, serve/
and monitoring/."""
