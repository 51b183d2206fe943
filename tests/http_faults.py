"""An HTTP proxy in front of the live server that answers chosen requests with an error of its choosing.

The client under test talks to the proxy; every request whose path matches a rule gets that rule's
status (a fault the real server would produce only by accident: a 500 on one call, 503s under
load), everything else is forwarded to the real server untouched. Requests are counted per path.
"""

from __future__ import annotations

import http.client
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.rules: list[tuple[re.Pattern[str], int, str]] = []
        self.seen: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real server

            def log_message(self, format: str, *args: object) -> None:  # quiet
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                path = self.path.split("?", 1)[0]
                proxy.seen[path] += 1
                for pattern, status, text in proxy.rules:
                    if pattern.search(path):
                        proxy.faults[path] += 1
                        data = f'{{"error": "{text}"}}'.encode()
                        self.send_response(status)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                        return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in {"host", "connection"}}
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                upstream.close()
                self.send_response(answer.status)
                for k, v in answer.getheaders():
                    if k.lower() not in {"transfer-encoding", "connection", "content-length"}:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def fail(self, path_regex: str, status: int, text: str = "injected fault") -> None:
        self.rules.append((re.compile(path_regex), status, text))

    def heal(self) -> None:
        self.rules.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
