#!/usr/bin/env python3
"""Validates deploy/kubernetes/*.yaml offline: every document against the Kubernetes
schemas (kubernetes-validate, strict: unknown fields are errors), and the settings the
README promises (Parallel pod management, not-ready addresses published, one voluntary
disruption at a time, /ready and /live probes, a volume per pod, one store per node,
--advertise-addr from the pod's DNS name). Before that, a self-test: a manifest with a
wrong type and an unknown field must fail, or a pass means nothing.

    python3 scripts/check_manifests.py [DIR]     # exit 0: valid; 1: not; 2: tool missing
"""
import copy
import glob
import os
import sys

try:
    import kubernetes_validate
    import yaml
except ImportError as e:
    print(f"check_manifests: {e.name} is not installed (pip install kubernetes-validate)",
          file=sys.stderr)
    sys.exit(2)

VERSION = "1.33.0"


def validate(doc):
    """None when `doc` is valid, else why not."""
    try:
        kubernetes_validate.validate(doc, VERSION, strict=True)
        return None
    except (kubernetes_validate.ValidationError,
            kubernetes_validate.InvalidSchemaError,
            kubernetes_validate.SchemaNotFoundError) as e:
        return str(getattr(e, "message", e))


def find(docs, kind, name=None):
    for d in docs:
        if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name):
            return d
    raise AssertionError(f"no {kind} {name or ''}")


def promised(docs):
    """The settings the README promises; an AssertionError names the first missing."""
    headless = find(docs, "Service", "flotilla")["spec"]
    assert headless.get("clusterIP") == "None", "the service named flotilla is not headless"
    assert headless.get("publishNotReadyAddresses") is True, "not-ready addresses hidden"
    sts = find(docs, "StatefulSet")["spec"]
    assert sts.get("podManagementPolicy") == "Parallel", "pods not started in parallel"
    assert sts.get("serviceName") == "flotilla", "the StatefulSet names another service"
    assert sts.get("volumeClaimTemplates"), "no volume per pod"
    pod = sts["template"]["spec"]
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname", "two stores may share a node"
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready", "no readiness probe"
    assert container["livenessProbe"]["httpGet"]["path"] == "/live", "no liveness probe"
    assert container["resources"]["requests"], "no resource requests"
    args = " ".join(container["args"])
    assert "--advertise-addr=$(POD_NAME).flotilla." in args, "not advertised by DNS name"
    assert "--data-dir=/data" in args and any(
        m["mountPath"] == "/data" for m in container["volumeMounts"]), "data dir not the volume"
    pdb = find(docs, "PodDisruptionBudget")["spec"]
    assert pdb.get("maxUnavailable") == 1, "more than one voluntary disruption at a time"


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "deploy", "kubernetes")
    files = sorted(glob.glob(os.path.join(root, "*.yaml")))
    if not files:
        print(f"check_manifests: no manifests in {root}", file=sys.stderr)
        return 1
    docs = []
    for path in files:
        with open(path) as f:
            docs.extend((path, d) for d in yaml.safe_load_all(f) if d)
    # Self-test: the validator must refuse a wrong type and an unknown field.
    sts = copy.deepcopy(find([d for _, d in docs], "StatefulSet"))
    sts["spec"]["replicas"] = "three"
    assert validate(sts), "self-test: a string replica count passed"
    sts = copy.deepcopy(find([d for _, d in docs], "StatefulSet"))
    sts["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    assert validate(sts), "self-test: a misspelt field passed"
    failed = 0
    for path, doc in docs:
        why = validate(doc)
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if why:
            failed += 1
            print(f"{os.path.basename(path)}: {name}: {why}")
        else:
            print(f"{os.path.basename(path)}: {name}: valid (Kubernetes {VERSION}, strict)")
    try:
        promised([d for _, d in docs])
    except (AssertionError, KeyError, IndexError, TypeError) as e:
        print(f"a promised setting is missing: {e!r}")
        failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
