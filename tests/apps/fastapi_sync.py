"""A FastAPI app with a sync endpoint: it runs in anyio's worker threads."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/")
def hello() -> dict[str, str]:
    """Sync: FastAPI runs it in a worker thread."""
    return {"hello": "world"}
