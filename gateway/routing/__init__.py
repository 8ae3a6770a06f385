"""Routing: the canonical request path and the route table (first match in file order)."""

from __future__ import annotations

from gateway.routing.path import NORMALIZE_OPTIONS, canonical_path
from gateway.routing.table import Candidate, RouteMatch, RouteTable, normalize_host

__all__ = ["NORMALIZE_OPTIONS", "Candidate", "RouteMatch", "RouteTable", "canonical_path", "normalize_host"]
