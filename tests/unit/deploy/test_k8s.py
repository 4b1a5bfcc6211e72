"""deploy/k8s names only things that exist: each container runs the project's image with a real CLI
command, known LEADSTREAM_* variables (its own and the Secret's), the ConfigMap's leadstream.yaml
loads as real settings under that environment, probes hit paths and ports the process serves,
Services and the HPA point at real workloads, and workers keep state on their own volumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from .checks import (IMAGE_NAMES, ROOT, check_settings_file, cli_command_exists,
                     dockerfile_exposed_ports, env_var_known, http_paths, listen_port)

K8S = ROOT / "deploy" / "k8s"


def documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files, "every manifest is listed in kustomization.yaml"
    docs = []
    for name in kustomization["resources"]:
        docs.extend(d for d in yaml.safe_load_all((K8S / name).read_text()) if d)
    for d in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(d), d
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs
            if d["kind"] in ("Deployment", "StatefulSet", "Job")}


def secret_env(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    secret = by_kind(docs, "Secret")[name]
    return dict(secret.get("stringData") or {})


def test_workloads_are_the_ones_the_issue_asks_for() -> None:
    docs = documents()
    deployments, statefulsets = by_kind(docs, "Deployment"), by_kind(docs, "StatefulSet")
    hpas, services = by_kind(docs, "HorizontalPodAutoscaler"), by_kind(docs, "Service")
    assert {"leadstream-collector", "leadstream-leads", "leadstream-sinks"} <= set(deployments)
    assert set(statefulsets) == {"leadstream-worker"}
    target = hpas["leadstream-collector"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "leadstream-collector")
    assert by_kind(docs, "ConfigMap") and by_kind(docs, "Secret")
    workloads = {**deployments, **statefulsets}
    for name, svc in services.items():
        selector = svc["spec"]["selector"]
        matched = [w for w in workloads.values()
                   if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert matched, f"Service {name} selects no pods"
        ports = {p["name"]: p["containerPort"] for w in matched
                 for c in w["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {name}: no container port {port['targetPort']}"
    for name, w in workloads.items():
        assert w["spec"]["selector"]["matchLabels"].items() <= w["spec"]["template"]["metadata"]["labels"].items()


def test_containers_name_real_commands_settings_and_ports(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    docs = documents()
    config_maps, exposed = by_kind(docs, "ConfigMap"), dockerfile_exposed_ports()
    for workload, spec in pod_specs(docs).items():
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            where = f"{workload}/{c['name']}"
            assert c["image"].split(":")[0] in IMAGE_NAMES, where
            argv = c["args"]
            assert "command" not in c and cli_command_exists(argv), f"{where}: `leadstream {' '.join(argv)}`"
            env = {e["name"]: str(e["value"]) for e in c.get("env", [])}
            for ref in c.get("envFrom", []):
                env.update(secret_env(docs, ref["secretRef"]["name"]))
            for name in env:
                assert env_var_known(name), f"{where}: {name} is no setting"
            # the settings file: LEADSTREAM_CONFIG is a mounted ConfigMap key
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            config = Path(env["LEADSTREAM_CONFIG"])
            volume = volumes[mounts[str(config.parent)]]
            text = config_maps[volume["configMap"]["name"]]["data"][config.name]
            settings = check_settings_file(text, env, monkeypatch, tmp_path)
            assert settings.identity_salt is not None and settings.redis.url_value, where
            # ports and probes
            named = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for port in named.values():
                assert port == listen_port(argv, env) and port in exposed, f"{where}: port {port}"
            for probe in ("readinessProbe", "livenessProbe"):
                if probe in c:
                    get = c[probe]["httpGet"]
                    assert named.get(get["port"], get["port"]) == listen_port(argv, env), f"{where} {probe}"
                    assert get["path"] in http_paths(argv), f"{where} {probe}: no {get['path']}"
            if argv[:1] in (["collector"], ["worker"], ["leads"], ["sinks"]):
                assert "livenessProbe" in c, f"{where} has no probe"
            # state: a worker's data_dir is its own volume
            if argv == ["worker"]:
                claims = {t["metadata"]["name"] for t in docs_statefulset(docs)["spec"]["volumeClaimTemplates"]}
                assert mounts[str(settings.data_dir)] in claims, "the worker's data_dir is its PersistentVolume"


def docs_statefulset(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return by_kind(docs, "StatefulSet")["leadstream-worker"]


def test_the_secret_holds_the_secrets() -> None:
    secret = secret_env(documents(), "leadstream-secrets")
    assert {"LEADSTREAM_IDENTITY_SALT", "LEADSTREAM_REDIS__URL"} <= set(secret)
    config = by_kind(documents(), "ConfigMap")["leadstream-config"]["data"]["leadstream.yaml"]
    data = yaml.safe_load(config)
    assert "identity_salt" not in data and not data["redis"].get("url"), "secrets belong in the Secret"


def test_the_sinks_are_deployed() -> None:
    sinks = by_kind(documents(), "Deployment")["leadstream-sinks"]["spec"]["template"]["spec"]["containers"][0]
    assert sinks["args"] == ["sinks"]
    assert cli_command_exists(["sinks"])
