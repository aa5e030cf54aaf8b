"""deploy/k8s, validated offline: the core kinds against the Kubernetes
OpenAPI schemas that the `kubernetes-validate` package ships (strict: an
unknown or misspelt field fails), the PodMonitor (a CRD, in no core schema)
against the part of the Prometheus Operator's schema it uses, and the
pieces checked against each other and against ctbpf itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from deploy_contract import DEPLOY, in_ci

K8S = DEPLOY / "k8s"
#: The oldest Kubernetes the manifests are meant for (securityContext.
#: appArmorProfile is 1.30+) and the newest kubernetes-validate knows.
OLDEST = "1.30.0"


def _kv():
    try:
        import kubernetes_validate
    except ImportError:
        reason = "needs the kubernetes-validate package (pip install -e '.[test]', or make setup)"
        if in_ci():
            pytest.fail(f"{reason}; CI=true, so this fails instead of skipping", pytrace=False)
        pytest.skip(reason)
    return kubernetes_validate


def _docs() -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path, doc))
    return out


def _one(kind: str) -> dict:
    found = [doc for _, doc in _docs() if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def parse_run_args(argv: list[str]):
    """argv parsed by ctbpf's own CLI parser: every option must exist."""
    import contextlib
    import io

    from ctbpf.cli.main import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args(argv)
    except SystemExit:
        pass
    pytest.fail(f"ctbpf rejects the command line {argv}: {err.getvalue().strip()}",
                pytrace=False)


def _unit_capabilities() -> set[str]:
    text = (DEPLOY / "ctbpf.service").read_text()
    m = re.search(r"^CapabilityBoundingSet=(.*)$", text, re.M)
    return {c.removeprefix("CAP_") for c in m.group(1).split()}


CORE_KINDS = {"Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"}


def test_manifests_are_the_expected_set():
    kinds = sorted(doc["kind"] for path, doc in _docs() if path.name != "kustomization.yaml")
    assert kinds == sorted(CORE_KINDS | {"PodMonitor"})


@pytest.mark.parametrize("version", [OLDEST, "latest"])
def test_core_kinds_validate_strictly(version):
    kv = _kv()
    version = kv.latest_version() if version == "latest" else version
    checked = set()
    for path, doc in _docs():
        if doc["kind"] in CORE_KINDS:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as e:
                pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata']['name']} against "
                            f"Kubernetes {version}: {e}", pytrace=False)
            checked.add(doc["kind"])
    assert checked == CORE_KINDS


def test_strict_validation_catches_a_misspelt_field():
    """The validator really rejects what a cluster would."""
    kv = _kv()
    ds = yaml.safe_load((K8S / "daemonset.yaml").read_text())
    container = ds["spec"]["template"]["spec"]["containers"][0]
    container["readynessProbe"] = container.pop("readinessProbe")
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, kv.latest_version(), strict=True)


def test_kustomization_lists_every_manifest():
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(k["resources"]) == sorted(files)


