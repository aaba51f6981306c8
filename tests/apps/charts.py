"""An app for the console's charts: a request of known duration, work after a response."""

from __future__ import annotations

import asyncio

from fastapi import BackgroundTasks, FastAPI

app = FastAPI()


@app.get("/work")
async def work(ms: float = 40.0) -> dict[str, float]:
    """Answers after ``ms`` milliseconds: the latency the charts should show."""
    await asyncio.sleep(ms / 1000)
    return {"slept_ms": ms}


async def send_receipt(seconds: float) -> None:
    """Background work that runs after its response is sent."""
    await asyncio.sleep(seconds)


@app.get("/checkout")
async def checkout(background: BackgroundTasks, seconds: float = 60.0) -> dict[str, str]:
    """Answers at once; ``send_receipt`` runs on after the response."""
    background.add_task(send_receipt, seconds)
    return {"status": "accepted"}
