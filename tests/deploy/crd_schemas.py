"""JSON schemas for the custom resources Warren's manifests use, written from their CRDs.

kubernetes-validate only knows the built-in kinds. These schemas hold what a cluster
would reject first: the required fields, the types of every field we set, and no
unknown fields where a typo would otherwise pass silently (spec level and triggers).
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
LABEL_SELECTOR = {
    "type": "object",
    "properties": {"matchLabels": STRING_MAP, "matchExpressions": {"type": "array"}},
    "additionalProperties": False,
}


def _resource(api_version: str, kind: str, spec: Schema) -> Schema:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}},
            },
            "spec": spec,
        },
    }


SCALED_OBJECT = _resource("keda.sh/v1alpha1", "ScaledObject", {
    "type": "object",
    "required": ["scaleTargetRef", "triggers"],
    "additionalProperties": False,
    "properties": {
        "scaleTargetRef": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "envSourceContainerName": {"type": "string"},
            },
        },
        "pollingInterval": {"type": "integer", "minimum": 1},
        "cooldownPeriod": {"type": "integer", "minimum": 0},
        "initialCooldownPeriod": {"type": "integer", "minimum": 0},
        "idleReplicaCount": {"type": "integer", "minimum": 0},
        "minReplicaCount": {"type": "integer", "minimum": 0},
        "maxReplicaCount": {"type": "integer", "minimum": 1},
        "advanced": {"type": "object"},
        "fallback": {
            "type": "object",
            "required": ["failureThreshold", "replicas"],
            "properties": {
                "failureThreshold": {"type": "integer", "minimum": 0},
                "replicas": {"type": "integer", "minimum": 0},
            },
        },
        "triggers": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["type", "metadata"],
                "additionalProperties": False,
                "properties": {
                    "type": {"type": "string"},
                    "name": {"type": "string"},
                    "metadata": STRING_MAP,
                    "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                    "useCachedMetrics": {"type": "boolean"},
                    "authenticationRef": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string"},
                            "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]},
                        },
                    },
                },
            },
        },
    },
})

TRIGGER_AUTHENTICATION = _resource("keda.sh/v1alpha1", "TriggerAuthentication", {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "secretTargetRef": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["parameter", "name", "key"],
                "additionalProperties": False,
                "properties": {
                    "parameter": {"type": "string"},
                    "name": {"type": "string"},
                    "key": {"type": "string"},
                },
            },
        },
        "configMapTargetRef": {"type": "array"},
        "env": {"type": "array"},
        "podIdentity": {"type": "object"},
        "hashiCorpVault": {"type": "object"},
        "azureKeyVault": {"type": "object"},
        "awsSecretManager": {"type": "object"},
        "gcpSecretManager": {"type": "object"},
        "boundServiceAccountToken": {"type": "array"},
    },
})

_SCRAPE_ENDPOINT = {
    "type": "object",
    "properties": {
        "port": {"type": "string"},
        "path": {"type": "string", "pattern": "^/"},
        "interval": DURATION,
        "scrapeTimeout": DURATION,
        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
        "params": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
        "honorLabels": {"type": "boolean"},
        "relabelings": {"type": "array"},
        "metricRelabelings": {"type": "array"},
    },
}

POD_MONITOR = _resource("monitoring.coreos.com/v1", "PodMonitor", {
    "type": "object",
    "required": ["selector"],
    "properties": {
        "selector": LABEL_SELECTOR,
        "podMetricsEndpoints": {"type": "array", "items": _SCRAPE_ENDPOINT},
        "namespaceSelector": {"type": "object"},
        "jobLabel": {"type": "string"},
        "podTargetLabels": {"type": "array", "items": {"type": "string"}},
    },
})

SERVICE_MONITOR = _resource("monitoring.coreos.com/v1", "ServiceMonitor", {
    "type": "object",
    "required": ["selector", "endpoints"],
    "properties": {
        "selector": LABEL_SELECTOR,
        "endpoints": {"type": "array", "minItems": 1, "items": _SCRAPE_ENDPOINT},
        "namespaceSelector": {"type": "object"},
        "jobLabel": {"type": "string"},
        "targetLabels": {"type": "array", "items": {"type": "string"}},
    },
})

PROMETHEUS_RULE = _resource("monitoring.coreos.com/v1", "PrometheusRule", {
    "type": "object",
    "required": ["groups"],
    "additionalProperties": False,
    "properties": {
        "groups": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "rules"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": DURATION,
                    "rules": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["expr"],
                            "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                            "additionalProperties": False,
                            "properties": {
                                "alert": {"type": "string"},
                                "record": {"type": "string"},
                                "expr": {"type": "string", "minLength": 1},
                                "for": DURATION,
                                "keep_firing_for": DURATION,
                                "labels": STRING_MAP,
                                "annotations": STRING_MAP,
                            },
                        },
                    },
                },
            },
        },
    },
})

RABBITMQ_CLUSTER = _resource("rabbitmq.com/v1beta1", "RabbitmqCluster", {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "replicas": {"type": "integer", "minimum": 0},
        "image": {"type": "string"},
        "imagePullSecrets": {"type": "array"},
        "service": {"type": "object"},
        "persistence": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"storage": {"type": ["string", "integer"]}, "storageClassName": {"type": "string"}},
        },
        "resources": {"type": "object"},
        "affinity": {"type": "object"},
        "tolerations": {"type": "array"},
        "override": {"type": "object"},
        "tls": {"type": "object"},
        "secretBackend": {"type": "object"},
        "skipPostDeploySteps": {"type": "boolean"},
        "terminationGracePeriodSeconds": {"type": "integer", "minimum": 0},
        "delayStartSeconds": {"type": "integer", "minimum": 0},
        "autoEnableAllFeatureFlags": {"type": "boolean"},
        "rabbitmq": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "additionalPlugins": {
                    "type": "array",
                    "items": {"type": "string", "pattern": "^\\w+$"},
                },
                "additionalConfig": {"type": "string", "maxLength": 100000},
                "advancedConfig": {"type": "string"},
                "envConfig": {"type": "string"},
                "erlangInetConfig": {"type": "string"},
            },
        },
    },
})

SCHEMAS: dict[str, Schema] = {
    "ScaledObject": SCALED_OBJECT,
    "TriggerAuthentication": TRIGGER_AUTHENTICATION,
    "PodMonitor": POD_MONITOR,
    "ServiceMonitor": SERVICE_MONITOR,
    "PrometheusRule": PROMETHEUS_RULE,
    "RabbitmqCluster": RABBITMQ_CLUSTER,
}
