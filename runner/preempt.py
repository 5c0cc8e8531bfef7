"""Cloud preemption notices, watched from inside the training process.

A spot (preemptible) machine is warned before it is taken away, but on AWS only through the
instance metadata service, with no signal at all. `launch.preemption` names the cloud, or `auto`
recognises it from this machine's own DMI data (`/sys/class/dmi/id`); on a machine no entry
recognises nothing is polled and no packet is sent anywhere. A light thread then polls the
provider's notice every `launch.preemption_poll_s` seconds:

- AWS: IMDSv2 (a session token from `PUT /latest/api/token`, then
  `/latest/meta-data/spot/instance-action`; `/latest/meta-data/events/recommendations/rebalance`
  is a warning only);
- GCP: `/computeMetadata/v1/instance/preempted` with `Metadata-Flavor: Google`;
- Azure: scheduled events (`/metadata/scheduledevents`, a `Preempt` event for this machine).

Endpoints follow the providers' SDKs, so a test can point them at a local server:
`AWS_EC2_METADATA_SERVICE_ENDPOINT` (botocore; `AWS_EC2_METADATA_DISABLED=true` turns AWS off),
`GCE_METADATA_HOST` (google-auth). Azure's SDKs have no variable for scheduled events
(azure-identity's `AZURE_POD_IDENTITY_AUTHORITY_HOST` moves the managed-identity token endpoint
only, which on AKS is a proxy that does not serve them), so `TUNEDECK_AZURE_METADATA_ENDPOINT`
moves it. Each request times out within a second and every failure is a line in the log, never
an error: a missing or slow metadata server costs training nothing.

Nothing here imports torch; `runner.train` connects the notice to its stop path.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DMI_DIR = Path("/sys/class/dmi/id")
DMI_DIR_ENV = "TUNEDECK_DMI_DIR"
"""Moves the DMI folder `auto` reads (tests point it at a folder of their own)."""
AZURE_ENDPOINT_ENV = "TUNEDECK_AZURE_METADATA_ENDPOINT"
AWS_ENDPOINT_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
AWS_DISABLED_ENV = "AWS_EC2_METADATA_DISABLED"
GCP_HOST_ENV = "GCE_METADATA_HOST"

# The link-local address all three clouds serve metadata on; used as an address, so finding the
# server needs no DNS lookup.
METADATA_IP = "169.254.169.254"
REQUEST_TIMEOUT_S = 1.0
MAX_BODY_BYTES = 64 * 1024
# Azure marks its VMs with this chassis asset tag.
AZURE_ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"
AWS_TOKEN_TTL_S = 21600
# GCP gives no time with its notice; its documentation promises about this much.
GCP_NOTICE_S = 30.0


class MetadataError(Exception):
    """The metadata server could not be asked, or its answer makes no sense."""


@dataclass(frozen=True)
class Notice:
    """A word from the cloud: a preemption notice, or (AWS rebalance) only a warning."""

    provider: str
    seconds_left: float | None = None
    warning_only: bool = False
    detail: str = ""

    def reason(self) -> str:
        """One line for state.json and the log, e.g. `spot notice (aws), 120 s`."""
        if self.warning_only:
            return f"rebalance recommendation ({self.provider}): {self.detail}"
        text = f"spot notice ({self.provider})"
        if self.seconds_left is not None:
            about = "about " if self.provider == "gcp" else ""
            text += f", {about}{max(0, round(self.seconds_left))} s"
        return text + (f" ({self.detail})" if self.detail else "")


# ---------------------------------------------------------------- which cloud


def dmi_facts(dmi_dir: Path | None = None) -> dict[str, str]:
    """The machine's DMI strings (a missing or unreadable file reads as empty)."""
    folder = Path(os.environ.get(DMI_DIR_ENV) or DMI_DIR) if dmi_dir is None else dmi_dir
    facts: dict[str, str] = {}
    for name in ("sys_vendor", "product_name", "bios_vendor", "bios_version", "chassis_asset_tag"):
        try:
            facts[name] = (folder / name).read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            facts[name] = ""
    return facts


def _is_aws(facts: Mapping[str, str]) -> bool:
    # Nitro machines name themselves; older Xen ones carry "amazon" in their BIOS strings.
    return (
        facts["sys_vendor"] == "Amazon EC2"
        or "amazon" in (facts["bios_vendor"] + " " + facts["bios_version"]).lower()
    )


def _is_gcp(facts: Mapping[str, str]) -> bool:
    return facts["product_name"] == "Google Compute Engine" or facts["sys_vendor"] == "Google"


def _is_azure(facts: Mapping[str, str]) -> bool:
    return (
        facts["sys_vendor"] == "Microsoft Corporation"
        and facts["product_name"] == "Virtual Machine"
        and facts["chassis_asset_tag"] == AZURE_ASSET_TAG
    )


def detect_cloud(dmi_dir: Path | None = None) -> str | None:
    """The cloud this machine's DMI data names, or None. Reads local files only."""
    facts = dmi_facts(dmi_dir)
    for name, provider in PROVIDERS.items():
        if provider.detect(facts):
            return name
    return None


