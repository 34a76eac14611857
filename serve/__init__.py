"""Funnel serving: the Ray Serve app, its clients and the `funnel` command line.

Nothing imports `serve`; it sits on top of `monitoring` and `training`.
"""
