"""Funnel monitoring: metrics, the impression log, drift monitors and alert rules.

Imports `training` (for the bundle's reference data), never `serve`.
"""
