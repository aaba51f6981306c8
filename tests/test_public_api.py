"""The public API stays small, importable and documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tether
import tether.leaks

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_every_exported_name_exists_and_is_in_the_readme() -> None:
    """Each name in tether.__all__ is importable and named in the README."""
    missing = [name for name in tether.__all__ if f"`{name}" not in README]
    assert not missing, f"not documented in README.md: {missing}"
    for name in tether.__all__:
        assert getattr(tether, name) is not None


def test_leaks_api_is_in_the_readme() -> None:
    """Each name in tether.leaks.__all__ is named in the README."""
    missing = [name for name in tether.leaks.__all__ if name not in README]
    assert not missing, f"not documented in README.md: {missing}"


def test_every_cli_option_is_in_the_readme() -> None:
    """Each option `tether run --help` and `tether ctl --help` list appears in the README."""
    for command in (["run", "--help"], ["ctl", "--help"]):
        out = subprocess.run(
            [sys.executable, "-m", "tether", *command], capture_output=True, text=True, check=True
        ).stdout
        options = set(re.findall(r"(--[a-z][a-z-]+)", out)) - {"--help"}
        missing = sorted(o for o in options if f"`{o}" not in README)
        assert not missing, f"`tether {command[0]}` options not in README.md: {missing}"


def test_every_exported_name_has_a_lazy_home() -> None:
    """Each name in tether.__all__ is loaded from its module on first use, and only those."""
    assert sorted(tether._HOME) == sorted(tether.__all__)
    for name, home in tether._HOME.items():
        assert getattr(tether, name) is getattr(__import__(home, fromlist=[name]), name)


def test_protocol_modules_load_no_http_engine() -> None:
    """`import tether.notify` and the ctl client import neither uvicorn nor prometheus_client."""
    code = (
        "import sys, tether.notify, tether.ctl\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('uvicorn', 'prometheus_client', 'uvloop', 'httptools', 'a2wsgi'))\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
