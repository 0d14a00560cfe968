"""Fault injection for the uploader's links: a TCP proxy that cuts, stalls, refuses, throttles
and delays connections on request, from tests (``FaultProxy``) or the command line
(``python -m uploader_chaos proxy``).
"""

from __future__ import annotations

from .proxy import BOTH, DOWNSTREAM, UPSTREAM, FaultProxy, ProxyStats

__all__ = ["BOTH", "DOWNSTREAM", "UPSTREAM", "FaultProxy", "ProxyStats"]
