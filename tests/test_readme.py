"""The README's example runs and says what the README says it says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_group_example_runs() -> None:
    """The Group example in the README runs as shown and stops because `job` returned."""
    (example,) = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
    result = subprocess.run(
        [sys.executable, "-c", example], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        r"served on port \d+; stopped because member 'job' returned\n", result.stdout
    ), result.stdout