def choose_provider(setting: str, dmi_dir: Path | None = None) -> str | None:
    """The provider to watch for `launch.preemption` (`auto` detects it), None for none."""
    if setting == "off":
        return None
    if setting == "auto":
        return detect_cloud(dmi_dir)
    if setting not in PROVIDERS:
        known = ", ".join(["auto", *PROVIDERS, "off"])
        raise ValueError(f"launch.preemption {setting!r}: use one of {known}")
    return setting


# ---------------------------------------------------------------- talking to a metadata server


@dataclass(frozen=True)
class Endpoint:
    """A metadata server: `http://host:port/prefix`."""

    host: str
    port: int
    prefix: str = ""
    https: bool = False

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url if "://" in url else "http://" + url)
        if not parts.hostname:
            raise MetadataError(f"{url!r} is not a URL")
        https = parts.scheme == "https"
        return cls(
            parts.hostname, parts.port or (443 if https else 80), parts.path.rstrip("/"), https
        )

    def request(
        self, method: str, path: str, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        """One request, straight to the server (no proxy: metadata is never proxied)."""
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=REQUEST_TIMEOUT_S)
        try:
            conn.request(method, self.prefix + path, headers=dict(headers))
            response = conn.getresponse()
            body = response.read(MAX_BODY_BYTES)
            return response.status, {k.lower(): v for k, v in response.getheaders()}, body
        except (OSError, http.client.HTTPException) as exc:
            raise MetadataError(str(exc) or type(exc).__name__) from None
        finally:
            conn.close()


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise MetadataError(f"unreadable answer ({exc})") from None


def _seconds_until(when: float | None, now_s: float) -> float | None:
    return None if when is None else when - now_s


def _iso_time(text: Any) -> float | None:
    from datetime import datetime

    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class AwsWatch:
    """IMDSv2: a session token, then the spot instance action and the rebalance hint."""

    name = "aws"

    def __init__(self, env: Mapping[str, str], clock: Callable[[], float] = time.time):
        self.endpoint = Endpoint.parse(env.get(AWS_ENDPOINT_ENV) or f"http://{METADATA_IP}")
        self._clock = clock
        self._token: str | None = None
        self._token_at_s = 0.0
        self._v1 = False  # the server refused tokens: IMDSv1

    def _headers(self) -> dict[str, str]:
        now_s = self._clock()
        if self._v1:
            return {}
        if self._token is None or now_s - self._token_at_s > AWS_TOKEN_TTL_S - 60:
            status, _, body = self.endpoint.request(
                "PUT",
                "/latest/api/token",
                {"X-aws-ec2-metadata-token-ttl-seconds": str(AWS_TOKEN_TTL_S)},
            )
            if status in (403, 404, 405):
                self._v1 = True  # tokens turned off on this instance: ask without one
                return {}
            if status != 200 or not body.strip():
                raise MetadataError(f"token request answered HTTP {status}")
            self._token, self._token_at_s = body.decode("ascii", "replace").strip(), now_s
        return {"X-aws-ec2-metadata-token": self._token}

    def _get(self, path: str) -> tuple[int, bytes]:
        status, _, body = self.endpoint.request("GET", path, self._headers())
        if status == 401:  # the token expired early (the server restarted): take a new one
            self._token = None
            status, _, body = self.endpoint.request("GET", path, self._headers())
        return status, body

    def poll(self) -> list[Notice]:
        found: list[Notice] = []
        status, body = self._get("/latest/meta-data/spot/instance-action")
        if status == 200:
            data = _json(body)
            action = data.get("action") if isinstance(data, dict) else None
            when = _iso_time(data.get("time")) if isinstance(data, dict) else None
            detail = str(action) if action and action != "terminate" else ""
            found.append(Notice("aws", _seconds_until(when, self._clock()), detail=detail))
        elif status != 404:
            raise MetadataError(f"spot/instance-action answered HTTP {status}")
        status, body = self._get("/latest/meta-data/events/recommendations/rebalance")
        if status == 200:
            found.append(
                Notice("aws", warning_only=True, detail="the instance is at elevated risk of "
                       "interruption")
            )  # fmt: skip
        elif status != 404:
            raise MetadataError(f"rebalance recommendation answered HTTP {status}")
        return found


class GcpWatch:
    """`instance/preempted` turns TRUE about 30 s before the machine is taken."""

    name = "gcp"

    def __init__(self, env: Mapping[str, str], clock: Callable[[], float] = time.time):
        self.endpoint = Endpoint.parse(env.get(GCP_HOST_ENV) or METADATA_IP)

    def poll(self) -> list[Notice]:
        status, headers, body = self.endpoint.request(
            "GET", "/computeMetadata/v1/instance/preempted", {"Metadata-Flavor": "Google"}
        )
        if status != 200:
            raise MetadataError(f"instance/preempted answered HTTP {status}")
        if headers.get("metadata-flavor") != "Google":
            raise MetadataError("the answer is not from a GCP metadata server")
        if body.strip().upper() == b"TRUE":
            return [Notice("gcp", GCP_NOTICE_S)]
        return []


