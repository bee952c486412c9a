"""A fault proxy: an HTTP server on 127.0.0.1 in front of moto that passes requests
through, and can refuse, delay or rewrite the answers of chosen AWS actions the way real
AWS behaves and moto does not (capacity errors, ``DependencyViolation`` while network
interfaces are released, an instance that still reads ``pending`` after termination).

It also keeps every request's action and parameters, so a test can check what was sent
even where moto ignores it, and it can answer actions moto does not implement (EC2's
Service Quotas codes).
"""

from __future__ import annotations

import http.server
import json
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Params = dict[str, str]


@dataclass
class Rule:
    """What to do with requests of one action: ``when`` picks them (all by default)."""

    action: str
    when: Callable[[Params], bool] = lambda params: True
    refuse: tuple[int, str, str] | None = None  # HTTP status, error code, message
    times: int | None = None  # refuse at most this often (None: always)
    nth: int | None = None  # refuse only the nth matching request (1-based)
    delay: float = 0.0  # before passing the request on
    delay_answer: float = 0.0  # after moto answered, before the answer goes back
    rewrite: Callable[[bytes], bytes] | None = None
    answer: Callable[[Params], tuple[int, bytes]] | None = None
    seen: threading.Event = field(default_factory=threading.Event)  # a request came
    done: threading.Event = field(default_factory=threading.Event)  # moto answered one
    count: int = 0
    refused: int = 0


def ec2_error(code: str, message: str = "refused by the fault proxy") -> bytes:
    return (f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message>"
            "</Error></Errors><RequestID>proxy</RequestID></Response>").encode()


class _Server(http.server.ThreadingHTTPServer):
    # A delayed answer to a client that was killed must not hold up close() ...
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        # ... nor, when it finds the client gone, print a traceback into whatever test
        # runs then (one that reads its own stderr fails on it).
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class FaultProxy:
    """``FaultProxy(moto_url)``; point a client at ``proxy.url``. Rules apply in the
    order they were added; the first that matches a request decides."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.rules: list[Rule] = []
        self.requests: list[tuple[str, Params]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, data, kind = proxy._handle(self.path, dict(self.headers), body)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, action: str, **how: Any) -> Rule:
        rule = Rule(action, **how)
        with self.lock:
            self.rules.append(rule)
        return rule

    def refuse(self, action: str, code: str, message: str = "refused by the fault proxy",
               *, status: int = 400, **how: Any) -> Rule:
        """Answer ``action`` with the EC2 error ``code``."""
        return self.add(action, refuse=(status, code, message), **how)

    def params(self, action: str) -> list[Params]:
        """The parameters of every request of ``action`` so far."""
        with self.lock:
            return [p for a, p in self.requests if a == action]

    @staticmethod
    def _action(headers: dict[str, str], body: bytes) -> tuple[str, Params]:
        target = headers.get("X-Amz-Target") or headers.get("x-amz-target")
        if target:  # a JSON protocol (Service Quotas, SSM): the action is in a header
            try:
                params = {k: str(v) for k, v in json.loads(body or b"{}").items()}
            except ValueError:
                params = {}
            return target.rsplit(".", 1)[-1], params
        params = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode()).items()}
        return params.get("Action", ""), params

    def _handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes, str]:
        action, params = self._action(headers, body)
        with self.lock:
            self.requests.append((action, params))
            rule = next((r for r in self.rules if r.action == action and r.when(params)),
                        None)
            if rule is not None:
                rule.count += 1
        if rule is not None:
            rule.seen.set()
            if rule.delay:
                time.sleep(rule.delay)
            if rule.answer is not None:
                status, data = rule.answer(params)
                return status, data, "application/x-amz-json-1.1"
            if rule.refuse and (rule.nth is None or rule.count == rule.nth) and (
                    rule.times is None or rule.refused < rule.times):
                rule.refused += 1
                status, code, message = rule.refuse
                return status, ec2_error(code, message), "text/xml"
        status, data, kind = self._forward(path, headers, body)
        if rule is not None:
            if rule.rewrite is not None and status == 200:
                data = rule.rewrite(data)
            rule.done.set()
            time.sleep(rule.delay_answer)
        return status, data, kind

    def _forward(self, path: str, headers: dict[str, str], body: bytes
                 ) -> tuple[int, bytes, str]:
        request = urllib.request.Request(
            self.upstream + path, data=body, method="POST",
            headers={k: v for k, v in headers.items() if k.lower() != "host"})
        try:
            with urllib.request.urlopen(request) as answer:
                return answer.status, answer.read(), answer.headers.get(
                    "Content-Type", "text/xml")
        except urllib.error.HTTPError as err:
            return err.code, err.read(), err.headers.get("Content-Type", "text/xml")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def batch_of(params: Params) -> str | None:
    """The ``sshcluster:batch`` tag of a RunInstances request."""
    for key, value in params.items():
        if key.endswith(".Key") and value == "sshcluster:batch":
            return params.get(key[:-len("Key")] + "Value")
    return None
