// Seed-protocol server in Bun (uWebSockets inside): /ws/:user, text → broadcast {"sender","text"} via pub/sub.
const server = Bun.serve({
  hostname: "127.0.0.1",
  port: Number(process.env.PORT ?? 0),
  fetch(req, server) {
    const url = new URL(req.url);
    const m = url.pathname.match(/^\/ws\/([A-Za-z0-9_.-]{1,64})$/);
    if (!m) return new Response("not found", { status: 404 });
    if (server.upgrade(req, { data: { user: m[1] } })) return;
    return new Response("upgrade required", { status: 400 });
  },
  websocket: {
    open(ws) { ws.subscribe("all"); },
    message(ws, msg) { server.publish("all", JSON.stringify({ sender: ws.data.user, text: String(msg) })); },
    idleTimeout: 0,
  },
});
console.log(`listening ${server.port}`);
