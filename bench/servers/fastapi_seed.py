"""The FastAPI design corecast replaces: a ConnectionManager that awaits send_text on every
connection in turn. Run: uvicorn fastapi_seed:app --host 127.0.0.1 --port PORT."""
import json

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI()


class ConnectionManager:
    def __init__(self):
        self.active: list[WebSocket] = []

    async def connect(self, ws: WebSocket):
        await ws.accept()
        self.active.append(ws)

    def disconnect(self, ws: WebSocket):
        self.active.remove(ws)

    async def broadcast(self, message: str):
        for connection in list(self.active):
            try:
                await connection.send_text(message)
            except Exception:
                pass


manager = ConnectionManager()


@app.websocket("/ws/{user_id}")
async def websocket_endpoint(websocket: WebSocket, user_id: str):
    await manager.connect(websocket)
    try:
        while True:
            text = await websocket.receive_text()
            await manager.broadcast(json.dumps({"sender": user_id, "text": text}))
    except WebSocketDisconnect:
        manager.disconnect(websocket)
