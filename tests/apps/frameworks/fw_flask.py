"""A Flask app: the version, a slow view, and an upload that answers what it received."""

from __future__ import annotations

import hashlib
import os
import time

from _marks import mark
from flask import Flask, request

VERSION = "v1"

app = Flask(__name__)


@app.get("/")
def index() -> str:
    return f"{VERSION} {os.getpid()}"


@app.get("/slow")
def slow() -> str:
    mark("slow-begin")
    seconds = float(request.args.get("s", "1"))
    time.sleep(seconds)
    return f"slept {seconds}"


@app.post("/upload")
def upload() -> str:
    """``LENGTH SHA256`` of the body as the app received it."""
    body = request.get_data()
    return f"{len(body)} {hashlib.sha256(body).hexdigest()}"
