"""An app whose lifespan startup fails (its database is unreachable)."""

#: Not an app: a value a typo in APP could name.
SETTINGS = {"database": "postgres://db"}


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database db:5432 unreachable"})
        return
