"""What the metrics accept, with no imports: the config checks (``i2vedit.config``) read it
before any heavy module (OpenCV, torch) loads, and ``i2vedit.metrics`` uses the same list."""

from __future__ import annotations

#: ``metrics.flow``: the optical-flow methods of ``i2vedit.metrics.optical_flow``.
FLOW_METHODS = ("auto", "farneback", "raft")
