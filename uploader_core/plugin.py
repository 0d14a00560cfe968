"""Markers for plugin authors.

A plugin is a module or object with functions marked by :data:`hookimpl`, named after the
specifications in :mod:`uploader_core.hookspecs`. Third-party plugins are found through the
``uploader.plugins`` entry-point group; in ``pyproject.toml``::

    [project.entry-points."uploader.plugins"]
    my_plugin = "my_package.uploader_plugin"

and in ``my_package/uploader_plugin.py``::

    from uploader_core import hookimpl

    @hookimpl
    def post_archive(job):
        print("archived", job.event_id)

Implementations must not give their parameters default values: pluggy passes only the
arguments an implementation names, and never fills in defaults.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "uploader"
ENTRY_POINT_GROUP = "uploader.plugins"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