class AzureWatch:
    """Scheduled events: a `Preempt` event naming this machine (or none in particular)."""

    name = "azure"
    EVENTS = "/metadata/scheduledevents?api-version=2020-07-01"
    NAME = "/metadata/instance/compute/name?api-version=2021-02-01&format=text"

    def __init__(self, env: Mapping[str, str], clock: Callable[[], float] = time.time):
        self.endpoint = Endpoint.parse(env.get(AZURE_ENDPOINT_ENV) or f"http://{METADATA_IP}")
        self._clock = clock
        self._vm_name: str | None = None

    def _machine_name(self) -> str | None:
        if self._vm_name is None:
            status, _, body = self.endpoint.request("GET", self.NAME, {"Metadata": "true"})
            if status == 200:
                self._vm_name = body.decode("utf-8", "replace").strip()
        return self._vm_name or None

    def poll(self) -> list[Notice]:
        status, _, body = self.endpoint.request("GET", self.EVENTS, {"Metadata": "true"})
        if status != 200:
            raise MetadataError(f"scheduledevents answered HTTP {status}")
        data = _json(body)
        events = data.get("Events") if isinstance(data, dict) else None
        for event in events if isinstance(events, list) else []:
            if not isinstance(event, dict) or event.get("EventType") != "Preempt":
                continue
            if event.get("EventStatus") not in (None, "Scheduled", "Started"):
                continue
            resources = event.get("Resources") or []
            name = self._machine_name() if resources else None
            if name is not None and name not in resources:
                continue  # another machine of the scale set
            return [
                Notice("azure", _seconds_until(_http_date(event.get("NotBefore")), self._clock()))
            ]
        return []


def _http_date(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Provider:
    """One cloud: how its machines are recognised and how its notice is watched."""

    detect: Callable[[Mapping[str, str]], bool]
    watch: Callable[..., Any]


PROVIDERS: dict[str, Provider] = {
    "aws": Provider(_is_aws, AwsWatch),
    "gcp": Provider(_is_gcp, GcpWatch),
    "azure": Provider(_is_azure, AzureWatch),
}


# ---------------------------------------------------------------- the watcher thread


class PreemptionWatcher(threading.Thread):
    """Polls one provider until a notice comes (then hands it over once and ends) or `close`.
    Warnings (AWS rebalance) are handed over once each; failures are said once, and again
    only after the server has answered in between."""

    def __init__(
        self,
        watch: Any,
        poll_s: float,
        on_notice: Callable[[Notice], None],
        on_warning: Callable[[Notice], None],
        say: Callable[[str], None],
    ):
        super().__init__(name=f"preemption-{watch.name}", daemon=True)
        self.watch = watch
        self.poll_s = poll_s
        self._on_notice = on_notice
        self._on_warning = on_warning
        self._say = say
        self._closing = threading.Event()
        self._warned: set[str] = set()
        self._failing = False
        self.polls = 0

    def run(self) -> None:
        while not self._closing.is_set():
            try:
                notices = self.watch.poll()
            except MetadataError as exc:
                if not self._failing:
                    self._say(
                        f"preemption watch ({self.watch.name}): metadata server not answering "
                        f"({exc}); still trying every {self.poll_s:g} s"
                    )
                self._failing = True
                notices = []
            else:
                if self._failing:
                    self._say(f"preemption watch ({self.watch.name}): metadata server answers")
                self._failing = False
            self.polls += 1
            for notice in notices:
                if not notice.warning_only:
                    self._on_notice(notice)
                    return
                if notice.reason() not in self._warned:
                    self._warned.add(notice.reason())
                    self._on_warning(notice)
            self._closing.wait(self.poll_s)

    def close(self) -> None:
        self._closing.set()


def start_watcher(
    setting: str,
    poll_s: float,
    on_notice: Callable[[Notice], None],
    on_warning: Callable[[Notice], None],
    say: Callable[[str], None],
    env: Mapping[str, str] | None = None,
) -> PreemptionWatcher | None:
    """Start watching the provider `setting` names (see `choose_provider`); None when there is
    nothing to watch."""
    env = os.environ if env is None else env
    provider = choose_provider(setting)
    if provider is None:
        if setting == "auto":
            say("preemption watch: no cloud recognised from this machine's DMI data; not polling")
        return None
    if provider == "aws" and env.get(AWS_DISABLED_ENV, "").lower() == "true":
        say(f"preemption watch (aws): {AWS_DISABLED_ENV}=true; not polling")
        return None
    try:
        watch = PROVIDERS[provider].watch(env)
    except MetadataError as exc:
        say(f"preemption watch ({provider}): bad endpoint ({exc}); not polling")
        return None
    endpoint = watch.endpoint
    say(
        f"preemption watch ({provider}): polling {endpoint.host}:{endpoint.port} every {poll_s:g} s"
    )
    watcher = PreemptionWatcher(watch, poll_s, on_notice, on_warning, say)
    watcher.start()
    return watcher
