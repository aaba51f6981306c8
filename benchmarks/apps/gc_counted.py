"""fastapi_model's app, with the garbage collector's runs counted (``GET /gc``).

``GET /gc?reset=1`` starts counting afresh; ``GET /gc`` returns collections by
generation and the seconds they took since then. The callback costs about a
microsecond per collection, not per request.
"""

import gc
import time
from typing import Any

from fastapi_model import app

_counts = [0, 0, 0]
_seconds = [0.0]
_began = [0.0]


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _began[0] = time.perf_counter()
    else:
        _counts[info["generation"]] += 1
        _seconds[0] += time.perf_counter() - _began[0]


gc.callbacks.append(_on_gc)


@app.get("/gc")
def collections(reset: bool = False) -> dict[str, Any]:
    if reset:
        _counts[:] = [0, 0, 0]
        _seconds[0] = 0.0
    return {"collections": _counts, "seconds": _seconds[0]}
