"""A FastAPI app with its own OpenTelemetry instrumentation, served by tether with traces on."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from opentelemetry import trace

import tether

#: What the app found when it was imported: tether makes the provider before that.
PROVIDER = type(trace.get_tracer_provider()).__name__
tracer = trace.get_tracer("traced-app")

app = FastAPI()


@app.get("/items/{item_id}", response_class=PlainTextResponse)
async def item(item_id: int) -> str:
    with tracer.start_as_current_span("app.lookup"):
        return f"item {item_id}"


async def send_event(n: int) -> None:
    with tracer.start_as_current_span("app.send_event"):
        await asyncio.sleep(0.01)


async def audit() -> None:
    await asyncio.sleep(0.01)


@app.get("/spawn", response_class=PlainTextResponse)
async def spawn() -> str:
    tether.spawn(send_event(1))
    asyncio.create_task(audit())  # noqa: RUF006 - adopted by tether: tracked, not lost
    return "spawned"


@app.get("/provider", response_class=PlainTextResponse)
async def provider() -> str:
    return PROVIDER
