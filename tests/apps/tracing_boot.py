"""What a tracer's bootstrap does when a gunicorn config imports it in post_worker_init.

Like ddtrace's ``sitecustomize``, it patches a library the app has already
imported, in place (here ``json.dumps``, counting calls), and says in which
process it ran (a line in $BOOT_LOG).
"""

import json
import os
from typing import Any

CALLS = 0
_dumps = json.dumps


def _counted(obj: Any, *args: Any, **kwargs: Any) -> str:
    global CALLS
    CALLS += 1
    return _dumps(obj, *args, **kwargs)


json.dumps = _counted
with open(os.environ["BOOT_LOG"], "a") as f:
    f.write(f"{os.getpid()}\n")
