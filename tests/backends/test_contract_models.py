"""The model-registry part of the ``TaskBackend`` contract, run against every backend (the
embedded SQLite store and ClearML's model registry through the real SDK and the stand-in)."""

from __future__ import annotations

import pytest

from service.errors import ModelVersionExists, ModelVersionNotFound, NothingToRollBack
from service.models import ModelVersion
from tests.backends.conftest import ALGO, Store


def version(v: str, algorithm: str = ALGO, by: str = "ana") -> ModelVersion:
    return ModelVersion(algorithm=algorithm, version=v, uri=f"/models/{algorithm}/{v}/weights.pt",
                        sha256=f"{v:0>64}"[-64:], size=100 + len(v), notes=f"notes {v}", registered_at=1000.0 + int(v),
                        registered_by=by)


def trail(store: Store, algorithm: str | None = ALGO) -> list[tuple]:
    return [(e.action, e.from_version, e.to_version, e.by) for e in store.backend.model_history(algorithm)]


def test_register_list_and_read_back_versions(store: Store) -> None:
    b = store.backend
    stored = b.register_model(version("1"))
    b.register_model(version("2"))
    b.register_model(version("1", algorithm="other"))

    assert stored == version("1")
    assert b.model_version(ALGO, "2") == version("2")
    assert b.model_version(ALGO, "3") is None
    assert [(m.algorithm, m.version, m.promoted) for m in b.list_models()] == [
        (ALGO, "1", False), (ALGO, "2", False), ("other", "1", False)]
    assert [m.version for m in b.list_models("other")] == ["1"]
    assert b.promoted_model(ALGO) is None
    assert trail(store) == [("register", None, "1", "ana"), ("register", None, "2", "ana")]


def test_versions_are_immutable(store: Store) -> None:
    b = store.backend
    b.register_model(version("1"))
    changed = ModelVersion(**{**version("1").__dict__, "sha256": "f" * 64, "uri": "/elsewhere.pt"})
    with pytest.raises(ModelVersionExists):
        b.register_model(changed)
    assert b.model_version(ALGO, "1") == version("1")


def test_promote_is_seen_by_another_client_at_once(store: Store) -> None:
    b, other = store.backend, store.client()
    for v in ("1", "2"):
        b.register_model(version(v))

    entry = b.promote_model(ALGO, "1", by="ben")
    assert (entry.action, entry.from_version, entry.to_version, entry.by) == ("promote", None, "1", "ben")
    assert other.promoted_model(ALGO).version == "1"
    b.promote_model(ALGO, "2", by="cy")
    assert other.promoted_model(ALGO) == ModelVersion(**{**version("2").__dict__, "promoted": True})
    assert [(m.version, m.promoted) for m in other.list_models(ALGO)] == [("1", False), ("2", True)]
    assert b.promote_model(ALGO, "2", by="cy") is None  # already promoted: nothing changes, no entry
    assert trail(store)[-2:] == [("promote", None, "1", "ben"), ("promote", "1", "2", "cy")]


def test_promote_unknown_version_names_the_known_ones(store: Store) -> None:
    store.backend.register_model(version("1"))
    with pytest.raises(ModelVersionNotFound) as info:
        store.backend.promote_model(ALGO, "9", by="ana")
    assert "'9'" in info.value.message and "1" in info.value.message
    assert store.backend.promoted_model(ALGO) is None


def test_rollback_walks_back_the_promotions(store: Store) -> None:
    b = store.backend
    with pytest.raises(NothingToRollBack):
        b.rollback_model(ALGO, by="ana")
    for v in ("1", "2", "3"):
        b.register_model(version(v))
        b.promote_model(ALGO, v, by="ana")

    first = b.rollback_model(ALGO, by="dee")
    assert (first.action, first.from_version, first.to_version, first.by) == ("rollback", "3", "2", "dee")
    assert b.promoted_model(ALGO).version == "2"
    b.rollback_model(ALGO, by="dee")
    assert b.promoted_model(ALGO).version == "1"
    with pytest.raises(NothingToRollBack) as info:
        b.rollback_model(ALGO, by="dee")
    assert "first one promoted" in info.value.message
    assert b.promoted_model(ALGO).version == "1"
    # Promoting again after rollbacks starts a new history: rollback returns to where it was.
    b.promote_model(ALGO, "3", by="ana")
    assert b.rollback_model(ALGO, by="dee").to_version == "1"
    actions = [(a, f, t) for a, f, t, _ in trail(store) if a != "register"]
    assert actions == [("promote", None, "1"), ("promote", "1", "2"), ("promote", "2", "3"), ("rollback", "3", "2"),
                       ("rollback", "2", "1"), ("promote", "1", "3"), ("rollback", "3", "1")]


def test_registries_of_algorithms_are_apart(store: Store) -> None:
    b = store.backend
    for alg in (ALGO, "other"):
        b.register_model(version("1", algorithm=alg))
        b.register_model(version("2", algorithm=alg))
        b.promote_model(alg, "1", by="ana")
    b.promote_model("other", "2", by="ana")
    assert b.promoted_model(ALGO).version == "1"
    b.rollback_model("other", by="ana")
    assert (b.promoted_model(ALGO).version, b.promoted_model("other").version) == ("1", "1")
    with pytest.raises(NothingToRollBack):
        b.rollback_model(ALGO, by="ana")
    assert {e.algorithm for e in b.model_history(None)} == {ALGO, "other"}
