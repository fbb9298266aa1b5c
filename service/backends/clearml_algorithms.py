"""The algorithm registry in ClearML: one template task per algorithm version.

Mapping: a task named ``template/<name>`` in our project, tagged ``scantide-template``,
``alg:<name>`` and ``version:<version>``, status ``created`` forever (it is only cloned). Its
``configuration`` item ``descriptor`` holds the descriptor (JSON), its ``container`` the image of a
container algorithm (an agent in docker mode runs the task in it), its section ``properties`` the
record (queue, time limit, bundle URI and sha256, who registered it and when) and the ``script``
that a stock ``clearml-agent`` runs (``python -m algorithms.entry``). A scan task cloned from it
carries all of it. The newest registered version is the one created last; two registrations of
one version racing leave two templates, and the older one counts.
"""

from __future__ import annotations

import json
from typing import Any

from clearml.backend_api.services.v2_23 import tasks

from service.algorithms import AlgorithmVersion
from service.backends.clearml_store import ClearMLStore
from service.backends.clearml_tasks import (
    PROPERTIES,
    TASK_TYPE,
    TEMPLATE_FIELDS,
    TEMPLATE_PREFIX,
    TEMPLATE_TAG,
    decode_section,
    encode_section,
    template_container,
    template_hyperparams,
    template_script,
)

DESCRIPTOR_ITEM = "descriptor"
RECORD_FIELDS = ("algorithm_version", "bundle_uri", "bundle_sha256", "bundle_size", "registered_at", "registered_by")


def template_doc_fields(v: AlgorithmVersion) -> dict[str, Any]:
    """The fields of ``v``'s template task (``tasks.create``)."""
    hyper = template_hyperparams(v.template())
    hyper[PROPERTIES] = {**hyper[PROPERTIES], **encode_section(PROPERTIES, {
        "algorithm_version": v.version, "bundle_uri": v.uri, "bundle_sha256": v.sha256, "bundle_size": v.size,
        "registered_at": v.registered_at, "registered_by": v.registered_by})}
    fields: dict[str, Any] = {
        "name": TEMPLATE_PREFIX + v.name, "type": TASK_TYPE,
        "tags": [TEMPLATE_TAG, f"alg:{v.name}", f"version:{v.version}"], "hyperparams": hyper,
        "configuration": {DESCRIPTOR_ITEM: {"name": DESCRIPTOR_ITEM, "type": "json",
                                            "value": json.dumps(v.descriptor, sort_keys=True),
                                            "description": "scantide algorithm descriptor"}},
        "script": template_script(v.template())}
    container = template_container(None, image=v.spec.image) if v.spec.image else None
    if container:
        fields["container"] = container
    return fields


def version_from_doc(doc: dict) -> AlgorithmVersion:
    props = decode_section(doc, PROPERTIES)
    item = (doc.get("configuration") or {}).get(DESCRIPTOR_ITEM) or {}
    return AlgorithmVersion(
        name=str(props["algorithm"]), version=str(props["algorithm_version"]), sha256=str(props["bundle_sha256"]),
        size=int(props.get("bundle_size") or 0), uri=str(props["bundle_uri"]), queue=str(props.get("queue", "")),
        descriptor=json.loads(item.get("value") or "{}"), registered_at=float(props.get("registered_at") or 0.0),
        registered_by=str(props.get("registered_by") or ""))


class ClearMLAlgorithms:
    def __init__(self, store: ClearMLStore) -> None:
        self.store = store

    def docs(self, name: str | None = None, version: str | None = None) -> list[dict]:
        """Versioned template tasks (of one algorithm, of one version), oldest first."""
        tags = ["__$all", TEMPLATE_TAG, *([f"alg:{name}"] if name else []), *([f"version:{version}"] if version else [])]
        docs = self.store.find_tasks(tags=tags, only_fields=[*TEMPLATE_FIELDS, "configuration"], order_by=["created"])
        return [d for d in docs if any(t.startswith("version:") for t in d.get("tags") or [])]

    def register(self, v: AlgorithmVersion) -> tuple[AlgorithmVersion, bool]:
        found = self.docs(v.name, v.version)
        if found:
            return version_from_doc(found[0]), False
        self.store.queue_id(v.queue, create=True)
        self.store.send(tasks.CreateRequest(project=self.store.project_id(create=True), **template_doc_fields(v)))
        found = self.docs(v.name, v.version)  # a racing registration may have been first
        return version_from_doc(found[0]), _mine(found[0], v)

    def get(self, name: str, version: str) -> AlgorithmVersion | None:
        found = self.docs(name, version)
        return version_from_doc(found[0]) if found else None

    def latest(self, name: str) -> AlgorithmVersion | None:
        found = self.docs(name)
        return version_from_doc(found[-1]) if found else None

    def listing(self, name: str | None = None) -> list[AlgorithmVersion]:
        seen: dict[tuple[str, str], AlgorithmVersion] = {}
        for doc in self.docs(name):
            v = version_from_doc(doc)
            seen.setdefault((v.name, v.version), v)
        return sorted(seen.values(), key=lambda v: (v.name, v.registered_at))


def _mine(doc: dict, v: AlgorithmVersion) -> bool:
    return decode_section(doc, PROPERTIES).get("registered_at") == v.registered_at
