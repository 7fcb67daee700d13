"""The Function CustomResourceDefinition, generated from the model in `kfn.core.functions`.

The committed copy under charts/kfn/crds/ is this module's output; a test fails when they drift.
Regenerate with `make crd` (or `kfn crd > charts/kfn/crds/functions.kfn.dev.yaml`).

Helm installs `crds/` once and never upgrades it, so a cluster may run a newer operator over an
older CRD. The CRD carries its `REVISION` and the digest of its definition as annotations, and the
operator compares the installed CRD's with its own at start (`installed_problem`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from kfn.core import naming
from kfn.core.asyncspec import DESTINATION_URL_PATTERN, FUNCTION_REF_PATTERN
from kfn.core.codespec import DEFAULT_RUNTIME, NODE_HANDLER_PATTERN, PYTHON_HANDLER_PATTERN, RUNTIMES
from kfn.core.fields import MAX_NAME_LENGTH
from kfn.core.functions import FunctionSpec
from kfn.core.routes import ROUTE_KEY_PATTERN
from kfn.core.scalespec import ScaleSpec
from kfn.core.triggerspec import NATS_SUBJECT_PATTERN, TRIGGER_KINDS

CRD_PATH = Path(__file__).resolve().parents[2] / "charts" / "kfn" / "crds" / f"{naming.CRD_NAME}.yaml"

# The CRD's revision: raised by one whenever what `crd_manifest` makes changes, with
# REVISION_DIGEST set to the new `definition_digest()` (a test fails until both are done).
REVISION = 1
REVISION_DIGEST = "4169234f1e200a47"
ANNOTATION_REVISION = f"{naming.GROUP}/crd-revision"
ANNOTATION_DIGEST = f"{naming.GROUP}/crd-digest"

# What the schema language can say beyond types and bounds, checked by the API server at once
# (`kubectl apply` rejects it) instead of by the operator after the fact.
# Fields left out take the model's defaults, so the rules apply those defaults too.
_MIN = ScaleSpec.model_fields["minReplicas"].default
_MAX = ScaleSpec.model_fields["maxReplicas"].default
_CONCURRENCY = FunctionSpec.model_fields["concurrency"].default
_RUNTIME = f"(has(self.runtime) ? self.runtime : '{DEFAULT_RUNTIME}')"
# A number of seconds, or a Go-style duration (kfn.core.units.parse_duration reads the same).
_DURATION = r"^\s*([0-9]+(\.[0-9]+)?|([0-9]+(\.[0-9]+)?(ms|s|m|h))+)\s*$"


def _duration_rule(field: str) -> dict[str, str]:
    return {"rule": f"type(self) != string || self.matches(r'{_DURATION}')",
            "message": f"{field} must be a number of seconds or a duration like 30s, 1m30s or 500ms"}


_DESTINATION_RULE = {"rule": "has(self.function) != has(self.url)",
                     "message": "must set exactly one of function or url"}
# The schedule's grammar is the model's (kfn.core.schedules); the schema only sees its shape.
_SCHEDULE_SHAPE = (r"^\s*(rate\(.*\)|cron\(.*\)|@[a-z]+|\S+\s+\S+\s+\S+\s+\S+\s+\S+)\s*$")

_CEL_RULES: dict[tuple[str, ...], list[dict[str, str]]] = {
    (): [
        {"rule": "has(self.source) || has(self.image)",
         "message": "must set source.files, source.configMap or image"},
        {"rule": "!(has(self.source) && has(self.image))",
         "message": "an image carries its own code: set source or image, not both"},
        {"rule": "has(self.image) || !has(self.imageConfig)",
         "message": "imageConfig is only for an image", "fieldPath": ".imageConfig"},
        {"rule": "has(self.image) || has(self.handler)",
         "message": "handler is required (e.g. main.handler)", "fieldPath": ".handler"},
        {"rule": f"has(self.image) || !has(self.handler) || ({_RUNTIME}.startsWith('nodejs') ? "
                 f"self.handler.matches(r'{NODE_HANDLER_PATTERN}') : "
                 f"self.handler.matches(r'{PYTHON_HANDLER_PATTERN}'))",
         "message": "handler must be module.function (Python, e.g. main.handler) or file.export "
                    "(Node.js, e.g. index.handler)", "fieldPath": ".handler"},
        {"rule": "!has(self.scale) || !has(self.scale.targetConcurrency) || "
                 f"self.scale.targetConcurrency <= double(has(self.concurrency) ? self.concurrency : {_CONCURRENCY})",
         "message": "scale.targetConcurrency must be <= concurrency", "fieldPath": ".scale.targetConcurrency"},
    ],
    ("timeout",): [_duration_rule("spec.timeout")],
    ("scale", "idleTimeout"): [_duration_rule("spec.scale.idleTimeout")],
    ("scale", "stableWindow"): [_duration_rule("spec.scale.stableWindow")],
    ("scale",): [
        {"rule": f"(has(self.maxReplicas) ? self.maxReplicas : {_MAX}) >= "
                 f"(has(self.minReplicas) ? self.minReplicas : {_MIN})",
         "message": "maxReplicas must be >= minReplicas", "fieldPath": ".maxReplicas"},
    ],
    ("source",): [
        {"rule": "has(self.files) != has(self.configMap)", "message": "must set exactly one of files or configMap"},
    ],
    ("async", "onSuccess"): [_DESTINATION_RULE],
    ("async", "onFailure"): [_DESTINATION_RULE],
    ("triggers", "[]"): [
        {"rule": " + ".join(f"(has(self.{kind}) ? 1 : 0)" for kind in TRIGGER_KINDS) + " == 1",
         "message": f"each trigger must set exactly one of {', '.join(TRIGGER_KINDS)}"},
    ],
}
# File-name rules stay with the model (and so with the operator's InvalidSpec condition): a CEL
# rule over every key of an unbounded map exceeds the API server's cost budget.
_PATTERNS: dict[tuple[str, ...], str] = {
    ("async", "onSuccess", "function"): FUNCTION_REF_PATTERN,
    ("async", "onFailure", "function"): FUNCTION_REF_PATTERN,
    ("async", "onSuccess", "url"): DESTINATION_URL_PATTERN,
    ("async", "onFailure", "url"): DESTINATION_URL_PATTERN,
    ("triggers", "[]", "schedule"): _SCHEDULE_SHAPE,
    ("triggers", "[]", "nats", "subject"): NATS_SUBJECT_PATTERN,
    # A route's grammar; two routes of one shape ({id} and {name}) are the model's to refuse.
    ("http", "routes", "[]"): ROUTE_KEY_PATTERN,
}
# Lists whose items are unique: the API server refuses a repeated item.
_SETS: frozenset[tuple[str, ...]] = frozenset({("http", "routes")})
# Defaults the API server fills in, so `kubectl get -o yaml` shows what the function runs.
_DEFAULTS: dict[tuple[str, ...], object] = {("runtime",): DEFAULT_RUNTIME}

_STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    # kopf keeps its own progress under status as well; keep what we do not describe.
    "x-kubernetes-preserve-unknown-fields": True,
    "properties": {
        "observedGeneration": {"type": "integer", "format": "int64"},
        "replicas": {"type": "integer", "format": "int32", "description": "Instances that exist."},
        "readyReplicas": {"type": "integer", "format": "int32", "description": "Instances ready to serve."},
        "desiredReplicas": {"type": "integer", "format": "int32", "description": "The autoscaler's last decision."},
        "lastScaleReason": {"type": "string"},
        "lastScaleTime": {"type": "string", "format": "date-time"},
        "url": {"type": "string", "description": "The function's path on the gateway."},
        "codeHash": {"type": "string"},
        "conditions": {
            "type": "array",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
            "items": {
                "type": "object",
                "required": ["type", "status"],
                "properties": {
                    "type": {"type": "string"},
                    "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                    "reason": {"type": "string"},
                    "message": {"type": "string"},
                    "lastTransitionTime": {"type": "string", "format": "date-time"},
                    "observedGeneration": {"type": "integer", "format": "int64"},
                },
            },
        },
    },
}


def spec_schema() -> dict[str, Any]:
    """The structural openAPIV3Schema of `spec`, derived from FunctionSpec."""
    raw = FunctionSpec.model_json_schema(mode="validation")
    defs = raw.pop("$defs", {})
    schema = _structural(raw, defs, ())
    return schema


def _structural(node: dict[str, Any], defs: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs, path)
    if node.get("x-kubernetes-int-or-string"):
        out: dict[str, Any] = {"x-kubernetes-int-or-string": True}
        if "description" in node:
            out["description"] = node["description"]
        if path in _CEL_RULES:
            out["x-kubernetes-validations"] = _CEL_RULES[path]
        return out
    if "anyOf" in node:
        # Optional[X] is anyOf [X, null]: an absent field is how Kubernetes says "not set".
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express {path} structurally: {node['anyOf']}")
        extra = {k: v for k, v in node.items() if k in ("description",)}
        return _structural({**options[0], **extra}, defs, path)

    out = {}
    if "description" in node:
        out["description"] = node["description"]
    if "const" in node or "enum" in node:
        out["type"] = "string"
        out["enum"] = list(node.get("enum") or [node["const"]])
    else:
        out["type"] = node["type"]
    kind = out["type"]
    if kind == "object":
        if "properties" in node:
            out["properties"] = {
                key: _structural(value, defs, (*path, key)) for key, value in node["properties"].items()
            }
            required = [k for k in node.get("required", []) if k in out["properties"]]
            if required:
                out["required"] = required
        elif isinstance(node.get("additionalProperties"), dict):
            out["additionalProperties"] = _structural(node["additionalProperties"], defs, (*path, "*"))
            if "minProperties" in node:
                out["minProperties"] = node["minProperties"]
    elif kind == "array":
        out["items"] = _structural(node["items"], defs, (*path, "[]"))
        if "minItems" in node:
            out["minItems"] = node["minItems"]
        if "maxItems" in node:
            out["maxItems"] = node["maxItems"]
        if path in _SETS:
            out["x-kubernetes-list-type"] = "set"
    elif kind in ("integer", "number"):
        if "minimum" in node:
            out["minimum"] = node["minimum"]
        if "exclusiveMinimum" in node:
            # JSON Schema 2020-12 gives a number; OpenAPI v3.0 wants minimum + a boolean.
            out["minimum"] = node["exclusiveMinimum"]
            out["exclusiveMinimum"] = True
        if "maximum" in node:
            out["maximum"] = node["maximum"]
    elif kind == "string":
        if "minLength" in node:
            out["minLength"] = node["minLength"]
    if path in _PATTERNS:
        out["pattern"] = _PATTERNS[path]
    if path in _DEFAULTS:
        out["default"] = _DEFAULTS[path]
    if path in _CEL_RULES:
        out["x-kubernetes-validations"] = _CEL_RULES[path]
    return out


def definition_digest() -> str:
    """16 hex digits of SHA-256 over the CRD as generated, its revision annotations left out."""
    blob = json.dumps(_definition(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def crd_manifest() -> dict[str, Any]:
    """The CRD, annotated with its revision and the digest of its definition."""
    manifest = _definition()
    manifest["metadata"]["annotations"] = {ANNOTATION_REVISION: str(REVISION), ANNOTATION_DIGEST: definition_digest()}
    return manifest


def installed_problem(installed: dict[str, Any]) -> str | None:
    """What is wrong with the installed CRD `installed` (a manifest as the API server returns it)
    for this build of kfn, or None when it is this build's: older (a lower revision, or none: it
    predates revisions), newer (this operator is older than the chart's CRD), or the same revision
    with another definition."""
    annotations = (installed.get("metadata") or {}).get("annotations") or {}
    text = annotations.get(ANNOTATION_REVISION)
    try:
        revision = int(text) if text is not None else 0
    except (TypeError, ValueError):
        revision = 0
    upgrade = ("apply this version's CRD: kubectl apply --server-side -f charts/kfn/crds/ "
               "(Helm never upgrades crds/)")
    if revision < REVISION:
        found = f"revision {revision}" if text is not None else "no revision (it predates them)"
        return (f"the installed CRD {naming.CRD_NAME} is older than this operator's (it has {found}, this "
                f"operator was built with revision {REVISION}): fields added since are dropped by the API "
                f"server; {upgrade}")
    if revision > REVISION:
        return (f"the installed CRD {naming.CRD_NAME} is newer than this operator's (revision {revision}, "
                f"this operator was built with revision {REVISION}): upgrade the operator")
    if annotations.get(ANNOTATION_DIGEST) != definition_digest():
        return (f"the installed CRD {naming.CRD_NAME} has revision {REVISION} but another definition than "
                f"this operator's (it was edited, or generated from other code); {upgrade}")
    return None


def _definition() -> dict[str, Any]:
    schema = {
        "type": "object",
        "required": ["spec"],
        # A Function's name is also its Service's name: a DNS label.
        "x-kubernetes-validations": [{
            "rule": f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
            "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters",
        }],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema(),
            "status": _STATUS_SCHEMA,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": naming.CRD_NAME,
            "labels": {"app.kubernetes.io/name": "kfn", "app.kubernetes.io/part-of": "kfn"},
        },
        "spec": {
            "group": naming.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": naming.KIND,
                "listKind": f"{naming.KIND}List",
                "plural": naming.PLURAL,
                "singular": naming.SINGULAR,
                "shortNames": list(naming.SHORT_NAMES),
                "categories": ["all", "kfn"],
            },
            "versions": [{
                "name": naming.VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Runtime", "type": "string", "jsonPath": ".spec.runtime"},
                    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
                    {"name": "Replicas", "type": "integer", "jsonPath": ".status.readyReplicas"},
                    {"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas"},
                    {"name": "URL", "type": "string", "jsonPath": ".status.url", "priority": 1},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": schema},
            }],
        },
    }


def render_crd_yaml() -> str:
    header = ("# Generated from kfn/core/functions.py by `kfn crd`; do not edit by hand (`make crd` regenerates it).\n"
              f"# Runtimes: {', '.join(RUNTIMES)}\n")
    return header + yaml.safe_dump(crd_manifest(), sort_keys=False, width=120)
