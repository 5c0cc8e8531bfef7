"""A small stand-in for the Hugging Face Hub on 127.0.0.1, answering the calls huggingface_hub
makes for `whoami`, `create_repo` and `upload_folder` of small files (every file `regular`, so
its bytes come inline in the commit). It records what it received; anything else is a 404 that
is recorded too, so a test sees a call it does not know."""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class HubRecord:
    token: str
    repos: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)
    """repo id -> path -> bytes committed."""
    unknown: list[str] = field(default_factory=list)


class FakeHub:
    def __init__(self, token: str, user: str = "tester"):
        self.record = HubRecord(token)
        self.user = user
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def _send(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {hub.record.token}":
                    return True
                self._send(401, {"error": "Invalid credentials in Authorization header"})
                return False

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self) -> None:
                if self.path.startswith("/api/whoami-v2"):
                    if self._authorised():
                        self._send(200, {"name": hub.user, "type": "user", "auth": {}})
                    return
                hub.record.unknown.append(f"GET {self.path}")
                self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                body = self._body()
                if not self._authorised():
                    return
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[:2] == ["api", "repos"] and parts[2:] == ["create"]:
                    request = json.loads(body)
                    hub.record.repos.append(request)
                    repo = f"{request.get('organization') or hub.user}/{request['name']}"
                    self._send(200, {"url": f"{hub.endpoint}/{repo}", "name": repo})
                    return
                if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "preupload":
                    files = json.loads(body)["files"]
                    answer = [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                        for f in files
                    ]
                    self._send(200, {"files": answer, "commitOid": "0" * 40})
                    return
                if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "commit":
                    repo = f"{parts[2]}/{parts[3]}"
                    stored = hub.record.files.setdefault(repo, {})
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item.get("key") == "file":
                            value = item["value"]
                            stored[value["path"]] = base64.b64decode(value["content"])
                    self._send(
                        200,
                        {
                            "commitUrl": f"{hub.endpoint}/{repo}/commit/{'1' * 40}",
                            "commitOid": "1" * 40,
                            "pullRequestUrl": None,
                        },
                    )
                    return
                hub.record.unknown.append(f"POST {self.path}")
                self._send(404, {"error": "not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)
