"""``tether ctl``: talk to a running master over its control socket.

Every subcommand sends one request and prints the replies. ``reload`` and
``upgrade`` wait for the outcome, printing each step, and exit 1 if it
failed; a master that cannot be reached is exit code 2 with one line saying
why.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import click

from tether._control import request
from tether.errors import ConfigError

__all__ = ["ctl", "format_status"]


def _run(path: str, req: dict[str, Any], limit: float, *, as_json: bool = False) -> dict[str, Any]:
    """Send ``req``; echo progress lines; return the final reply."""

    async def talk() -> dict[str, Any]:
        final: dict[str, Any] = {}
        async for message in request(path, req, limit):
            if "progress" in message and not as_json:
                click.echo(f"{time.strftime('%H:%M:%S')} {message['progress']}")
            if message.get("done"):
                final = message
        return final

    try:
        return asyncio.run(talk())
    except ConfigError as exc:
        click.echo(f"tether ctl: error: {exc}", err=True)
        sys.exit(2)
    except TimeoutError:
        click.echo(f"tether ctl: error: no answer from {path} within {limit:g}s", err=True)
        sys.exit(1)


def _finish(reply: dict[str, Any], success: str) -> None:
    if reply.get("ok"):
        click.echo(success.format(**reply))
        return
    click.echo(f"tether ctl: failed: {reply.get('error', 'unknown error')}", err=True)
    sys.exit(1)


@click.group()
@click.option(
    "--control",
    envvar="TETHER_CONTROL",
    required=True,
    metavar="PATH",
    help="The master's control socket (its --control). Also read from $TETHER_CONTROL.",
)
@click.option(
    "--timeout",
    type=float,
    default=600.0,
    show_default=True,
    metavar="S",
    help="Give up waiting for the master after S seconds.",
)
@click.pass_context
def ctl(ctx: click.Context, control: str, timeout: float) -> None:
    """Control a running master (tether run --workers N --control PATH)."""
    ctx.obj = {"control": control, "timeout": timeout}


@ctl.command()
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.pass_obj
def status(obj: dict[str, Any], as_json: bool) -> None:
    """Show the master, each generation and worker, and the last reload."""
    reply = _run(obj["control"], {"cmd": "status"}, obj["timeout"], as_json=True)
    if not reply.get("ok"):
        _finish(reply, "")
    if as_json:
        click.echo(json.dumps(reply["status"], indent=2))
    else:
        click.echo(format_status(reply["status"]))


@ctl.command()
@click.pass_obj
def reload(obj: dict[str, Any]) -> None:
    """Start a new generation; wait until it serves and the old one has drained."""
    reply = _run(obj["control"], {"cmd": "reload"}, obj["timeout"])
    _finish(reply, "reload done: generation {generation} serving")


@ctl.command()
@click.pass_obj
def upgrade(obj: dict[str, Any]) -> None:
    """Replace the master itself with a new one (like USR2); wait for the handover."""
    reply = _run(obj["control"], {"cmd": "upgrade"}, obj["timeout"])
    _finish(reply, "upgrade done: master {new_master} serving")


@ctl.command()
@click.pass_obj
def stop(obj: dict[str, Any]) -> None:
    """Stop the master gracefully (like TERM)."""
    _finish(_run(obj["control"], {"cmd": "stop"}, obj["timeout"]), "{message}")


@ctl.command()
@click.argument("n", type=click.IntRange(min=1))
@click.pass_obj
def scale(obj: dict[str, Any], n: int) -> None:
    """Run N workers (applied between reloads)."""
    _finish(_run(obj["control"], {"cmd": "scale", "n": n}, obj["timeout"]), "{message}")


@ctl.command()
@click.pass_obj
def tasks(obj: dict[str, Any]) -> None:
    """Print every worker's asyncio task dump."""
    reply = _run(obj["control"], {"cmd": "tasks"}, obj["timeout"])
    if not reply.get("ok"):
        _finish(reply, "")
    for entry in reply["dumps"]:
        click.echo(
            f"=== worker {entry['worker']} (pid {entry['pid']}, generation {entry['generation']})"
        )
        click.echo(entry.get("text") or entry.get("error", ""))


def format_status(status: dict[str, Any]) -> str:
    """The status reply as a few aligned lines for a terminal."""
    master = status["master"]
    # .get: a master started by an older tether (before an upgrade) may not send these.
    extra = f" ({master['reloads_failed']} failed)" if master.get("reloads_failed") else ""
    if master.get("reloading"):
        extra += "; reloading now" + (", one more queued" if master.get("reload_queued") else "")
    if master.get("restarts"):
        extra += f"; {master['restarts']} worker restart(s)"
    lines = [
        f"master {master['pid']}: {master['state']}; {master['workers']} worker(s) wanted; "
        f"up {_age(master['uptime'])}; {master['reloads']} reload(s){extra}"
    ]
    for gen in status["generations"]:
        lines.append(f"  generation {gen['number']} ({gen['state']}, age {_age(gen['age'])})")
        for w in gen["workers"]:
            lines.append(
                f"    worker {w['id']:<4} pid {w['pid']:<8} {w['state']:<9} "
                f"age {_age(w['age']):<8} restarts {w['restarts']}"
            )
    last = status.get("last_reload")
    if last:
        when = time.strftime("%H:%M:%S", time.localtime(last.get("finished_at", 0)))
        if last.get("ok"):
            lines.append(
                f"last reload ({when}): ok, generation {last['generation']} "
                f"ready after {last['ready_after']:.2f}s, done in {last['seconds']:.2f}s"
            )
        else:
            first = str(last.get("error", "")).splitlines()[0]
            lines.append(f"last reload ({when}): FAILED: {first}")
    return "\n".join(lines)


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"
