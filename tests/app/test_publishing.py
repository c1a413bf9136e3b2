"""Publish targets against a real MLflow tracking server on loopback (issue 19).

One server per module (SQLite backend store, artifact root in a temp dir, artifacts through its
proxy). Lethe reaches it through a small TCP relay the tests can cut, so "the registry is down" is a
refused connection from Lethe's side while the server (and its start-up time) stays.
"""

from __future__ import annotations

import hashlib
import http.server
import itertools
import json
import os
import socket
import threading
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, select

from app.core.security import subject_key
from app.db.models import ErasureRequest, Model, RegistrySync, utcnow
from app.services import audit
from app.services.integrations import publishing
from app.services.models import registration
from app.services.requests import erasure
from app.services.models import catalog as model_service
from tests.mlflow_server import MlflowServer
from workers import pipeline

REGISTERED = "toy-prod"
# The tests' own look at the registry (loopback; no environment proxy); 2 shared cores can be slow.
HTTP = httpx.Client(timeout=120, trust_env=False)


@pytest.fixture
def backend() -> str:  # one backend: the server, not the DB, is what these tests exercise
    return "sqlite"


class Relay:
    """127.0.0.1:port -> the MLflow server; ``down()`` closes the listener (connections refused)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._serve()

    def _serve(self) -> None:
        def pump(a: socket.socket, b: socket.socket) -> None:
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        def accept(sock: socket.socket) -> None:
            while True:
                try:
                    client, _ = sock.accept()
                except OSError:
                    return
                upstream = socket.create_connection(("127.0.0.1", self.upstream))
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=pump, args=(a, b), daemon=True).start()

        threading.Thread(target=accept, args=(self.sock,), daemon=True).start()

    def down(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); then the port refuses
        self.sock.close()

    def up(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", self.port))
        self._serve()


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # the pyfunc client in this process too
    os.environ["DO_NOT_TRACK"] = "true"
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"  # the pyfunc client (requests) stays on loopback
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    server.start(wait=False)  # boots while the toy model trains; tests wait() before the first call
    yield server
    server.stop()


@pytest.fixture
def worker(settings):  # noqa: ANN001, ANN201
    import torch

    return pipeline.Worker(settings=settings.model_copy(update={"job_lease_s": 3600, "deploy_timeout_s": 2}),
                           engine=None, device=torch.device("cpu"), owner="test-worker",
                           publish=lambda n, v: None, sleep=lambda s: None)


_DAYS = itertools.count(1)


def _sync(session: Session, settings, **kw) -> dict[str, int]:  # noqa: ANN001
    """Deliver due syncs as housekeeping would, a day later each time (past any backoff)."""
    settings = settings.model_copy(update={"replica_ttl_s": 3600})  # a slow step must not kill the replica
    counts = publishing.deliver_due(lambda: Session(bind=session.get_bind()), settings=settings,
                                    now=utcnow() + timedelta(days=next(_DAYS)), **kw)
    session.expire_all()
    return counts


def _versions(url: str, name: str) -> list[dict]:
    body = HTTP.get(f"{url}/api/2.0/mlflow/model-versions/search", params={"filter": f"name='{name}'"}).json()
    return sorted(body.get("model_versions", []), key=lambda v: int(v["version"]))


def _history_version(url: str, name: str, payload: bytes) -> str:
    """A version the organisation registered before Lethe: its own run's artifacts, no lethe.* tags."""
    api = f"{url}/api/2.0/mlflow"
    HTTP.post(f"{api}/registered-models/create", json={"name": name}).raise_for_status()
    exp = HTTP.post(f"{api}/experiments/create", json={"name": f"history-{name}"}).json()["experiment_id"]
    run = HTTP.post(f"{api}/runs/create", json={"experiment_id": exp}).json()["run"]["info"]
    path = run["artifact_uri"].removeprefix("mlflow-artifacts:/")
    HTTP.put(f"{url}/api/2.0/mlflow-artifacts/artifacts/{path}/model/model.safetensors",
              content=payload).raise_for_status()
    r = HTTP.post(f"{api}/model-versions/create",
                   json={"name": name, "source": f"{run['artifact_uri']}/model", "run_id": run["run_id"]})
    r.raise_for_status()
    return r.json()["model_version"]["version"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_publish_purge_alias_and_outage(session: Session, settings, toy_model, worker, mlflow) -> None:  # noqa: ANN001
    """Publish v1 with its pyfunc; an erasure while the registry is down completes anyway; once the
    registry is back the clean version lands, the alias follows the replicas, and no registry version
    or artifact file carries the erased person (history included)."""
    import mlflow as mlflow_client

    from app.ml.checkpoint import load_checkpoint
    from app.ml.specs import get_spec
    from app.ml.train import predict

    mlflow.wait()
    relay = Relay(mlflow.port)
    history_bytes = b"trained on everybody " * 64
    history = _history_version(mlflow.url, REGISTERED, history_bytes)
    target = {"kind": "mlflow", "tracking_uri": relay.url, "registered_model": REGISTERED, "alias": "champion",
              "required": True}
    model_service.set_policy(session, name="toy", changes={"publish": [target]}, actor="test")
    session.commit()
    assert "token" not in json.dumps(session.get(Model, "toy").config)

    # 1. configured: the serving version is published at once, the alias follows (no live replica lags).
    assert _sync(session, settings) == {"delivered": 1, "retry": 0, "dropped": 0}
    v1 = model_service.get_version(session, "toy", 1)
    mv = _versions(mlflow.url, REGISTERED)
    assert [m["version"] for m in mv] == [history, str(int(history) + 1)]
    tags = {t["key"]: t["value"] for t in mv[1]["tags"]}
    assert tags["lethe.version"] == "1" and tags["lethe.sha256"] == v1.sha256 and tags["lethe.method"] == "train"
    assert json.loads(tags["lethe.free_of"]) == {"count": 0, "request_ids": []}
    assert {"lethe.parent", "lethe.data_manifest", "lethe.verification"} <= set(tags)
    published = [p for p in mlflow.files() if p.name == "weights.safetensors"]
    assert [_sha(p) for p in published] == [v1.sha256]  # byte for byte
    mlflow_client.set_tracking_uri(mlflow.url)
    pyfunc = mlflow_client.pyfunc.load_model(f"models:/{REGISTERED}@champion")
    spec = get_spec("toy")
    inputs = [{"x": [0.1 * i - 0.05 * j for j in range(16)]} for i in range(-3, 4)]
    served, meta, _ = load_checkpoint(v1.artifact_path, spec, expected_sha256=v1.sha256)
    lethe = predict(spec, served, meta, [spec.validate_input(i) for i in inputs], device="cpu")
    assert pyfunc.predict(inputs) == [{"label": y, "probability": p} for y, p in lethe]

    # 2. registry down: Lethe's replicas are clean, but the required registry holds completion back.
    relay.down()
    req, _ = erasure.create_request(session, subject_key=subject_key(settings.subject_key_secret, "toy-02"))
    session.commit()
    pipeline.drain(worker, "toy")
    session.expire_all()
    req = session.get(ErasureRequest, req.id)
    key = f"mlflow:{REGISTERED}@{relay.url}"
    assert (req.status, req.stage) == ("deploying", "awaiting_registry") and req.completed_at is None
    assert req.result["models"]["toy"]["registry"][key] == {
        "status": "owed", "required": True,
        "note": "the registry sync is queued; the registry may still hold versions that carry this person"}
    assert model_service.get_version(session, "toy", 2).free_of == [req.id]  # the job itself is done
    assert _sync(session, settings)["retry"] == 1
    assert session.get(ErasureRequest, req.id).status == "deploying"  # still held, never lost
    row = session.exec(select(RegistrySync).where(RegistrySync.status == "pending")).one()
    assert "unreachable" in row.last_error and row.request_ids == [req.id]
    assert session.get(ErasureRequest, req.id).result["models"]["toy"]["registry"][key]["status"] == "owed"

    # 3. back, but a live replica still serves v1: v2 is published, every tainted version purged and
    #    the alias (on a purged version) removed, not moved to a version some replica does not serve.
    relay.up()
    for name in (model_service.ANY_MODEL, "toy"):  # a live replica (liveness row + the model's row)
        model_service.heartbeat(session, replica_id="r1", model_name=name, version=1, loaded_at=utcnow())
    session.commit()
    assert _sync(session, settings)["retry"] == 1  # the alias still waits for r1
    done = session.get(ErasureRequest, req.id)
    assert done.status == "completed" and done.result["models"]["toy"]["registry"][key]["alias_pending"]
    v2 = model_service.get_version(session, "toy", 2)
    mv = _versions(mlflow.url, REGISTERED)
    assert [{t["key"]: t["value"] for t in m.get("tags", [])}["lethe.version"] for m in mv] == ["2"]
    gone = HTTP.get(f"{mlflow.url}/api/2.0/mlflow/registered-models/alias",
                    params={"name": REGISTERED, "alias": "champion"})
    assert gone.status_code in (400, 404) and "not found" in gone.json()["message"]
    # 4. every replica serves v2: the alias moves there and the sync is delivered.
    model_service.heartbeat(session, replica_id="r1", model_name="toy", version=2, loaded_at=utcnow())
    session.commit()
    assert _sync(session, settings)["delivered"] == 1
    alias = HTTP.get(f"{mlflow.url}/api/2.0/mlflow/registered-models/alias",
                      params={"name": REGISTERED, "alias": "champion"}).json()["model_version"]
    assert alias["version"] == mv[0]["version"]
    files = mlflow.files()
    hashes = {_sha(p) for p in files}
    assert v1.sha256 not in hashes and hashlib.sha256(history_bytes).hexdigest() not in hashes
    assert [_sha(p) for p in files if p.name == "weights.safetensors"] == [v2.sha256]
    entry = session.get(ErasureRequest, req.id).result["models"]["toy"]["registry"][key]
    assert entry["status"] == "published" and entry["registry_version"] == mv[0]["version"]
    assert sorted(entry["registry_versions_purged"]) == sorted([history, str(int(history) + 1)])
    audit.sync(session)
    purged = [e.payload for e in audit.list_events(session, type="registry_version_purged", limit=10)]
    assert sorted(p["registry_version"] for p in purged) == sorted([history, str(int(history) + 1)])
    assert {p["history"] for p in purged} == {True, False}
    assert [e.payload["lethe_version"] for e in audit.list_events(session, type="registry_published", limit=10)] \
        == [1, 2] or sorted(e.payload["lethe_version"] for e in audit.list_events(
            session, type="registry_published", limit=10)) == [1, 2]

    # 5. adopt version 1 of a new model from the registry alias: the same weights, provenance recorded.
    #    (No publish target of its own: the server is LETHE_MLFLOW_TRACKING_URI.)
    reg = registration.open_registration(session, name="toy-adopted", spec="toy", config={},
                                         weights=None, uploads_dir=settings.data_dir / "uploads", actor="test",
                                         weights_uri=f"models:/{REGISTERED}@champion")
    session.commit()
    with_uri = settings.model_copy(update={"mlflow_tracking_uri": mlflow.url})
    fetch = lambda uri, config, dest: publishing.fetch_for_registration(uri, config, dest, settings=with_uri)  # noqa: E731
    status = registration.run_registration(lambda: Session(bind=session.get_bind()), reg.id,
                                           secret=settings.subject_key_secret, artifacts_dir=settings.artifacts_dir,
                                           device="cpu", calibrate=None, fetch_weights=fetch)
    assert status == "completed"
    session.expire_all()
    adopted = model_service.get_version(session, "toy-adopted", 1)
    source = adopted.manifest["source"]
    assert source["registered_model"] == REGISTERED and source["alias"] == "champion"
    assert source["version"] == mv[0]["version"] and source["sha256"] == v2.sha256
    mine, _, _ = load_checkpoint(adopted.artifact_path, spec, expected_sha256=adopted.sha256)
    theirs, _, _ = load_checkpoint(v2.artifact_path, spec, expected_sha256=v2.sha256)
    import torch

    assert all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()))
    relay.down()


