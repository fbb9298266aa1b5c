"""The model registry in ClearML's own model registry (``models.*``), for the ClearML backend.

Mapping: one ClearML model per version, in our project, named ``<algorithm>/<version>``, tagged
``scantide-model``, ``alg:<algorithm>`` and ``version:<version>``, ``ready``, framework PyTorch,
``uri`` the weights (uploaded beforehand by ``service.models``), ``comment`` the notes and
metadata ``sha256``, ``size``, ``registered_by``, ``registered_at``. The promoted version carries
the tag ``promoted``: a promote tags the new version first, then untags the others, and a reader
that meets two tagged versions takes the one updated last, so the switch happens at the moment
the new tag lands.

Audit: every entry is a metadata item of the version it made current (``register``: the new
version), keyed ``audit:<unix ms>:<random>`` with a JSON value ``{action, from, to, by, at}``.
Appending is ``models.add_or_update_metadata`` of one new key: concurrent appends lose nothing
and no separate object exists to keep in step. The trail of an algorithm is every such item of
its versions, in time order. ClearML has no transactions: a promote that dies between tagging and
recording its entry leaves the tag without its entry (``models list`` shows it), and two promotes
of one algorithm must not race.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import replace
from typing import Any

from clearml.backend_api.services.v2_23 import models

from service.backends.clearml_store import ClearMLStore, pages
from service.backends.clearml_tasks import seconds
from service.errors import ModelVersionExists, ModelVersionNotFound
from service.models import AuditEntry, ModelVersion, rollback_target

MODEL_TAG = "scantide-model"
PROMOTED_TAG = "promoted"
AUDIT_PREFIX = "audit:"
FIELDS = ["id", "name", "uri", "comment", "tags", "created", "last_update", "metadata"]


class ClearMLModels:
    def __init__(self, store: ClearMLStore) -> None:
        self.store = store

    # -- reads ---------------------------------------------------------------------------------
    def _docs(self, algorithm: str | None = None, *more_tags: str) -> list[dict]:
        """Our model documents (of one algorithm, with ``more_tags``), oldest first, page by page."""
        pid = self.store.project_id()
        if pid is None:
            return []
        tags = ["__$all", MODEL_TAG, *([f"alg:{algorithm}"] if algorithm else []), *more_tags]

        def fetch(page: int, page_size: int) -> list[dict]:
            return self.store.send(models.GetAllRequest(project=[pid], tags=tags, only_fields=FIELDS,
                                                        order_by=["created"], page=page,
                                                        page_size=page_size))["models"]

        return [row for rows in pages(fetch, self.store.page_size) for row in rows]

    def _doc(self, algorithm: str, version: str) -> dict | None:
        found = self._docs(algorithm, f"version:{version}")
        return found[0] if found else None  # two racing registrations: the first one counts

    def get(self, algorithm: str, version: str) -> ModelVersion | None:
        doc = self._doc(algorithm, version)
        return version_from_doc(doc) if doc else None

    def listing(self, algorithm: str | None) -> list[ModelVersion]:
        docs = self._docs(algorithm)
        current: dict[str, dict] = {}
        for doc in docs:
            if PROMOTED_TAG in doc.get("tags", []):
                alg = _tag_value(doc, "alg:")
                current[alg] = _newest(doc, current.get(alg))
        ids = {d["id"] for d in current.values()}
        out = [replace(version_from_doc(d), promoted=d["id"] in ids) for d in docs]
        return sorted(out, key=lambda m: (m.algorithm, m.registered_at))

    def promoted(self, algorithm: str) -> ModelVersion | None:
        doc = _current(self._docs(algorithm, PROMOTED_TAG))
        return version_from_doc(doc) if doc else None

    def history(self, algorithm: str | None) -> list[AuditEntry]:
        """Every version's audit items, by time; ties by the versions' creation order, then key."""
        entries: list[tuple[tuple, AuditEntry]] = []
        for index, doc in enumerate(self._docs(algorithm)):
            alg = _tag_value(doc, "alg:")
            for key, item in metadata_of(doc).items():
                if key.startswith(AUDIT_PREFIX):
                    v = json.loads(item)
                    entry = AuditEntry(algorithm=alg, action=v["action"], from_version=v["from"], to_version=v["to"],
                                       by=v["by"], at=v["at"])
                    entries.append(((entry.at, index, key), entry))
        return [e for _, e in sorted(entries, key=lambda pair: pair[0])]

    # -- writes --------------------------------------------------------------------------------
    def register(self, model: ModelVersion) -> ModelVersion:
        if self._doc(model.algorithm, model.version) is not None:
            raise ModelVersionExists(f"version {model.version!r} of {model.algorithm!r} is already registered in "
                                     "ClearML; versions are immutable: register under a new version")
        entry = AuditEntry(model.algorithm, "register", None, model.version, model.registered_by,
                           model.registered_at)
        meta = {"sha256": model.sha256, "size": str(model.size), "registered_by": model.registered_by,
                "registered_at": repr(model.registered_at)}
        items = [{"key": k, "type": "str", "value": v} for k, v in meta.items()] + [_audit_item(entry)]
        self.store.send(models.CreateRequest(
            uri=model.uri, name=f"{model.algorithm}/{model.version}", comment=model.notes, ready=True,
            framework="PyTorch", project=self.store.project_id(create=True), metadata=items,
            tags=[MODEL_TAG, f"alg:{model.algorithm}", f"version:{model.version}"]))
        return model

    def promote(self, algorithm: str, version: str, by: str, action: str = "promote") -> AuditEntry | None:
        target = self._doc(algorithm, version)
        if target is None:
            known = ", ".join(m.version for m in self.listing(algorithm)) or "none"
            raise ModelVersionNotFound(f"no version {version!r} of {algorithm!r} is registered in ClearML; "
                                       f"registered: {known}")
        tagged = self._docs(algorithm, PROMOTED_TAG)
        current = _current(tagged)
        if current is not None and current["id"] == target["id"]:
            return None
        self._set_tags(target, [*target.get("tags", []), PROMOTED_TAG])
        for doc in tagged:
            if doc["id"] != target["id"]:
                self._set_tags(doc, [t for t in doc.get("tags", []) if t != PROMOTED_TAG])
        entry = AuditEntry(algorithm, action, _tag_value(current, "version:") if current else None, version, by,
                           time.time())
        self.store.send(models.AddOrUpdateMetadataRequest(model=target["id"], metadata=[_audit_item(entry)]))
        return entry

    def rollback(self, algorithm: str, by: str) -> AuditEntry:
        _, previous = rollback_target(algorithm, self.history(algorithm))
        entry = self.promote(algorithm, previous, by, action="rollback")
        assert entry is not None  # the stack's last two entries always differ
        return entry

    def _set_tags(self, doc: dict, tags: list[str]) -> None:
        self.store.send(models.UpdateRequest(model=doc["id"], tags=list(dict.fromkeys(tags)), ready=True))


def _audit_item(entry: AuditEntry) -> dict[str, str]:
    key = f"{AUDIT_PREFIX}{int(entry.at * 1000):013d}:{secrets.token_hex(4)}"
    value = {"action": entry.action, "from": entry.from_version, "to": entry.to_version, "by": entry.by,
             "at": entry.at}
    return {"key": key, "type": "json", "value": json.dumps(value)}


def metadata_of(doc: dict) -> dict[str, str]:
    """A model's metadata as ``{key: value}``: the server answers a mapping of items."""
    raw: Any = doc.get("metadata") or {}
    items = raw.values() if isinstance(raw, dict) else raw
    return {i["key"]: i.get("value") or "" for i in items if isinstance(i, dict) and i.get("key")}


def _tag_value(doc: dict, prefix: str) -> str:
    return next((t[len(prefix):] for t in doc.get("tags", []) if t.startswith(prefix)), "")


def _current(tagged: list[dict]) -> dict | None:
    """The promoted version among those tagged ``promoted``: the one updated last."""
    newest = None
    for doc in tagged:
        newest = _newest(doc, newest)
    return newest


def _newest(doc: dict, other: dict | None) -> dict:
    if other is None:
        return doc
    return max(doc, other, key=lambda d: (seconds(d.get("last_update")) or 0.0, d["id"]))


def version_from_doc(doc: dict) -> ModelVersion:
    meta = metadata_of(doc)
    return ModelVersion(algorithm=_tag_value(doc, "alg:"), version=_tag_value(doc, "version:"), uri=doc.get("uri", ""),
                        sha256=meta.get("sha256", ""), size=int(meta.get("size") or 0), notes=doc.get("comment") or "",
                        registered_at=float(meta.get("registered_at") or seconds(doc.get("created")) or 0.0),
                        registered_by=meta.get("registered_by", ""), promoted=PROMOTED_TAG in doc.get("tags", []))
