// Seed-protocol server on Node.js + ws: /ws/:user, text → {"sender","text"} to every client.
// The broadcast serializes once and sends the same string to every socket.
const http = require("http");
const { WebSocketServer } = require("ws");
const server = http.createServer((req, res) => { res.writeHead(404); res.end(); });
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
server.on("upgrade", (req, socket, head) => {
  const m = req.url.match(/^\/ws\/([A-Za-z0-9_.-]{1,64})$/);
  if (!m) { socket.destroy(); return; }
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.user = m[1];
    ws.on("message", (data) => {
      const out = JSON.stringify({ sender: ws.user, text: data.toString() });
      for (const client of wss.clients) if (client.readyState === 1) client.send(out);
    });
  });
});
server.listen(Number(process.env.PORT || 0), "127.0.0.1", () => console.log(`listening ${server.address().port}`));
