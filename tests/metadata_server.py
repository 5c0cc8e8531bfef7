"""A cloud metadata server on 127.0.0.1, playing AWS IMDSv2, GCP or Azure, for the preemption
tests (this machine has no cloud around it). It answers as the providers document, records every
request, and serves a notice once `notice` is set; `on_notice_served` runs when it first does.

    with MetadataServer("aws") as server:
        env = server.env()   # AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:PORT/
        ...
        server.notice.set()
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

AWS_NOTICE_S = 120
AZURE_NOTICE_S = 30
AZURE_VM = "tunedeck-test-vm"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    at_s: float


class MetadataServer:
    def __init__(self, provider: str, slow_s: float = 0.0, rebalance: bool = False):
        self.provider = provider
        self.slow_s = slow_s
        self.rebalance = rebalance
        self.notice = threading.Event()
        self.requests: list[Seen] = []
        self.tokens: set[str] = set()
        self.notice_served_at_s: float | None = None
        self.on_notice_served: Callable[[], Any] | None = None
        self.served_with: Any = None
        # An Azure event for another machine of the scale set, always there.
        self.azure_other_event = True
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def env(self) -> dict[str, str]:
        """The variable the provider's SDK reads, pointing here."""
        if self.provider == "aws":
            return {"AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{self.port}/"}
        if self.provider == "gcp":
            return {"GCE_METADATA_HOST": f"127.0.0.1:{self.port}"}
        return {"TUNEDECK_AZURE_METADATA_ENDPOINT": f"http://127.0.0.1:{self.port}"}

    def __enter__(self) -> MetadataServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def notice_polls(self) -> list[Seen]:
        """The requests that asked for the notice itself."""
        wanted = {
            "aws": "/latest/meta-data/spot/instance-action",
            "gcp": "/computeMetadata/v1/instance/preempted",
            "azure": "/metadata/scheduledevents",
        }[self.provider]
        return [r for r in self.requests if r.path.split("?")[0] == wanted]

    def _served_notice(self) -> None:
        if self.notice_served_at_s is None:
            self.notice_served_at_s = time.monotonic()
            if self.on_notice_served is not None:
                self.served_with = self.on_notice_served()

    # ---------------------------------------------------------------- the providers

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return  # quiet: the test reads `requests`

            def _answer(self, status: int, body: bytes | str, **headers: str) -> None:
                data = body.encode() if isinstance(body, str) else body
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key.replace("_", "-"), value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _seen(self) -> None:
                server.requests.append(
                    Seen(self.command, self.path, dict(self.headers.items()), time.monotonic())
                )
                if server.slow_s:
                    time.sleep(server.slow_s)

            def do_PUT(self) -> None:
                self._seen()
                if server.provider != "aws" or self.path != "/latest/api/token":
                    return self._answer(404, "")
                ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
                if not ttl or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                    return self._answer(400, "")
                token = secrets.token_urlsafe(16)
                server.tokens.add(token)
                self._answer(200, token, X_aws_ec2_metadata_token_ttl_seconds=ttl)

            def do_GET(self) -> None:
                self._seen()
                getattr(self, f"_{server.provider}")()

            def _aws(self) -> None:
                if self.headers.get("X-aws-ec2-metadata-token") not in server.tokens:
                    return self._answer(401, "")
                if self.path == "/latest/meta-data/spot/instance-action":
                    if not server.notice.is_set():
                        return self._answer(404, "")
                    when = time.gmtime(time.time() + AWS_NOTICE_S)
                    body = {
                        "action": "terminate",
                        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", when),
                    }
                    server._served_notice()
                    return self._answer(200, json.dumps(body), Content_Type="text/plain")
                if self.path == "/latest/meta-data/events/recommendations/rebalance":
                    if not server.rebalance:
                        return self._answer(404, "")
                    body = {"noticeTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                    return self._answer(200, json.dumps(body))
                self._answer(404, "")

            def _gcp(self) -> None:
                if self.headers.get("Metadata-Flavor") != "Google":
                    return self._answer(403, "Missing Metadata-Flavor:Google header.")
                if self.path.split("?")[0] != "/computeMetadata/v1/instance/preempted":
                    return self._answer(404, "", Metadata_Flavor="Google")
                answer = "TRUE" if server.notice.is_set() else "FALSE"
                if server.notice.is_set():
                    server._served_notice()
                self._answer(200, answer, Metadata_Flavor="Google", Content_Type="text/plain")

            def _azure(self) -> None:
                if self.headers.get("Metadata") != "true":
                    return self._answer(400, json.dumps({"error": "Bad request"}))
                path, _, query = self.path.partition("?")
                if path == "/metadata/instance/compute/name":
                    return self._answer(200, AZURE_VM)
                if path != "/metadata/scheduledevents" or "api-version=" not in query:
                    return self._answer(404, "")
                events = []
                if server.azure_other_event:
                    events.append(_azure_event("other-vm-of-the-set", AZURE_NOTICE_S))
                if server.notice.is_set():
                    events.append(_azure_event(AZURE_VM, AZURE_NOTICE_S))
                    server._served_notice()
                body = {"DocumentIncarnation": 1 + len(events), "Events": events}
                self._answer(200, json.dumps(body), Content_Type="application/json")

        return Handler


def _azure_event(vm: str, seconds: float) -> dict[str, Any]:
    return {
        "EventId": secrets.token_hex(8),
        "EventStatus": "Scheduled",
        "EventType": "Preempt",
        "ResourceType": "VirtualMachine",
        "Resources": [vm],
        "NotBefore": formatdate(time.time() + seconds, usegmt=True),
        "Description": "Virtual machine is being preempted.",
        "EventSource": "Platform",
        "DurationInSeconds": -1,
    }
