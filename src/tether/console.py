"""The debug console at ``/debug/``: one page a person can read at a glance.

One page, rendered on the server from plain data, with no external assets
and no build step (the page works on a cluster with no way out): tables,
``<details>`` for stacks, and live charts (:mod:`tether._charts`: requests/s,
latency, in flight, loop lag per worker, reloads on the time axis) drawn by a
small inline script from ``/debug/stats``. ``?refresh=SECONDS`` refreshes the
tables in place (the charts keep their history; without JavaScript, a
``<meta http-equiv=refresh>`` reloads the page). The same renderer serves a
single process and a master; the data it takes is also served as JSON
(``/debug/?format=json``), which is how a master collects it from each worker.

The data: ``{"title": str, "processes": [process, ...], "reloads": [outcome, ...]}``
where a process is ``{"role", "id", "pid", "generation", "state", "age",
"restarts", "rss"}`` and may carry ``"members"`` (names), ``"requests"``
(``{"method", "path", "age"}``), ``"background"`` (``{"name",
"started_by", "adopted", "age"}``), ``"tasks"`` (the grouped task dump, each
group named by what it ``runs`` and marked ``own`` when it is tether's own)
or ``"error"`` (why it could not be asked).

Invariant: everything that came from the application (paths, task names,
stacks) is escaped; the page never contains markup it did not write, and the
script sets only text and numbers.
"""

from __future__ import annotations

import asyncio
import html
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from tether._charts import CHARTS_HTML, CHARTS_STYLE

if TYPE_CHECKING:
    from tether.metrics import WorkerTarget

__all__ = ["console_page", "gather_console", "master_console", "master_stats", "render"]

#: GET ``target`` from the unix socket ``path`` within ``timeout``: status and body.
Fetch = Callable[[str, str, float], Awaitable[tuple[int, bytes]]]
#: A page of the debug server: query -> (status, content type, body).
Page = Callable[[dict[str, list[str]]], Awaitable[tuple[int, str, bytes]]]