def test_adopting_a_missing_alias_fails_clearly(session: Session, settings, mlflow) -> None:  # noqa: ANN001
    mlflow.wait()
    target = {"kind": "mlflow", "tracking_uri": mlflow.url, "registered_model": "nobody-here"}
    reg = registration.open_registration(session, name="toy-missing", spec="toy", config={"publish": [target]},
                                         weights=None, uploads_dir=settings.data_dir / "uploads", actor="test",
                                         weights_uri="models:/nobody-here@champion")
    session.commit()
    fetch = lambda uri, config, dest: publishing.fetch_for_registration(uri, config, dest, settings=settings)  # noqa: E731
    status = registration.run_registration(lambda: Session(bind=session.get_bind()), reg.id,
                                           secret=settings.subject_key_secret, artifacts_dir=settings.artifacts_dir,
                                           device="cpu", calibrate=None, fetch_weights=fetch)
    session.expire_all()
    assert status == "failed"
    assert "has no alias 'champion'" in registration.get_registration(session, reg.id).error
    assert session.get(Model, "toy-missing") is None


@pytest.mark.parametrize("backend", ["postgresql"])  # the row locks of delivery (the other flows run on SQLite)
def test_archive_on_taint_and_kept_history_are_said_plainly(session: Session, settings, toy_model, worker,
                                                            mlflow) -> None:  # noqa: ANN001
    """``on_taint: archive`` strips a tainted version's files and tags it; ``history: keep`` keeps the
    organisation's older versions, and the request's result says they still hold the person."""
    mlflow.wait()
    name = "toy-archive"
    history = _history_version(mlflow.url, name, b"older model " * 32)
    target = {"kind": "mlflow", "tracking_uri": mlflow.url, "registered_model": name, "on_taint": "archive",
              "history": "keep"}
    model_service.set_policy(session, name="toy", changes={"publish": [target]}, actor="test")
    session.commit()
    assert _sync(session, settings)["delivered"] == 1
    req, _ = erasure.create_request(session, subject_key=subject_key(settings.subject_key_secret, "toy-03"))
    session.commit()
    pipeline.drain(worker, "toy")
    session.expire_all()
    assert session.get(ErasureRequest, req.id).status == "completed"  # before any registry sync
    assert _sync(session, settings)["delivered"] == 1
    mv = {m["version"]: {t["key"]: t["value"] for t in m.get("tags", [])} for m in _versions(mlflow.url, name)}
    v1_copy = next(n for n, tags in mv.items() if tags.get("lethe.version") == "1")
    assert json.loads(mv[v1_copy]["lethe.tainted"]) == {"count": 1, "request_ids": [req.id]}
    assert "lethe.tainted" not in mv[history]  # kept as it was
    v1 = model_service.get_version(session, "toy", 1)
    assert v1.sha256 not in {_sha(p) for p in mlflow.files()}  # archived: the version stays, its files do not
    session.expire_all()
    entry = session.get(ErasureRequest, req.id).result["models"]["toy"]["registry"][f"mlflow:{name}@{mlflow.url}"]
    assert entry["status"] == "published" and entry["history_kept"] == [history]
    assert "predate Lethe" in entry["note"] and entry["registry_versions_purged"] == [v1_copy]

    # A publish cut off between its upload and the version's creation leaves a run no version points at:
    # the next sync deletes its files (a later erasure's purge could never find them).
    api = f"{mlflow.url}/api/2.0/mlflow"
    exp = HTTP.get(f"{api}/experiments/get-by-name", params={"experiment_name": f"lethe/{name}"}).json()
    run = HTTP.post(f"{api}/runs/create", json={"experiment_id": exp["experiment"]["experiment_id"]}).json()
    orphan = run["run"]["info"]["artifact_uri"].removeprefix("mlflow-artifacts:/")
    HTTP.put(f"{mlflow.url}/api/2.0/mlflow-artifacts/artifacts/{orphan}/model/weights.safetensors",
             content=b"cut off " * 64).raise_for_status()
    assert hashlib.sha256(b"cut off " * 64).hexdigest() in {_sha(p) for p in mlflow.files()}
    model_service.set_policy(session, name="toy", changes={"publish": [target]}, actor="test")
    session.commit()
    assert _sync(session, settings)["delivered"] == 1
    assert hashlib.sha256(b"cut off " * 64).hexdigest() not in {_sha(p) for p in mlflow.files()}
    audit.sync(session)
    assert [e.payload["files_deleted"] for e in audit.list_events(session, type="registry_orphans_purged")] == [1]


