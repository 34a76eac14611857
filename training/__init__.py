"""Funnel training: data, features, models, Ray Tune training and the artifact bundle.

`training` is the bottom of the dependency graph (serve -> monitoring -> training); it never
imports `serve` or `monitoring`.
"""