def test_everything_in_one_namespace():
    ns = _one("Namespace")["metadata"]["name"]
    for path, doc in _docs():
        if doc["kind"] not in {"Namespace", "Kustomization"}:
            assert doc["metadata"]["namespace"] == ns, path.name
    # hostNetwork, hostPath and capabilities are refused by the baseline
    # Pod Security Standard: the namespace must allow them
    assert _one("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == \
        "privileged"


# --------------------------------------------------------------------------
# the DaemonSet

@pytest.fixture(scope="module")
def pod() -> dict:
    return _one("DaemonSet")["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def ctbpf_container(pod) -> dict:
    (c,) = [c for c in pod["containers"] if c["name"] == "ctbpf"]
    return c


def _mounts(container: dict, pod: dict) -> dict[str, tuple[dict, dict]]:
    volumes = {v["name"]: v for v in pod["volumes"]}
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in container.get("volumeMounts", [])}


def test_daemonset_runs_on_every_node_in_the_host_network(pod):
    ds = _one("DaemonSet")
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert {"operator": "Exists"} in pod["tolerations"], "must tolerate every taint"
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # one daemon per node at a time: two on the same pins refuse each other
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"] == 0


def test_daemonset_capabilities_match_the_systemd_unit(ctbpf_container):
    sc = ctbpf_container["securityContext"]
    assert sc.get("privileged", False) is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == _unit_capabilities()
    assert {"BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN"} <= set(sc["capabilities"]["add"])
    assert sc["runAsUser"] == 0          # ctbpf checks for uid 0
    assert sc["readOnlyRootFilesystem"] is True


def test_daemonset_mounts_for_bpf_and_bcc(pod, ctbpf_container):
    mounts = _mounts(ctbpf_container, pod)
    for path in ("/sys/fs/bpf", "/lib/modules", "/usr/src", "/sys/kernel/btf"):
        mount, volume = mounts[path]
        assert volume["hostPath"]["path"] == path, path
    for path in ("/lib/modules", "/usr/src", "/sys/kernel/btf"):
        assert mounts[path][0].get("readOnly") is True, f"{path} should be read-only"
    assert mounts["/sys/fs/bpf"][0]["mountPropagation"] == "HostToContainer"
    # the privileged init container mounts a bpffs on the host if it has none
    # (Bidirectional: the mount goes back to the host, and outlives the pod)
    (init,) = pod["initContainers"]
    init_mount, init_volume = _mounts(init, pod)["/sys/fs/bpf"]
    assert init_mount["mountPropagation"] == "Bidirectional"
    assert init["securityContext"]["privileged"] is True   # Bidirectional requires it
    assert init_volume["hostPath"]["path"] == "/sys/fs/bpf"
    # a read-only root needs somewhere to write the status file and socket
    assert "emptyDir" in mounts["/run/ctbpf"][1]


def test_daemonset_command_line_is_ctbpf_run(ctbpf_container):
    """The args parse with ctbpf's own CLI parser: every option exists."""
    args = parse_run_args(ctbpf_container["args"])
    assert args.command == "run"
    assert args.iface, "no --iface"
    assert args.keep_attached is True
    assert args.config == "/etc/ctbpf/ctbpf.toml"
    # in-cluster scraping and the kubelet's probes need more than loopback
    assert args.metrics_addr == "0.0.0.0:9476"


def test_daemonset_metrics_port_and_probes(ctbpf_container):
    args = ctbpf_container["args"]
    port = int(args[args.index("--metrics-addr") + 1].rsplit(":", 1)[1])
    (metrics,) = [p for p in ctbpf_container["ports"] if p["name"] == "metrics"]
    assert metrics["containerPort"] == port
    assert metrics.get("hostPort", port) == port     # hostNetwork: they must agree
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = ctbpf_container[probe]["httpGet"]
        assert get["path"] == "/metrics" and get["port"] in ("metrics", port), probe


def test_daemonset_resources(ctbpf_container):
    res = ctbpf_container["resources"]
    assert {"cpu", "memory"} <= set(res["requests"])
    assert "memory" in res["limits"]


def test_daemonset_references_resolve(pod):
    sa = _one("ServiceAccount")
    cm = _one("ConfigMap")
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    config_volumes = [v for v in pod["volumes"] if "configMap" in v]
    assert [v["configMap"]["name"] for v in config_volumes] == [cm["metadata"]["name"]]


def test_configmap_is_a_valid_ctbpf_config(ctbpf_container, pod):
    from ctbpf.agent import configfile

    cm = _one("ConfigMap")
    mount, _ = next((m, v) for m, v in _mounts(ctbpf_container, pod).values() if "configMap" in v)

    args = ctbpf_container["args"]
    path = args[args.index("--config") + 1]
    assert Path(path).parent == Path(mount["mountPath"])
    text = cm["data"][Path(path).name]
    parsed = configfile.parse_text(text, "configmap.yaml:ctbpf.toml")   # raises on any mistake
    assert parsed is not None


def test_images_are_pinned(pod):
    for c in pod["initContainers"] + pod["containers"]:
        image = c["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image


def test_init_container_script_is_valid_shell(pod, tmp_path):
    import subprocess

    (init,) = pod["initContainers"]
    assert init["command"][:2] == ["/bin/sh", "-c"]
    proc = subprocess.run(["sh", "-n", "-c", init["command"][2]], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------
# the PodMonitor

_RELABEL = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "separator": {"type": "string"}, "targetLabel": {"type": "string"},
        "regex": {"type": "string"}, "modulus": {"type": "integer"},
        "replacement": {"type": "string"},
        "action": {"enum": ["replace", "keep", "drop", "hashmod", "labelmap", "labeldrop",
                            "labelkeep", "lowercase", "uppercase", "keepequal", "dropequal"]},
    },
}
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?"
                                          r"(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
#: The part of the Prometheus Operator's PodMonitor schema
#: (monitoring.coreos.com/v1) that our manifest uses; unknown fields fail,
#: as a misspelt field would be pruned silently by the API server.
PODMONITOR_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object", "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "selector": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"matchLabels": {"type": "object",
                                                   "additionalProperties": {"type": "string"}},
                                   "matchExpressions": {"type": "array"}},
                },
                "namespaceSelector": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"},
                                   "matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "sampleLimit": {"type": "integer"},
                "podMetricsEndpoints": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"}, "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": _DURATION, "scrapeTimeout": _DURATION,
                            "honorLabels": {"type": "boolean"},
                            "honorTimestamps": {"type": "boolean"},
                            "relabelings": {"type": "array", "items": _RELABEL},
                            "metricRelabelings": {"type": "array", "items": _RELABEL},
                        },
                    },
                },
            },
        },
    },
}


def test_podmonitor_structure():
    _kv()   # jsonschema comes with it
    import jsonschema

    pm = _one("PodMonitor")
    jsonschema.validate(pm, PODMONITOR_SCHEMA)


def test_podmonitor_selects_the_daemonset_metrics_port(ctbpf_container):
    pm = _one("PodMonitor")
    ds = _one("DaemonSet")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert ds["metadata"]["namespace"] in pm["spec"]["namespaceSelector"]["matchNames"]
    port_names = {p["name"] for p in ctbpf_container["ports"]}
    for ep in pm["spec"]["podMetricsEndpoints"]:
        assert ep["port"] in port_names
        assert ep.get("path", "/metrics") == "/metrics"
        # a scrape must end before the next one starts
        assert _seconds(ep["scrapeTimeout"]) < _seconds(ep["interval"])


def test_podmonitor_job_is_the_one_the_alerts_use():
    """The job label comes from the pod label named by jobLabel; the alert
    rules and the dashboard expect job="ctbpf", like the host scrape config."""
    pm = _one("PodMonitor")
    ds = _one("DaemonSet")
    job = ds["spec"]["template"]["metadata"]["labels"][pm["spec"]["jobLabel"]]
    host = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert job == host["scrape_configs"][0]["job_name"] == "ctbpf"
    assert f'up{{job="{job}"}}' in (DEPLOY / "prometheus" / "alerts.yml").read_text()


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h)", duration))

