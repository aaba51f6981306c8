"""deploy/: the Kubernetes manifests validate, and they and the Dockerfile agree with tether.

Docker cannot build an image in the test environment (no engine), so the
Dockerfile is checked for its shape: the base, the user, the exec form, the
stop signal, and a command line that `tether run` accepts.
"""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml

from tether.cli import run
from tether.config import ShutdownBudget

from proc import tether

DEPLOY = Path(__file__).parent.parent / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
#: The newest Kubernetes schema kubernetes-validate ships (it works offline).
K8S_VERSION = kubernetes_validate.utils.latest_version()


def resources() -> dict[str, dict[str, Any]]:
    """Every resource in deploy/kubernetes, by kind."""
    found: dict[str, dict[str, Any]] = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found[doc["kind"]] = doc
    return found


def run_options(argv: list[str]) -> dict[str, Any]:
    """Parse a `tether run ...` command line exactly as the CLI would; its options by name."""
    assert argv[:2] == ["tether", "run"], argv
    args = argv[2:]
    with click.Context(run) as ctx:
        return dict(run.make_context("run", args, parent=ctx).params)


def container() -> dict[str, Any]:
    containers = resources()["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    spec: dict[str, Any] = containers[0]
    return spec


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_a_current_kubernetes_schema(path: Path) -> None:
    """Each manifest passes strict validation (unknown fields rejected) against the schema."""
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_validation_catches_a_misspelt_field() -> None:
    """The validator does reject a mistake, so a pass above means something."""
    deployment = resources()["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_set_is_complete() -> None:
    """A Deployment, a Service and a PodDisruptionBudget, all selecting the same pods."""
    found = resources()
    assert set(found) == {"Deployment", "Service", "PodDisruptionBudget"}
    labels = found["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for selector in (
        found["Deployment"]["spec"]["selector"]["matchLabels"],
        found["Service"]["spec"]["selector"],
        found["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()


def test_grace_period_covers_the_graceful_timeout_and_the_last_resort() -> None:
    """The kubelet's SIGKILL comes after tether's whole stop, which counts the drain delay."""
    options = run_options(container()["command"])
    assert 0 < options["drain_delay"] < options["graceful_timeout"]
    grace = resources()["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    last_resort = ShutdownBudget(options["graceful_timeout"]).master_kill
    assert grace > options["graceful_timeout"] + last_resort


def test_probes_and_scrape_point_at_the_debug_server() -> None:
    """Readiness on /readyz, liveness on /healthz, Prometheus on /metrics, all on --debug-bind."""
    spec = container()
    debug_port = int(flag(spec["command"], "--debug-bind").rsplit(":", 1)[1])
    http_port = int(flag(spec["command"], "--bind").rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    assert ports == {"http": http_port, "debug": debug_port}
    assert spec["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "debug"}
    assert spec["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "debug"}
    annotations = resources()["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(debug_port),
        "prometheus.io/path": "/metrics",
    }
    service_port = resources()["Service"]["spec"]["ports"][0]
    assert service_port["targetPort"] == "http"


def test_debug_token_comes_from_a_secret_file() -> None:
    """--debug-token-file names a file inside a mounted Secret; no token on the command line."""
    spec = container()
    assert "--debug-token" not in spec["command"]
    path = flag(spec["command"], "--debug-token-file")
    volumes = {
        v["name"]: v for v in resources()["Deployment"]["spec"]["template"]["spec"]["volumes"]
    }
    for mount in spec["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if secret is not None and path.startswith(mount["mountPath"] + "/"):
            names = [item["path"] for item in secret["items"]]
            assert path.removeprefix(mount["mountPath"] + "/") in names
            assert mount["readOnly"] is True
            return
    raise AssertionError(f"{path} is not in a mounted Secret")


def test_the_kubelet_and_prometheus_get_through_the_host_check(tmp_path: Path) -> None:
    """The Deployment's debug flags on loopback: probes and scrapes sent to the pod's IP answer."""
    argv = container()["command"]
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    token.chmod(0o600)
    debug_flags = ["--debug-token-file", str(token), "--workers", flag(argv, "--workers")]
    with tether("echo:app", *debug_flags) as t:
        t.ready()
        # The kubelet and Prometheus both address the pod by IP: that is the Host they send.
        pod = {"Host": f"10.244.1.7:{t.debug_port}", "User-Agent": "kube-probe/1.33"}
        spec = container()
        for probe in ("readinessProbe", "livenessProbe"):
            path = spec[probe]["httpGet"]["path"]
            assert get_with(t.debug_port, path, pod) == 200, probe
        annotations = resources()["Deployment"]["spec"]["template"]["metadata"]["annotations"]
        scrape = {"Host": f"10.244.1.7:{t.debug_port}", "User-Agent": "Prometheus/3.0.0"}
        assert get_with(t.debug_port, annotations["prometheus.io/path"], scrape) == 200


def get_with(port: int, path: str, headers: dict[str, str]) -> int:
    """One GET with these headers on its own connection: the status."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return int(resp.status)
    finally:
        conn.close()


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = (DEPLOY / "container" / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_shape() -> None:
    """Slim Python base, a non-root user, STOPSIGNAL SIGTERM, `tether run` in exec form."""
    instructions = dockerfile()
    keywords = [k for k, _ in instructions]
    values = dict(instructions)
    assert re.fullmatch(r"python:3\.1[1-9]-slim", values["FROM"])
    user = values["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0
    assert keywords.index("USER") < keywords.index("CMD")
    assert values["STOPSIGNAL"] == "SIGTERM"
    assert "ENTRYPOINT" not in values
    cmd = json.loads(values["CMD"])  # exec form: a JSON array, no shell in between
    run_options(cmd)
    assert cmd == container()["command"], "the image and the Deployment run the same command"
    assert "/healthz" in values["HEALTHCHECK"]
    runs_as = resources()["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert runs_as["runAsUser"] == int(user)
