"""The Kubernetes manifests (deploy/k8s), rendered by kustomize for every overlay.

Each object is validated against the Kubernetes schemas (kubernetes-validate, strict: no
unknown field) for the oldest supported version and the newest; then the properties the
deployment promises are checked on the rendered objects themselves.
"""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.common.config import Settings
from tests.deploy.manifests import (
    DEPLOY,
    OVERLAYS,
    REPO,
    Obj,
    Workload,
    by_kind,
    load_all,
    render,
    selects,
    workloads,
)

# The probes' `sleep` preStop action is on by default from Kubernetes 1.30.
KUBERNETES_VERSIONS = ("1.30", "1.37")
SETTINGS_DEFAULTS = Settings()
GRPC_SERVICES = ("generator", "trainer", "gallery")
SECRET_KEYS = {
    "sdstack-s3": {"access-key", "secret-key"},
    "sdstack-db": {"username", "password", "database-url"},
    "sdstack-api-keys": {"api-keys"},
}
# Variables that are not settings: the trainer sets this one in each training Job it creates
# (read by services/trainer/job.py). Every other SDSTACK_* must be a setting of config.py.
PENDING_SETTINGS = {"SDSTACK_TRAINING_JOB_ID"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {overlay: load_all(render(overlay)) for overlay in OVERLAYS}


@pytest.fixture(params=OVERLAYS)
def objects(request: pytest.FixtureRequest, rendered: dict[str, list[Obj]]) -> list[Obj]:
    return rendered[request.param]


def _workload(objects: list[Obj], name: str) -> Workload:
    return next(w for w in workloads(objects) if w.name == name)


def _container(workload: Workload, name: str) -> Obj:
    return next(c for c in workload.pod["containers"] if c["name"] == name)


def test_every_overlay_is_tested() -> None:
    found = {p.name for p in (DEPLOY / "k8s" / "overlays").iterdir() if p.is_dir()}
    assert found == set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_against_the_kubernetes_schemas(
    overlay: str, rendered: dict[str, list[Obj]]
) -> None:
    objects = rendered[overlay]
    assert len(objects) > 30
    for obj in objects:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = "/".join(str(p) for p in error.path)
                pytest.fail(f"{overlay} {obj['kind']}/{obj['metadata']['name']} {path}: {error}")
            except kubernetes_validate.SchemaNotFoundError as error:
                pytest.fail(f"{overlay}: {error.message}")


def test_everything_lives_in_the_sdstack_namespace(objects: list[Obj]) -> None:
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "sdstack", obj["metadata"]["name"]
    namespace = by_kind(objects, "Namespace")["sdstack"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_services_are_probed_on_grpc_health_with_a_long_startup(objects: list[Obj]) -> None:
    for service in GRPC_SERVICES:
        workload = _workload(objects, f"sdstack-{service}")
        container = _container(workload, service)
        port = getattr(SETTINGS_DEFAULTS, f"{service}_port")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": port}, (service, probe)
        assert {p["containerPort"] for p in container["ports"]} == {
            port,
            getattr(SETTINGS_DEFAULTS, f"{service}_metrics_port"),
        }
    startup = _container(_workload(objects, "sdstack-generator"), "generator")["startupProbe"]
    # Health turns SERVING only after the default checkpoint is downloaded and loaded.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600

    gateway = _container(_workload(objects, "sdstack-gateway"), "gateway")
    assert gateway["ports"] == [{"name": "http", "containerPort": SETTINGS_DEFAULTS.gateway_port}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert gateway[probe]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_every_long_running_container_has_probes(objects: list[Obj]) -> None:
    for workload in workloads(objects):
        if workload.kind == "CronJob":
            continue  # training Jobs run to completion
        for container in workload.pod["containers"]:
            assert "readinessProbe" in container, workload.name
            assert "livenessProbe" in container, workload.name


def test_shutdown_is_graceful_long_enough_to_finish_a_generation(objects: list[Obj]) -> None:
    for workload in workloads(objects):
        if workload.kind != "Deployment":
            continue
        container = workload.pod["containers"][0]
        pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        grace = float(workload.env(container)["SDSTACK_SHUTDOWN_GRACE_SECONDS"]["value"])
        # endpoints forget the pod (preStop), then the server drains for `grace`, then
        # Kubernetes kills it: the drain must fit inside the termination grace period.
        assert workload.pod["terminationGracePeriodSeconds"] > pre_stop + grace, workload.name
    generator = _workload(objects, "sdstack-generator")
    container = _container(generator, "generator")
    assert float(generator.env(container)["SDSTACK_SHUTDOWN_GRACE_SECONDS"]["value"]) >= 120
    gateway = _workload(objects, "sdstack-gateway")
    gateway_grace = float(
        gateway.env(_container(gateway, "gateway"))["SDSTACK_SHUTDOWN_GRACE_SECONDS"]["value"]
    )
    # the gateway's streams outlive the generation they relay
    assert gateway_grace > float(
        generator.env(container)["SDSTACK_SHUTDOWN_GRACE_SECONDS"]["value"]
    )


def _gpu_requests(container: Obj) -> tuple[str | None, str | None]:
    resources = container.get("resources", {})
    return (
        resources.get("requests", {}).get("nvidia.com/gpu"),
        resources.get("limits", {}).get("nvidia.com/gpu"),
    )


def test_gpu_cluster_puts_generators_and_training_jobs_on_gpus(
    rendered: dict[str, list[Obj]],
) -> None:
    objects = rendered["gpu-cluster"]
    gpu_workloads = {"sdstack-generator": "generator", "sdstack-trainer-job": "train"}
    for name, container_name in gpu_workloads.items():
        workload = _workload(objects, name)
        container = _container(workload, container_name)
        assert _gpu_requests(container) == ("1", "1"), name
        assert workload.pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {
            "key": "nvidia.com/gpu",
            "operator": "Exists",
            "effect": "NoSchedule",
        } in workload.pod["tolerations"]
        assert workload.env(container)["SDSTACK_DEVICE"]["value"] == "cuda"
    for workload in workloads(objects):
        if workload.name not in gpu_workloads:
            for container in workload.containers:
                assert _gpu_requests(container) == (None, None), workload.name


def test_local_overlay_runs_on_cpu_without_gpu_requests(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["local"]
    for workload in workloads(objects):
        assert "nodeSelector" not in workload.pod, workload.name
        for container in workload.containers:
            assert _gpu_requests(container) == (None, None), workload.name
    config = by_kind(objects, "ConfigMap")["sdstack-config"]["data"]
    assert config["SDSTACK_DEVICE"] == "cpu"
    assert config["SDSTACK_INSTALL_DEMO_MODEL"] == "true"


def test_no_container_is_privileged_or_runs_as_root(objects: list[Obj]) -> None:
    for workload in workloads(objects):
        pod = workload.pod
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, workload.name
        assert context["runAsUser"] >= 10000, workload.name
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, workload.name
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(host), (workload.name, host)
        for volume in pod.get("volumes", []):
            assert "hostPath" not in volume, (workload.name, volume["name"])
        for container in workload.containers:
            sc = container["securityContext"]
            assert sc.get("privileged", False) is False, workload.name
            assert sc["allowPrivilegeEscalation"] is False, workload.name
            assert sc["readOnlyRootFilesystem"] is True, workload.name
            assert sc["capabilities"] == {"drop": ["ALL"]}, workload.name
            assert "add" not in sc["capabilities"], workload.name


def test_every_container_has_resource_requests_and_limits(objects: list[Obj]) -> None:
    for workload in workloads(objects):
        for container in workload.containers:
            resources = container["resources"]
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory", "ephemeral-storage"):
                    assert resource in resources[kind], (workload.name, kind, resource)
        for volume in workload.pod.get("volumes", []):
            if "emptyDir" in volume:
                assert "sizeLimit" in volume["emptyDir"], (workload.name, volume["name"])


def test_every_workload_has_a_disruption_budget_that_allows_a_drain(objects: list[Obj]) -> None:
    budgets = by_kind(objects, "PodDisruptionBudget").values()
    for workload in workloads(objects):
        if workload.kind == "CronJob":
            continue
        matching = [b for b in budgets if selects(b["spec"]["selector"], workload.labels)]
        assert len(matching) == 1, workload.name
        assert matching[0]["spec"]["maxUnavailable"] >= 1, workload.name


def test_generator_scales_on_queue_depth_served_by_the_adapter_rule(objects: list[Obj]) -> None:
    hpa = by_kind(objects, "HorizontalPodAutoscaler")["sdstack-generator"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "sdstack-generator",
    }
    [metric] = hpa["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "sdstack_generator_queue_depth"
    assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]
    # the HPA owns the replica count: the Deployment must not reset it on every apply
    assert "replicas" not in by_kind(objects, "Deployment")["sdstack-generator"]["spec"]

    adapter = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-adapter-rules.yaml").read_text())
    [rule] = adapter["rules"]["custom"]
    assert rule["name"]["as"] == "sdstack_generator_queue_depth"
    assert rule["seriesQuery"].startswith("sdstack_generator_queue_depth{")
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }


def test_the_gateway_balances_over_generator_pods_through_headless_services(
    objects: list[Obj],
) -> None:
    services = by_kind(objects, "Service")
    config = by_kind(objects, "ConfigMap")["sdstack-config"]["data"]
    for name in ("generator", "gallery"):
        service = services[f"sdstack-{name}"]["spec"]
        assert service["clusterIP"] == "None", name
        port = getattr(SETTINGS_DEFAULTS, f"{name}_port")
        assert {"name": "grpc", "port": port, "targetPort": "grpc"} in service["ports"]
        assert config[f"SDSTACK_{name.upper()}_ADDRS"] == f"sdstack-{name}:{port}"
    # every Service selects some workload's pods
    pod_labels = [w.labels for w in workloads(objects)]
    for name, service in services.items():
        assert any(
            selects({"matchLabels": service["spec"]["selector"]}, labels) for labels in pod_labels
        ), name


def test_only_the_gateway_is_exposed_through_an_ingress_fit_for_uploads_and_streams(
    objects: list[Obj],
) -> None:
    [ingress] = by_kind(objects, "Ingress").values()
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert path["backend"]["service"] == {
                "name": "sdstack-gateway",
                "port": {"name": "http"},
            }
    annotations = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    body = re.fullmatch(r"(\d+)([mg])", annotations[prefix + "proxy-body-size"])
    assert body is not None
    body_bytes = int(body[1]) * {"m": 2**20, "g": 2**30}[body[2]]
    assert body_bytes >= SETTINGS_DEFAULTS.max_upload_bytes
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[prefix + timeout]) >= SETTINGS_DEFAULTS.request_timeout_seconds
    assert annotations[prefix + "proxy-buffering"] == "off"  # server-sent events
    assert annotations[prefix + "proxy-request-buffering"] == "off"  # large uploads
    for service in by_kind(objects, "Service").values():
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]["name"]


# -- network policies ---------------------------------------------------------------------


def _policies_for(objects: list[Obj], labels: dict[str, str]) -> list[Obj]:
    return [
        p["spec"]
        for p in by_kind(objects, "NetworkPolicy").values()
        if selects(p["spec"]["podSelector"], labels)
    ]


def _peers(objects: list[Obj], labels: dict[str, str], direction: str) -> list[tuple[Obj, Any]]:
    """(peer, ports) pairs a pod with `labels` may talk with in `direction`."""
    key = {"Ingress": "from", "Egress": "to"}[direction]
    allowed = []
    for policy in _policies_for(objects, labels):
        if direction not in policy["policyTypes"]:
            continue
        for rule in policy.get(direction.lower(), []):
            ports = frozenset(p["port"] for p in rule.get("ports", []))
            for peer in rule[key]:
                allowed.append((peer, ports))
    return allowed


def _app(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name}


def test_network_policies_deny_by_default(objects: list[Obj]) -> None:
    deny = by_kind(objects, "NetworkPolicy")["sdstack-default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    for workload in workloads(objects):
        assert len(_policies_for(objects, workload.labels)) >= 3, workload.name


def test_only_the_gateway_is_reachable_from_outside(objects: list[Obj]) -> None:
    metrics_ports = {
        "gateway": {7860},
        "generator": {9101},
        "trainer": {9102},
        "trainer-job": {9102},
        "gallery": {9103},
        "minio": {9000},
        "postgres": set(),
    }
    for workload in workloads(objects):
        app = workload.labels["app.kubernetes.io/name"]
        for peer, ports in _peers(objects, workload.labels, "Ingress"):
            assert "ipBlock" not in peer, app
            namespace = peer.get("namespaceSelector", {}).get("matchLabels", {})
            outside = namespace.get("kubernetes.io/metadata.name")
            if outside == "ingress-nginx":
                assert (app, ports) == ("gateway", frozenset({7860}))
            elif outside == "monitoring":
                assert ports and ports <= metrics_ports[app], app
            else:
                assert not namespace and "podSelector" in peer, (app, peer)


def test_only_the_services_that_need_them_reach_minio_and_postgres(objects: list[Obj]) -> None:
    def reaches(app: str, target: str, port: int) -> bool:
        return any(
            peer.get("podSelector") == {"matchLabels": _app(target)} and port in ports
            for peer, ports in _peers(objects, _app(app), "Egress")
        )

    def admits(target: str, app: str, port: int) -> bool:
        return any(
            peer.get("podSelector") == {"matchLabels": _app(app)} and port in ports
            for peer, ports in _peers(objects, _app(target), "Ingress")
        )

    store_users = {"generator", "trainer", "trainer-job", "gallery"}
    sql_users = {"trainer", "trainer-job", "gallery"}
    for app in ("gateway", "generator", "trainer", "trainer-job", "gallery"):
        assert reaches(app, "minio", 9000) == admits("minio", app, 9000) == (app in store_users)
        assert reaches(app, "postgres", 5432) == admits("postgres", app, 5432) == (app in sql_users)
    for service in GRPC_SERVICES:
        port = getattr(SETTINGS_DEFAULTS, f"{service}_port")
        assert reaches("gateway", service, port) and admits(service, "gateway", port)
    # the stores themselves call nothing
    for store in ("minio", "postgres"):
        egress = [rule for p in _policies_for(objects, _app(store)) for rule in p.get("egress", [])]
        assert all(
            peer.get("namespaceSelector", {}).get("matchLabels")
            == {"kubernetes.io/metadata.name": "kube-system"}
            for rule in egress
            for peer in rule["to"]
        ), store


# -- secrets, configuration, the training Job template --------------------------------------


def _secret_references(objects: list[Obj]) -> set[tuple[str, str | None]]:
    refs: set[tuple[str, str | None]] = set()
    for workload in workloads(objects):
        for container in workload.containers:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"]))
        for volume in workload.pod.get("volumes", []):
            if "secret" in volume:
                items = volume["secret"].get("items")
                name = volume["secret"]["secretName"]
                refs |= {(name, i["key"]) for i in items} if items else {(name, None)}
    return refs


def test_credentials_come_from_secrets_the_local_overlay_generates(
    rendered: dict[str, list[Obj]],
) -> None:
    refs = _secret_references(rendered["local"])
    assert {name for name, _ in refs} == set(SECRET_KEYS)
    secrets = by_kind(rendered["local"], "Secret")
    for name, key in refs:
        assert key is None or key in secrets[name]["data"], (name, key)
    for name, keys in SECRET_KEYS.items():
        assert set(secrets[name]["data"]) == keys


def test_gpu_cluster_keeps_no_secret_and_the_readme_says_how_to_create_each(
    rendered: dict[str, list[Obj]],
) -> None:
    objects = rendered["gpu-cluster"]
    assert by_kind(objects, "Secret") == {}
    refs = _secret_references(objects)
    assert {name for name, _ in refs} == set(SECRET_KEYS)
    readme = (DEPLOY / "README.md").read_text()
    for name, keys in SECRET_KEYS.items():
        command = re.search(
            rf"kubectl -n sdstack create secret generic {name}\b[^\n]*(\n  [^\n]*)*", readme
        )
        assert command, f"README: no `create secret` for {name}"
        for key in keys:
            assert f"--from-literal={key}=" in command[0] or f"--from-file={key}=" in command[0], (
                name,
                key,
            )
    tls = by_kind(objects, "Ingress")["sdstack"]["spec"]["tls"][0]["secretName"]
    assert f"create secret tls {tls}" in readme


def test_every_sdstack_variable_is_a_setting_the_services_read(objects: list[Obj]) -> None:
    fields = {f"SDSTACK_{name.upper()}" for name in Settings.model_fields}
    config = by_kind(objects, "ConfigMap")["sdstack-config"]["data"]
    names = {k for k in config if k.startswith("SDSTACK_")}
    for workload in workloads(objects):
        for container in workload.containers:
            names |= {
                e["name"] for e in container.get("env", []) if e["name"].startswith("SDSTACK_")
            }
    assert names - fields <= PENDING_SETTINGS, sorted(names - fields - PENDING_SETTINGS)
    Settings(**{k.removeprefix("SDSTACK_").lower(): v for k, v in config.items() if k in fields})


def test_the_training_job_template_never_runs_by_itself(objects: list[Obj]) -> None:
    template = by_kind(objects, "CronJob")["sdstack-trainer-job"]
    assert template["spec"]["suspend"] is True
    job = template["spec"]["jobTemplate"]["spec"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    assert job["backoffLimit"] >= 1 and job["ttlSecondsAfterFinished"] > 0
    config = by_kind(objects, "ConfigMap")["sdstack-config"]["data"]
    assert config["SDSTACK_TRAINER_JOB_TEMPLATE"] == "sdstack-trainer-job"
    # the trainer may read the template and manage Jobs, nothing more
    role = by_kind(objects, "Role")["sdstack-trainer"]["rules"]
    assert {
        "apiGroups": ["batch"],
        "resources": ["cronjobs"],
        "resourceNames": ["sdstack-trainer-job"],
        "verbs": ["get"],
    } in role
    assert any(r["resources"] == ["jobs"] and "create" in r["verbs"] for r in role)
    assert not any("*" in r["verbs"] or "*" in r["resources"] for r in role)
    bindings = by_kind(objects, "RoleBinding")["sdstack-trainer"]
    assert bindings["subjects"] == [
        {"kind": "ServiceAccount", "name": "sdstack-trainer", "namespace": "sdstack"}
    ]
    # only the trainer gets a Kubernetes API token
    for workload in workloads(objects):
        token = workload.pod.get("automountServiceAccountToken")
        assert token is (workload.name == "sdstack-trainer"), workload.name


def test_stores_keep_their_data_on_persistent_volumes(objects: list[Obj]) -> None:
    for name in ("sdstack-minio", "sdstack-postgres"):
        stateful = by_kind(objects, "StatefulSet")[name]["spec"]
        [claim] = stateful["volumeClaimTemplates"]
        assert claim["spec"]["resources"]["requests"]["storage"]
        mounts = {m["name"] for m in stateful["template"]["spec"]["containers"][0]["volumeMounts"]}
        assert claim["metadata"]["name"] in mounts
        assert stateful["serviceName"] in by_kind(objects, "Service")


def test_images_are_the_ones_deploy_docker_builds(objects: list[Obj]) -> None:
    for workload in workloads(objects):
        for container in workload.containers:
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
            match = re.search(r"sdstack/(\w+):", image)
            if match:
                assert (REPO / "deploy" / "docker" / f"{match[1]}.Dockerfile").exists(), image
