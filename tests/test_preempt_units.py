"""The preemption watch without a training: recognising the cloud from DMI data, each provider's
protocol against a local server playing it, short timeouts, the watcher thread, and proof that
`auto` on this machine sends nothing anywhere."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from runner import preempt
from runner.preempt import (
    AwsWatch,
    AzureWatch,
    GcpWatch,
    MetadataError,
    Notice,
    PreemptionWatcher,
    choose_provider,
    detect_cloud,
)

sys.path.insert(0, str(Path(__file__).parent))
from metadata_server import AWS_NOTICE_S, AZURE_NOTICE_S, MetadataServer

ROOT = Path(__file__).resolve().parent.parent


def dmi(tmp_path: Path, **facts: str) -> Path:
    folder = tmp_path / "dmi"
    folder.mkdir()
    for name, value in facts.items():
        (folder / name).write_text(value + "\n")
    return folder


@pytest.mark.parametrize(
    ("facts", "cloud"),
    [
        ({"sys_vendor": "Amazon EC2", "product_name": "m5.large"}, "aws"),
        ({"sys_vendor": "Xen", "bios_vendor": "Xen", "bios_version": "4.11.amazon"}, "aws"),
        ({"sys_vendor": "Google", "product_name": "Google Compute Engine"}, "gcp"),
        (
            {
                "sys_vendor": "Microsoft Corporation",
                "product_name": "Virtual Machine",
                "chassis_asset_tag": preempt.AZURE_ASSET_TAG,
            },
            "azure",
        ),
        # Hyper-V on someone's desk: the same vendor and product, no Azure asset tag.
        ({"sys_vendor": "Microsoft Corporation", "product_name": "Virtual Machine"}, None),
        ({"sys_vendor": "QEMU", "product_name": "Standard PC (Q35 + ICH9, 2009)"}, None),
        ({}, None),
    ],
)
def test_the_cloud_is_recognised_from_dmi_data_alone(
    tmp_path: Path, facts: dict[str, str], cloud: str | None
) -> None:
    folder = dmi(tmp_path, **facts)
    assert detect_cloud(folder) == cloud
    assert choose_provider("auto", folder) == cloud
    assert choose_provider("off", folder) is None
    assert choose_provider("gcp", folder) == "gcp"  # named in the preset: watched anyway
    assert detect_cloud(tmp_path / "no-such-folder") is None


def test_the_preset_field_takes_yaml_as_people_write_it() -> None:
    from presets.store import PresetError, load_preset

    assert load_preset("demo", ["launch.preemption=off"]).launch.preemption == "off"
    assert load_preset("demo", ["launch.watchdog=false"]).launch.watchdog.enabled is False
    assert load_preset("demo", []).launch.preemption == "auto"
    with pytest.raises(PresetError) as caught:
        load_preset("demo", ["launch.preemption=ibm"])
    assert "launch.preemption: must be 'auto', 'aws', 'gcp', 'azure' or 'off'" in str(caught.value)


def test_aws_asks_with_a_session_token_and_renews_it() -> None:
    with MetadataServer("aws") as server:
        watch = AwsWatch(server.env())
        assert watch.poll() == []
        assert watch.poll() == []
        puts = [r for r in server.requests if r.method == "PUT"]
        assert len(puts) == 1  # one token for many polls
        assert puts[0].headers["X-aws-ec2-metadata-token-ttl-seconds"] == "21600"
        gets = [r for r in server.requests if r.method == "GET"]
        assert gets and all(r.headers["X-aws-ec2-metadata-token"] in server.tokens for r in gets)
        server.tokens.clear()  # the server forgot its tokens (restarted): 401, then a new one
        server.notice.set()
        (notice,) = watch.poll()
        assert len([r for r in server.requests if r.method == "PUT"]) == 2
    assert notice.provider == "aws" and not notice.warning_only
    assert notice.seconds_left is not None
    assert AWS_NOTICE_S - 5 <= notice.seconds_left <= AWS_NOTICE_S
    assert notice.reason() in {f"spot notice (aws), {s} s" for s in range(115, 121)}


def test_aws_rebalance_is_a_warning_only() -> None:
    with MetadataServer("aws", rebalance=True) as server:
        (warning,) = AwsWatch(server.env()).poll()
    assert warning.warning_only
    assert warning.reason().startswith("rebalance recommendation (aws)")


def test_gcp_preempted_flag_and_its_header() -> None:
    with MetadataServer("gcp") as server:
        watch = GcpWatch(server.env())
        assert watch.poll() == []
        assert all(r.headers["Metadata-Flavor"] == "Google" for r in server.requests)
        server.notice.set()
        (notice,) = watch.poll()
    assert notice.reason() == "spot notice (gcp), about 30 s"
    # A server that does not answer as GCP's does is not taken at its word.
    with MetadataServer("aws") as not_gcp, pytest.raises(MetadataError):
        GcpWatch({"GCE_METADATA_HOST": f"127.0.0.1:{not_gcp.port}"}).poll()


def test_azure_preempt_event_for_this_machine_only() -> None:
    with MetadataServer("azure") as server:
        watch = AzureWatch(server.env())
        assert watch.poll() == []  # a Preempt event for another machine of the set
        assert all(r.headers["Metadata"] == "true" for r in server.requests)
        assert any("api-version=2020-07-01" in r.path for r in server.notice_polls())
        server.notice.set()
        (notice,) = watch.poll()
    assert notice.provider == "azure" and notice.seconds_left is not None
    assert AZURE_NOTICE_S - 5 <= notice.seconds_left <= AZURE_NOTICE_S + 1


def test_a_slow_or_missing_server_costs_about_a_second_and_raises_nothing_else() -> None:
    with MetadataServer("gcp", slow_s=10) as server:
        started = time.monotonic()
        with pytest.raises(MetadataError):
            GcpWatch(server.env()).poll()
        assert time.monotonic() - started < preempt.REQUEST_TIMEOUT_S + 2
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]  # nothing listens once this socket is closed
    started = time.monotonic()
    with pytest.raises(MetadataError):
        AwsWatch({"AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{closed_port}"}).poll()
    assert time.monotonic() - started < preempt.REQUEST_TIMEOUT_S + 2


def _wait(predicate: object, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError("timed out")


def test_the_watcher_hands_over_one_notice_and_says_a_failure_once() -> None:
    notices: list[Notice] = []
    said: list[str] = []
    with MetadataServer("aws", rebalance=True) as server:
        warnings: list[Notice] = []
        watcher = PreemptionWatcher(
            AwsWatch(server.env()), 0.02, notices.append, warnings.append, said.append
        )
        watcher.start()
        _wait(lambda: watcher.polls >= 5)
        assert len(warnings) == 1 and notices == []  # the same warning is handed over once
        server.notice.set()
        watcher.join(timeout=30)
        assert not watcher.is_alive()  # a notice ends the watch
    assert len(notices) == 1 and notices[0].provider == "aws"
    failing = PreemptionWatcher(
        GcpWatch({"GCE_METADATA_HOST": f"127.0.0.1:{server.port}"}),
        0.01,
        notices.append,
        notices.append,
        said.append,
    )
    failing.start()
    _wait(lambda: failing.polls >= 5)
    failing.close()
    failing.join(timeout=30)
    assert [line for line in said if "not answering" in line] == [said[-1]]


# A program that records every attempt to reach another machine, then runs the watcher's start
# as the trainer does.
RECORDER = textwrap.dedent(
    """
    import json, socket, sys, time
    attempts = []
    def record(name, original):
        def wrapper(*args, **kwargs):
            attempts.append([name, repr(args[1:] if name != "getaddrinfo" else args[:2])])
            return original(*args, **kwargs)
        return wrapper
    for name in ("connect", "connect_ex", "sendto", "sendmsg"):
        setattr(socket.socket, name, record(name, getattr(socket.socket, name)))
    socket.getaddrinfo = record("getaddrinfo", socket.getaddrinfo)
    from runner import preempt
    said = []
    watcher = preempt.start_watcher(sys.argv[1], 0.01, print, print, said.append)
    if watcher is not None:
        while watcher.polls < 2:
            time.sleep(0.01)
        watcher.close()
    print(json.dumps({"watcher": watcher is not None, "attempts": attempts, "said": said}))
    """
)


def _record(setting: str, env: dict[str, str]) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", RECORDER, setting],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_auto_on_this_machine_attempts_no_connection() -> None:
    if detect_cloud(preempt.DMI_DIR) is not None:
        pytest.skip("this machine is a cloud machine: auto would rightly poll its metadata")
    env = {k: v for k, v in os.environ.items() if k != preempt.DMI_DIR_ENV}
    got = _record("auto", env)
    assert got["watcher"] is False and got["attempts"] == [], got
    assert "no cloud recognised" in str(got["said"])
    # The recorder does see an attempt when there is one (a provider named, nobody listening).
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    control = _record(
        "aws", {**env, "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{port}"}
    )
    assert control["watcher"] is True
    assert any(name == "connect" and f"{port}" in where for name, where in control["attempts"])
