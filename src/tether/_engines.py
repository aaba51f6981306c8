"""Which engine serves the app and the debug listeners: the one place that names it.

Apart from :mod:`tether.engine` (the contract) so that an implementation can
import the contract without the contract importing it back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tether.engine import EngineFactory

__all__ = ["http_engine"]


def http_engine() -> EngineFactory:
    """The engine tether serves with: uvicorn's protocols under tether's drain."""
    from tether.serving import HttpServer

    return HttpServer