def console_page(data: Callable[[], Awaitable[dict[str, Any]]]) -> Page:
    """The ``/debug/`` page over ``data``: HTML, or JSON with ``?format=json``.

    Given as ``DebugSource(pages={"": console_page(data)})``; the debug server
    has checked the token before it is called. ``?refresh=SECONDS`` adds the
    auto-refresh, and links carry the ``?token=`` the page was opened with.
    """

    async def page(query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        got = await data()
        if query.get("format") == ["json"]:
            return 200, "application/json", json.dumps(got, default=str).encode()
        token = query["token"][0] if "token" in query else None
        refresh = query.get("refresh", [""])[0]
        html_page = render(got, token=token, refresh=int(refresh) if refresh.isdigit() else 0)
        return 200, "text/html; charset=utf-8", html_page.encode()

    return page


async def gather_console(
    workers: list[WorkerTarget],
    fetch: Fetch,
    limit: float = 1.0,
    target: str = "/debug/?format=json",
) -> list[dict[str, Any]]:
    """Each worker's own entry at ``target``, asked in parallel; one that cannot answer says why."""

    async def one(w: WorkerTarget) -> dict[str, Any]:
        entry: dict[str, Any] = {"role": "worker", "id": w.id, "pid": w.pid}
        try:
            status, body = await fetch(w.debug_path, target, limit)
            if status != 200:
                return entry | {"error": f"its debug server answered {status}"}
            return dict(json.loads(body)["processes"][0]) | {"id": w.id}
        except TimeoutError:
            return entry | {"error": f"no answer within {limit:g}s"}
        except (OSError, ValueError, KeyError, IndexError, asyncio.IncompleteReadError) as exc:
            return entry | {"error": f"no answer: {exc or type(exc).__name__}"}

    return list(await asyncio.gather(*(one(w) for w in workers)))


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d1d1f;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.6em 0 .4em}
table{border-collapse:collapse;background:#fff;min-width:40%}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f0f0f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
pre{margin:.3em 0;font-size:12px;white-space:pre-wrap}.muted{color:#777}
.bad{color:#b00020}.ok{color:#0a7d32}nav a{margin-right:1em}
"""

# With ?refresh=N: the tables are fetched again and swapped in place, so the charts keep
# their history (the HTML comes from this same renderer: already escaped).
_REFRESH = """<script>
(() => {
  const every = %d * 1000;
  async function again() {
    try {
      const answer = await fetch(location.href, {cache: "no-store"});
      const page = new DOMParser().parseFromString(await answer.text(), "text/html");
      const fresh = page.getElementById("tables");
      if (answer.ok && fresh) document.getElementById("tables").replaceWith(fresh);
    } catch (e) { /* the next round tries again */ }
    setTimeout(again, every);
  }
  setTimeout(again, every);
})();
</script>"""


async def master_console(
    master: dict[str, Any],
    workers: list[WorkerTarget],
    fetch: Fetch,
    *,
    title: str,
    reloads: list[dict[str, Any]],
) -> dict[str, Any]:
    """The console's data in master mode: the master, then each worker as it describes itself.

    ``master`` is the master's own process entry; each worker's entry is what
    its ``/debug/?format=json`` says, with the master's view of it (generation,
    restarts, state) added.
    """
    known = {w.id: w for w in workers}
    processes = [master]
    for entry in await gather_console(workers, fetch):
        w = known[entry["id"]]
        entry.update(generation=w.generation, restarts=w.restarts)
        own = entry.get("state")
        entry["state"] = f"{w.state} ({own})" if own and "error" not in entry else w.state
        processes.append(entry)
    return {
        "title": title,
        "summary": f"master {master.get('pid')}, {master.get('state')}",
        "processes": processes,
        "reloads": reloads,
        "extra": ["workers"],
    }


async def master_stats(
    workers: list[WorkerTarget], fetch: Fetch, limit: float = 0.5
) -> list[dict[str, Any]]:
    """Each live worker's ``/debug/stats`` sample; a worker that is silent is left out."""
    entries = await gather_console(workers, fetch, limit, target="/debug/stats")
    return [e for e in entries if "sample" in e]


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _age(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.1f}h"


def _bytes(n: object) -> str:
    if not isinstance(n, int | float) or n <= 0:
        return ""
    return f"{n / 2**20:.1f} MiB"


def _table(headers: Iterable[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f'<p class="muted">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _td(value: object, numeric: bool = False, cls: str = "") -> str:
    classes = " ".join(c for c in ("n" if numeric else "", cls) if c)
    attr = f' class="{classes}"' if classes else ""
    return f"<td{attr}>{_e(value)}</td>"


def _who(p: dict[str, Any]) -> str:
    return f"{p.get('role', '?')} {p.get('id', '')} (pid {p.get('pid', '?')})"


def render(data: dict[str, Any], *, token: str | None = None, refresh: int = 0) -> str:
    """The console page for ``data`` (see the module docstring)."""
    q = f"?token={quote(token)}" if token else ""
    amp = "&amp;" if q else "?"
    processes: list[dict[str, Any]] = data.get("processes", [])
    title = data.get("title") or "tether"
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{_e(title)} — tether debug</title>",
        f'<noscript><meta http-equiv="refresh" content="{refresh}"></noscript>'
        if refresh > 0
        else "",
        f"<style>{_STYLE}{CHARTS_STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="muted">{_e(data.get("summary", ""))} · rendered '
        f"{_e(time.strftime('%H:%M:%S'))} · "
        + (
            f'auto-refresh every {refresh}s (<a href="/debug/{q}">stop</a>)'
            if refresh > 0
            else f'<a href="/debug/{q}{amp}refresh=2">auto-refresh</a>'
        )
        + "</p>",
        "<nav>",
        *(
            f'<a href="{href}">{_e(label)}</a>'
            for href, label in (
                ("/metrics", "/metrics"),
                (f"/debug/tasks{q}", "tasks (text)"),
                (f"/debug/tasks{q}{amp}format=json", "tasks (json)"),
                (f"/debug/threads{q}", "threads"),
                (f"/debug/{q}{amp}format=json", "this page as json"),
                *((f"/debug/{_e(n)}{q}", f"/debug/{n}") for n in data.get("extra", [])),
            )
        ),
        "</nav>",
        CHARTS_HTML,
        _REFRESH % refresh if refresh > 0 else "",
        '<div id="tables">',
    ]

    parts.append("<h2>Processes</h2>")
    rows = []
    for p in processes:
        state = p.get("error") or p.get("state", "")
        rows.append(
            [
                _td(p.get("role")),
                _td(p.get("id")),
                _td(p.get("pid"), True),
                _td(p.get("generation"), True),
                _td(state, cls="bad" if p.get("error") else ""),
                _td(_age(p.get("age")), True),
                _td(p.get("restarts", ""), True),
                _td(_bytes(p.get("rss")), True),
                _td(", ".join(p.get("members", []))),
            ]
        )
    parts.append(
        _table(
            ["role", "id", "pid", "generation", "state", "age", "restarts", "RSS", "members"],
            rows,
            "no processes",
        )
    )

    parts.append("<h2>Requests in flight</h2>")
    rows = [
        [_td(_who(p)), _td(r.get("method")), _td(r.get("path")), _td(_age(r.get("age")), True)]
        for p in processes
        for r in p.get("requests", [])
    ]
    parts.append(_table(["process", "method", "path", "running for"], rows, "none"))

    parts.append("<h2>Background tasks</h2>")
    rows = [
        [
            _td(_who(p)),
            _td(t.get("name")),
            _td(("adopted from " if t.get("adopted") else "") + str(t.get("started_by", ""))),
            _td(_age(t.get("age")), True),
        ]
        for p in processes
        for t in p.get("background", [])
    ]
    parts.append(_table(["process", "task", "started by", "running for"], rows, "none"))

    parts.append("<h2>Tasks, grouped by identical stack</h2>")
    parts.append(_task_groups(processes))

    parts.append("<h2>Last reloads</h2>")
    rows = []
    for r in reversed(data.get("reloads", [])):
        finished = r.get("finished_at")
        when = time.strftime("%H:%M:%S", time.localtime(finished)) if finished else ""
        ok = bool(r.get("ok"))
        rows.append(
            [
                _td(when),
                _td("ok" if ok else "failed", cls="ok" if ok else "bad"),
                _td(r.get("generation"), True),
                _td(_age(r.get("seconds")), True),
                _td(r.get("error", "")),
            ]
        )
    parts.append(
        _table(["finished", "outcome", "generation", "took", "detail"], rows, "no reload yet")
    )
    parts.append("</div></body></html>\n")
    return "".join(parts)


def _task_groups(processes: list[dict[str, Any]]) -> str:
    """The task dump, named by what each group runs; tether's own tasks folded into one entry."""
    groups: dict[str, dict[str, Any]] = {}
    for p in processes:
        for g in p.get("tasks", []):
            entry = groups.setdefault(
                g["stack"],
                {"count": 0, "names": [], "where": [], "runs": g.get("runs"), "own": g.get("own")},
            )
            entry["count"] += g["count"]
            entry["names"].extend(g["names"])
            entry["where"].append(f"{p.get('role', '?')} {p.get('id', '')}")
    if not groups:
        return '<p class="muted">no task dump</p>'
    app: list[str] = []
    own: list[str] = []
    for stack, g in sorted(groups.items(), key=lambda kv: (-kv[1]["count"], kv[0])):
        names = sorted(set(g["names"]))
        shown = ", ".join(names[:6]) + (f", … ({len(names)} names)" if len(names) > 6 else "")
        where = ", ".join(sorted(set(g["where"])))
        runs = f"<b>{_e(g['runs'])}</b> · " if g.get("runs") else ""
        (own if g.get("own") else app).append(
            f"<details><summary><b>{g['count']}</b> task(s): {runs}in {_e(where)}: {_e(shown)}"
            f"</summary><pre>{_e(stack or '(no frames)')}</pre></details>"
        )
    if own:
        count = sum(g["count"] for g in groups.values() if g.get("own"))
        app.append(
            f'<details class="own"><summary class="muted">tether\'s own tasks: {count} in '
            f"{len(own)} group(s) (the debug server, timers, the engine)</summary>"
            f"{''.join(own)}</details>"
        )
    return "".join(app) if app else '<p class="muted">no task dump</p>'
