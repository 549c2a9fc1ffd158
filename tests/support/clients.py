"""Clients of a real service process that send events until stopped, keeping every id they got."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Sequence

EVENT = {"user_id": "u1", "type": "click", "payload": {"n": 1}}


class EventClient(threading.Thread):
    """Sends events until told to stop or the service goes away; keeps every id it was given.

    ``timeout`` bounds one answer; ``backoff`` is the pause after a 429.
    """

    PER_SEND = 0  # events per request (HTTP) or per write (TCP)

    def __init__(
        self, port: int, stop: threading.Event, *, timeout: float = 10.0, backoff: float = 0.005
    ) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop_event = stop
        self.timeout = timeout
        self.backoff = backoff
        self.acked: list[str] = []
        self.unanswered = 0  # events sent whose answer never came (shutdown, or a kill)
        self.overloaded = 0  # 429s, or ERR overloaded
        self.max_wait = 0.0  # the longest wait for one answer (a TCP stall)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.send()
        except (OSError, http.client.HTTPException):
            pass  # the service is gone: that is how these clients end
        except BaseException as exc:  # reported by the test
            self.error = exc

    def send(self) -> None:
        raise NotImplementedError


class HttpEventClient(EventClient):
    """Batches of ``POST /v1/events`` on one keep-alive connection."""

    PER_SEND = 20

    def send(self) -> None:
        body = json.dumps([EVENT] * self.PER_SEND).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            while not self.stop_event.is_set():
                try:
                    conn.request("POST", "/v1/events", body, {"Content-Type": "application/json"})
                    resp = conn.getresponse()
                except (OSError, http.client.HTTPException):
                    self.unanswered += self.PER_SEND
                    conn.close()
                    # Reconnect: a keep-alive connection closed at shutdown; refused
                    # ends the client.
                    conn.connect()
                    continue
                data = resp.read()
                if resp.status == 202:
                    self.acked.extend(json.loads(data)["ids"])
                elif resp.status == 429:
                    self.overloaded += 1
                    time.sleep(self.backoff)
                elif resp.status == 503:
                    return
                else:
                    raise AssertionError(f"unexpected {resp.status}: {data!r}")
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
        finally:
            conn.close()


class TcpEventClient(EventClient):
    """Windows of JSON event lines, each answer read before the next window."""

    PER_SEND = 10

    def send(self) -> None:
        line = json.dumps(EVENT).encode() + b"\n"
        n = self.PER_SEND
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout) as sock,
            sock.makefile("rb") as reader,
        ):
            while not self.stop_event.is_set():
                sock.sendall(line * n)
                for answered in range(n):
                    began = time.monotonic()
                    answer = reader.readline()
                    self.max_wait = max(self.max_wait, time.monotonic() - began)
                    if not answer:
                        self.unanswered += n - answered
                        return
                    if answer.startswith(b"OK "):
                        self.acked.append(answer[3:].strip().decode())
                    elif answer.startswith(b"BYE"):
                        self.unanswered += n - answered - 1
                        return
                    elif answer.startswith(b"ERR overloaded"):
                        self.overloaded += 1
                    else:
                        raise AssertionError(f"unexpected answer {answer!r}")


def start_clients(
    ports: Sequence[dict[str, int]],
    stop: threading.Event,
    *,
    http: int = 1,
    tcp: int = 1,
    **options: float,
) -> list[EventClient]:
    """``http`` HTTP and ``tcp`` TCP clients per service (by its ports), started.

    ``options`` go to every client (``timeout``, and ``backoff`` for HTTP).
    """
    clients: list[EventClient] = []
    for service in ports:
        clients += [HttpEventClient(service["http"], stop, **options) for _ in range(http)]
        if "tcp" in service:
            tcp_options = {k: v for k, v in options.items() if k != "backoff"}
            clients += [TcpEventClient(service["tcp"], stop, **tcp_options) for _ in range(tcp)]
    for client in clients:
        client.start()
    return clients


def acked(clients: Sequence[EventClient]) -> list[str]:
    return [i for c in clients for i in c.acked]


def wait_acked(clients: Sequence[EventClient], n: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while len(acked(clients)) < n:
        assert time.monotonic() < deadline, f"only {len(acked(clients))} events acknowledged"
        assert [c.error for c in clients if c.error] == []
        time.sleep(0.02)
