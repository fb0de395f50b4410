"""A mailboxd control-socket client for Python backends (standard library only).

    from mailboxd import Mailboxd
    mb = Mailboxd("/run/mailboxd/control.sock")
    msg_id, live = mb.send("alice", "hello")          # live == 0: alice is offline
    mb.join("room42", "alice", "bob")
    mb.publish("room42", "hi all", event="chat", except_=["alice"])

One connection is kept and reused; requests may be pipelined with
`pipeline()`. Errors from the server raise MailboxdError with the stable code.
`mint_token(key, mailbox, ttl)` signs a browser's access token without a
round trip (mailboxd started with --secret-file; docs/security.md).
Run as a script for a tiny CLI: python3 mailboxd.py [-s SOCKET] send alice hi
"""

import base64
import hashlib
import hmac
import os
import socket
import sys
import time


def _default_socket():
    """mailboxd's own default: /run/mailboxd for root, else $XDG_RUNTIME_DIR/mailboxd."""
    if os.getuid() == 0:
        return "/run/mailboxd/control.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or os.path.join(os.path.expanduser("~"), ".mailboxd")
    if os.environ.get("XDG_RUNTIME_DIR"):
        runtime = os.path.join(runtime, "mailboxd")
    return os.path.join(runtime, "control.sock")


DEFAULT_SOCKET = os.environ.get("MAILBOXD_SOCKET") or _default_socket()


def load_key(path):
    """The signing key: the secret file without trailing spaces, tabs, CR and LF."""
    with open(path, "rb") as f:
        return f.read().rstrip(b" \t\r\n")


def mint_token(key, mailbox, ttl, now=None):
    """A token opening `mailbox` for `ttl` seconds (key: bytes, see load_key)."""
    expiry = int(now if now is not None else time.time()) + int(ttl)
    message = b"mailboxd-token-v1\n" + mailbox.encode() + b"\n" + str(expiry).encode()
    tag = hmac.new(key, message, hashlib.sha256).digest()
    return "v1.%d.%s" % (expiry, base64.urlsafe_b64encode(tag).rstrip(b"=").decode())


class MailboxdError(Exception):
    """An ERR reply: .code is the stable code (NAME, TOOBIG, NOTFOUND, ...)."""

    def __init__(self, line):
        parts = line.split(" ", 2)
        self.code = parts[1] if len(parts) > 1 else "?"
        super().__init__(line)


class Mailboxd:
    def __init__(self, path=DEFAULT_SOCKET, timeout=5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.reader = self.sock.makefile("rb")

    def close(self):
        self.reader.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def encode(verb, *args, payload=None, **options):
        """The bytes of one request; payload (str) gets its length prepended."""
        words = [verb, *args]
        if payload is not None:
            data = payload.encode("utf-8")
            words.append(str(len(data)))
        for key, value in options.items():
            if value:
                words.append(f"{key}={value}")
        line = (" ".join(words) + "\n").encode("utf-8")
        return line + data + b"\n" if payload is not None else line

    def _reply(self):
        line = self.reader.readline().decode("utf-8").rstrip("\n")
        if not line:
            raise ConnectionError("mailboxd closed the connection")
        if line.startswith("ERR"):
            raise MailboxdError(line)
        return line

    def request(self, raw):
        self.sock.sendall(raw)
        return self._reply()

    def pipeline(self, requests):
        """Sends many encoded requests in one write; returns the replies in order
        (an ERR reply is returned as a MailboxdError instance, not raised)."""
        self.sock.sendall(b"".join(requests))
        replies = []
        for _ in requests:
            try:
                replies.append(self._reply())
            except MailboxdError as e:
                replies.append(e)
        return replies

    def ping(self):
        return self.request(b"PING\n") == "PONG"

    def send(self, mailbox, data, event=None):
        """Returns (message id, live subscribers written to)."""
        _, msg_id, live = self.request(self.encode("SEND", mailbox, payload=data, event=event)).split(" ")
        return int(msg_id), int(live)

    def publish(self, group, data, event=None, except_=()):
        """Returns (mailboxes delivered to, live subscribers written to)."""
        raw = self.encode("PUBLISH", group, payload=data, event=event, **{"except": ",".join(except_)})
        _, delivered, live = self.request(raw).split(" ")
        return int(delivered), int(live)

    def join(self, group, *mailboxes):
        return int(self.request(self.encode("JOIN", group, *mailboxes)).split(" ")[1])

    def leave(self, group, *mailboxes):
        return int(self.request(self.encode("LEAVE", group, *mailboxes)).split(" ")[1])

    def members(self, group):
        return self.request(self.encode("MEMBERS", group)).split(" ")[2:]

    def drop(self, mailbox):
        self.request(self.encode("DROP", mailbox))

    def info(self, mailbox):
        fields = self.request(self.encode("INFO", mailbox)).split(" ")[1:]
        return {k: int(v) for k, v in (f.split("=", 1) for f in fields)}

    def stats(self):
        fields = self.request(b"STATS\n").split(" ")[1:]
        return {k: int(v) for k, v in (f.split("=", 1) for f in fields)}


def main(argv):
    path = DEFAULT_SOCKET
    if len(argv) > 2 and argv[0] == "-s":
        path, argv = argv[1], argv[2:]
    if not argv:
        print(__doc__)
        return 2
    command, args = argv[0], argv[1:]
    try:
        with Mailboxd(path) as mb:
            if command == "send":
                print(*mb.send(args[0], args[1]))
            elif command == "publish":
                print(*mb.publish(args[0], args[1], except_=args[2:]))
            elif command == "join":
                print(mb.join(args[0], *args[1:]))
            elif command == "info":
                print(mb.info(args[0]))
            elif command == "stats":
                print(mb.stats())
            else:
                print(f"unknown command {command}", file=sys.stderr)
                return 2
    except MailboxdError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
