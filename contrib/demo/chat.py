#!/usr/bin/env python3
"""The chat demo's backend: Python standard library only.

    python3 contrib/demo/chat.py --listen 127.0.0.1:8090 --control /path/control.sock

Serves the page (index.html) and the client (contrib/js/mailbox.js), and a
small JSON API the page calls:

    POST /api/join {"name": "alice", "room": "lobby"}
        -> {"mailbox": "u-alice", "token": "..." or null}
        joins the user's mailbox u-<name> to room group r-<room>
    POST /api/say  {"name": "alice", "room": "lobby", "text": "hi"}
        -> {"reached": N}
        publishes {"from": "alice", "text": "hi"} as event "chat" to the
        room, except the sender (the page shows its own line at once)

Behind a web server (contrib/demo/nginx.conf) that also forwards /comet/
to mailboxd. With --secret FILE the backend mints each user a token.
"""

import argparse
import json
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "backends"))
import mailboxd  # noqa: E402

NAME = re.compile(r"^[A-Za-z0-9._~-]{1,32}$")
CLIENT = os.path.join(HERE, "..", "js", "mailbox.js")


class Chat(BaseHTTPRequestHandler):
    server_version = "mailboxd-chat-demo"

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?")[0]
        files = {"/": ("index.html", "text/html; charset=utf-8"),
                 "/mailbox.js": (CLIENT, "text/javascript")}
        if path not in files:
            return self.reply(404, {"error": "not found"})
        name, content_type = files[path]
        with open(os.path.join(HERE, name), "rb") as f:
            self.reply(200, f.read(), content_type)

    def do_POST(self):
        try:
            length = min(int(self.headers.get("Content-Length", "0")), 8192)
            body = json.loads(self.rfile.read(length) or b"{}")
            name, room = body.get("name", ""), body.get("room", "lobby")
            if not NAME.match(name) or not NAME.match(room):
                return self.reply(400, {"error": "name and room: 1-32 of A-Z a-z 0-9 . _ ~ -"})
            with self.server.lock:
                mb = self.server.mailboxd
                if self.path == "/api/join":
                    mb.join("r-" + room, "u-" + name)
                    token = None
                    if self.server.key:
                        token = mailboxd.mint_token(self.server.key, "u-" + name, 86400)
                    return self.reply(200, {"mailbox": "u-" + name, "token": token})
                if self.path == "/api/say":
                    text = str(body.get("text", ""))[:2000]
                    line = json.dumps({"from": name, "text": text})
                    reached, _live = mb.publish("r-" + room, line, event="chat", except_=["u-" + name])
                    return self.reply(200, {"reached": reached})
            self.reply(404, {"error": "not found"})
        except mailboxd.MailboxdError as e:
            self.reply(503, {"error": str(e)})
        except (ValueError, OSError) as e:
            self.reply(400, {"error": str(e)})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", default="127.0.0.1:8090")
    ap.add_argument("--control", default=mailboxd.DEFAULT_SOCKET)
    ap.add_argument("--secret", help="mailboxd's --secret-file, to mint tokens")
    a = ap.parse_args()
    host, port = a.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Chat)
    server.mailboxd = mailboxd.Mailboxd(a.control)
    server.lock = threading.Lock()
    server.key = mailboxd.load_key(a.secret) if a.secret else None
    print(f"chat backend on http://{a.listen}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
