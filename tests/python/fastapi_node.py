"""A node of the Python/FastAPI design corecast replaces, for the mixed-fleet test and the
cross-node baseline benchmark.

Written from that design: a ConnectionManager keyed by user id, a listener on the Redis
channel `ws_broadcast` that forwards each payload to its local sockets, and `/ws/{user_id}`
publishing `{"sender","text"}` for every text a client sends. One fix: the design's
listener checked `isinstance(data, bytes)`, which is never true with
`decode_responses=True`, so it forwarded nothing; here both types are handled.

Run: REDIS_URL=redis://127.0.0.1:PORT/0 python -m uvicorn fastapi_node:app --port P
"""

import asyncio
import json
import os
import sys
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

# Required: the tests and benchmarks start their own Redis on a free port.
REDIS_URL = os.environ.get("REDIS_URL") or sys.exit("set REDIS_URL (redis://host:port/db)")
CHANNEL = "ws_broadcast"


class ConnectionManager:
    def __init__(self) -> None:
        self.active: dict[str, set[WebSocket]] = {}

    async def connect(self, user_id: str, ws: WebSocket) -> None:
        await ws.accept()
        self.active.setdefault(user_id, set()).add(ws)

    def disconnect(self, user_id: str, ws: WebSocket) -> None:
        sockets = self.active.get(user_id)
        if sockets is not None:
            sockets.discard(ws)
            if not sockets:
                del self.active[user_id]

    async def send_local(self, text: str) -> None:
        for sockets in list(self.active.values()):
            for ws in list(sockets):
                try:
                    await ws.send_text(text)
                except Exception:
                    pass


manager = ConnectionManager()
redis_client = aioredis.from_url(REDIS_URL, decode_responses=True)


async def listen() -> None:
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(CHANNEL)
    async for message in pubsub.listen():
        if message.get("type") != "message":
            continue
        data = message["data"]
        if isinstance(data, bytes):  # the fix: with decode_responses=True it is a str
            data = data.decode("utf-8", "replace")
        await manager.send_local(data)


@asynccontextmanager
async def lifespan(_app: FastAPI):
    task = asyncio.create_task(listen())
    yield
    task.cancel()


app = FastAPI(lifespan=lifespan)


@app.get("/ready")
async def ready() -> dict:
    # Ready once the listener's subscription is live.
    counts = await redis_client.pubsub_numsub(CHANNEL)
    return {"subscribers": counts[0][1] if counts else 0}


@app.websocket("/ws/{user_id}")
async def websocket_endpoint(websocket: WebSocket, user_id: str) -> None:
    await manager.connect(user_id, websocket)
    try:
        while True:
            text = await websocket.receive_text()
            await redis_client.publish(CHANNEL, json.dumps({"sender": user_id, "text": text}))
    except WebSocketDisconnect:
        manager.disconnect(user_id, websocket)