class _Refusing(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        _Refusing.seen.append(self.headers.get("Authorization", ""))
        self.send_response(401)
        self.end_headers()

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_refused_credentials_are_owed_and_never_shown(session: Session, settings, toy_model, client, admin_headers,
                                                      caplog) -> None:  # noqa: ANN001
    """The token goes to the registry as a bearer header and nowhere else; a 401 leaves the sync owed."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    secret = "s3cret-token-for-the-test"
    try:
        bad = client.put("/v1/models/toy/policy", headers=admin_headers, json={"publish": [
            {"kind": "mlflow", "tracking_uri": f"http://user:{secret}@127.0.0.1:1", "registered_model": "x"}]})
        assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")
        assert "must not carry credentials" in bad.json()["detail"] and secret not in bad.text
        ok = client.put("/v1/models/toy/policy", headers=admin_headers, json={"publish": [
            {"kind": "mlflow", "tracking_uri": url, "registered_model": "x", "alias": "champion"}]})
        assert ok.status_code == 200 and ok.json()["publish"][0]["registered_model"] == "x"
        session.add(Model(name="other", spec="toy", config={}))
        session.commit()
        taken = client.put("/v1/models/other/policy", headers=admin_headers, json={"publish": [
            {"kind": "mlflow", "tracking_uri": url, "registered_model": "x"}]})
        assert taken.status_code == 422 and "already model 'toy'" in taken.json()["detail"]
        from pydantic import SecretStr

        counts = _sync(session, settings.model_copy(update={"mlflow_token": SecretStr(secret)}))
        assert counts == {"delivered": 0, "retry": 1, "dropped": 0}
        assert _Refusing.seen and set(_Refusing.seen) == {f"Bearer {secret}"}
        row = session.exec(select(RegistrySync)).one()
        assert row.status == "pending" and "refused the credentials (HTTP 401)" in row.last_error
        status = client.get("/v1/models/toy/publish", headers=admin_headers)
        assert status.status_code == 200 and status.json()["targets"][0]["owed"][0]["attempts"] == 1
        audit.sync(session)
        shown = [status.text, row.last_error, caplog.text,
                 json.dumps([e.payload for e in audit.list_events(session, limit=200)]),
                 json.dumps(session.get(Model, "toy").config)]
        assert all(secret not in text for text in shown)
    finally:
        server.shutdown()


@pytest.mark.parametrize(("target", "problem"), [
    ({"tracking_uri": "http://[", "registered_model": "recs"}, "tracking_uri must be an http(s) URL"),
    ({"tracking_uri": "ftp://host", "registered_model": "recs"}, "tracking_uri must be an http(s) URL"),
    ({"tracking_uri": "https://h.example/?token=x", "registered_model": "recs"}, "must not carry credentials"),
    ({"tracking_uri": "https://h.example", "registered_model": "a'b"}, "registered_model must be"),
    ({"tracking_uri": "https://h.example", "registered_model": "recs", "alias": "latest"}, "alias must be"),
    ({"tracking_uri": "https://h.example", "registered_model": "recs", "on_taint": "hide"}, "on_taint must be"),
    ({"tracking_uri": "https://h.example", "registered_model": "recs", "history": "ignore"}, "history must be"),
    ({"tracking_uri": "https://h.example", "registered_model": "recs", "required": "yes"}, "required must be"),
    ({"tracking_uri": "https://h.example", "registered_model": "recs", "token": "x"}, "unknown field"),
])
def test_publish_targets_are_validated(target: dict, problem: str) -> None:
    from app import publish

    assert publish.validate([{"kind": "mlflow", **target}]) == [p for p in publish.validate(
        [{"kind": "mlflow", **target}]) if problem in p] != []
    assert publish.validate([{"kind": "mlflow", "tracking_uri": "https://h.example", "registered_model": "recs",
                              "alias": "champion", "on_taint": "archive", "history": "keep"}]) == []


def test_cli_register_from_a_registry_uri_queues_an_adoption(app, session: Session, admin_headers,  # noqa: ANN001
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """``lethe models register NAME --spec S --weights models:/REG@ALIAS`` sends the URI (the worker
    fetches it); both kinds of weights at once, or a URI that is not models:/..., is a 422."""
    from fastapi.testclient import TestClient

    import app.cli as cli
    from app.cli import models as cli_models
    from app.api.routes import model_admin
    from app.db.models import ModelRegistration

    queued: list[str] = []
    monkeypatch.setattr(model_admin, "enqueue_registration", queued.append)
    monkeypatch.setattr(cli_models, "client", lambda args: TestClient(app, headers=admin_headers,
                                                                      raise_server_exceptions=False))
    assert cli.main(["models", "register", "toy-from-mlflow", "--spec", "toy", "--no-follow",
                     "--weights", "models:/toy-prod@champion"]) == 0
    reg = session.exec(select(ModelRegistration).where(ModelRegistration.name == "toy-from-mlflow")).one()
    assert reg.weights_path == "models:/toy-prod@champion" and queued == [reg.id]
    client = TestClient(app, headers=admin_headers, raise_server_exceptions=False)
    both = client.post("/v1/models", json={"name": "toy-both", "spec": "toy", "weights_base64": "AAAA",
                                           "weights_uri": "models:/toy-prod@champion"})
    assert both.status_code == 422 and "not both" in both.json()["detail"]
    bad = client.post("/v1/models", json={"name": "toy-bad", "spec": "toy", "weights_uri": "s3://bucket/w"})
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")
