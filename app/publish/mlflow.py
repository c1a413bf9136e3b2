"""An MLflow Model Registry as a publish target, over MLflow's REST API (issue 19).

Calls through the outbound guard (``app.core.outbound``, issue 17) to the tracking server's documented REST endpoints
(``/api/2.0/mlflow/registered-models/*``, ``/model-versions/*``) and its artifact proxy
(``/api/2.0/mlflow-artifacts/artifacts/*``, on by default since MLflow 2.0 ``mlflow server``), so
publishing needs no MLflow client in Lethe; ``mlflow-skinny`` (the ``mlflow`` extra) is only for
whoever *loads* the published pyfunc. Each Lethe version goes to its own artifact folder
``lethe/<registered model>/v<N>-<sha12>/`` and becomes a model version whose ``source`` is that
folder (``mlflow-artifacts:/...``), so purging a version deletes exactly its files.

Credentials: ``LETHE_MLFLOW_TOKEN`` (bearer) or ``LETHE_MLFLOW_USERNAME`` / ``LETHE_MLFLOW_PASSWORD``
(basic; MLflow's own ``MLFLOW_TRACKING_*`` names work too), read from settings when a target is
opened; never in the model's config, never in a message or a log line.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import httpx

from app.core import outbound
from app.publish import RegistryError, RegistryVersion, register, target_key

log = logging.getLogger("lethe.publish.mlflow")
API = "/api/2.0/mlflow"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
SCHEME = "mlflow-artifacts:/"
ON_TAINT = ("delete", "archive")
HISTORY = ("purge", "keep")
REGISTERED_NAME = re.compile(r"^[A-Za-z0-9._/-]{1,256}$")  # a subset MLflow accepts, safe in a search filter
ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
# MLflow caps a model-version tag value at 5000 characters (``MAX_MODEL_VERSION_TAG_VALUE_LENGTH``).
MAX_TAG = 5000
# Registry answers Lethe reads into memory: JSON pages and the weight files it asked for (adoption).
MAX_REGISTRY_RESPONSE_BYTES = 1 << 30


def _validate(t: dict[str, Any]) -> list[str]:
    problems = []
    uri = t.get("tracking_uri")
    try:
        parsed = urlparse(uri) if isinstance(uri, str) and len(uri) <= 2000 else None
        host = parsed.hostname if parsed else None
    except ValueError:  # e.g. "http://[" (a broken IPv6 literal)
        parsed = host = None
    if parsed is None or parsed.scheme not in ("http", "https") or not host:
        problems.append("tracking_uri must be an http(s) URL of an MLflow tracking server")
    elif parsed.username or parsed.password or "token" in parsed.query.lower():
        problems.append("tracking_uri must not carry credentials (set LETHE_MLFLOW_TOKEN or "
                        "LETHE_MLFLOW_USERNAME/PASSWORD instead)")
    if not isinstance(t.get("registered_model"), str) or not REGISTERED_NAME.match(t["registered_model"]):
        problems.append("registered_model must be 1-256 letters, digits, '.', '_', '-' or '/'")
    alias = t.get("alias")
    if alias is not None and (not isinstance(alias, str) or not ALIAS.match(alias) or alias.lower() == "latest"
                              or re.fullmatch(r"v\d+", alias.lower())):
        problems.append("alias must be 1-255 letters, digits, '_' or '-', and not 'latest' or 'v<number>' "
                        "(reserved by MLflow)")
    if t.get("on_taint", "delete") not in ON_TAINT:
        problems.append(f"on_taint must be one of {list(ON_TAINT)}")
    if t.get("history", "purge") not in HISTORY:
        problems.append(f"history must be one of {list(HISTORY)}")
    if not isinstance(t.get("required", False), bool):
        problems.append("required must be true or false")
    unknown = set(t) - {"kind", "tracking_uri", "registered_model", "alias", "on_taint", "history", "required"}
    if unknown:
        problems.append(f"unknown field(s) {sorted(unknown)}")
    return problems


def auth_of(settings: Any) -> httpx.Auth | dict[str, str] | None:
    token = getattr(settings, "mlflow_token", None)
    if token is not None and token.get_secret_value():
        return {"Authorization": f"Bearer {token.get_secret_value()}"}
    user, password = getattr(settings, "mlflow_username", None), getattr(settings, "mlflow_password", None)
    if user:
        return httpx.BasicAuth(user, password.get_secret_value() if password is not None else "")
    return None


class MlflowClient:
    """The few REST calls Lethe makes; every failure is a ``RegistryError`` without credentials in it."""

    def __init__(self, tracking_uri: str, settings: Any, *, timeout_s: float | None = None) -> None:
        self.base = tracking_uri.rstrip("/")
        auth = auth_of(settings)
        self.auth = auth if isinstance(auth, httpx.Auth) else None
        self.headers = auth if isinstance(auth, dict) else {}
        self.timeout_s = timeout_s or getattr(settings, "registry_timeout_s", 30.0)
        # Through the outbound guard like every other outbound call (issue 17): the registry's host must
        # be public, allowlisted (LETHE_CALLBACK_ALLOW) or LETHE_MLFLOW_TRACKING_URI's; no redirects (a
        # credential must not follow one to another host), no proxies from the environment.
        self.http = outbound.Outbound.from_settings(settings).admitting(settings.mlflow_tracking_uri)

    def close(self) -> None:
        pass  # the guard opens one pinned connection per call

    def _send(self, method: str, path: str, **kw: Any) -> outbound.Response:
        return self.http.request(method, f"{self.base}{path}", headers={**self.headers, **kw.pop("headers", {})},
                                 auth=self.auth, read_timeout_s=self.timeout_s,
                                 max_response_bytes=MAX_REGISTRY_RESPONSE_BYTES, **kw)

    def call(self, method: str, path: str, *, ok_missing: bool = False, **kw: Any) -> dict[str, Any] | None:
        try:
            resp = self._send(method, path, **kw)
        except outbound.Refused as exc:
            raise RegistryError(f"MLflow registry at {self.base} refused by the outbound guard ({exc.detail})",
                                code="registry_refused") from None
        except (httpx.HTTPError, outbound.OutboundError) as exc:
            raise RegistryError(f"MLflow registry at {self.base} unreachable ({type(exc).__name__})",
                                code="registry_unreachable") from None
        if resp.status_code in (401, 403):
            raise RegistryError(f"MLflow registry at {self.base} refused the credentials (HTTP {resp.status_code})",
                                code="registry_unauthorized")
        if resp.status_code == 404 and ok_missing:
            return None
        if resp.status_code >= 400:
            try:
                err = resp.json()
                detail = f"{err.get('error_code', '')}: {str(err.get('message', ''))[:300]}"
            except ValueError:
                detail = f"HTTP {resp.status_code}"
            # A missing alias is INVALID_PARAMETER_VALUE "... alias X not found." (HTTP 400) in MLflow 3.
            if ok_missing and ("RESOURCE_DOES_NOT_EXIST" in detail or detail.rstrip(".").endswith("not found")):
                return None
            raise RegistryError(f"MLflow registry at {self.base}: {method} {path.split('?')[0]} failed ({detail})",
                                code="registry_refused", retry=resp.status_code >= 500 or resp.status_code == 429)
        if not resp.content:
            return {}
        try:
            return resp.json()
        except ValueError:
            return {"_raw": resp.content}

    # ------------------------------------------------------------ registry

    def ensure_registered_model(self, name: str) -> None:
        if self.call("GET", f"{API}/registered-models/get", params={"name": name}, ok_missing=True) is None:
            try:
                self.call("POST", f"{API}/registered-models/create", json={"name": name})
            except RegistryError as exc:
                if "RESOURCE_ALREADY_EXISTS" not in str(exc):
                    raise

    def versions(self, name: str) -> list[RegistryVersion]:
        out, token = [], None
        while True:
            params = {"filter": f"name='{name}'", "max_results": 1000, **({"page_token": token} if token else {})}
            body = self.call("GET", f"{API}/model-versions/search", params=params) or {}
            for mv in body.get("model_versions", []):
                out.append(RegistryVersion(number=str(mv["version"]), source=mv.get("source"),
                                           tags={t["key"]: t.get("value", "") for t in mv.get("tags", [])},
                                           run_id=mv.get("run_id") or None))
            token = body.get("next_page_token")
            if not token:
                return sorted(out, key=lambda v: int(v.number))

    def get_version(self, name: str, number: str) -> RegistryVersion | None:
        body = self.call("GET", f"{API}/model-versions/get", params={"name": name, "version": number}, ok_missing=True)
        if body is None:
            return None
        mv = body["model_version"]
        return RegistryVersion(number=str(mv["version"]), source=mv.get("source"),
                               tags={t["key"]: t.get("value", "") for t in mv.get("tags", [])})

    def alias_version(self, name: str, alias: str) -> str | None:
        body = self.call("GET", f"{API}/registered-models/alias", params={"name": name, "alias": alias},
                         ok_missing=True)
        return None if body is None else str(body["model_version"]["version"])

    def download_uri(self, name: str, number: str) -> str:
        body = self.call("GET", f"{API}/model-versions/get-download-uri", params={"name": name, "version": number})
        return body["artifact_uri"]

    # ------------------------------------------------------------ artifacts (the server's proxy)

    def upload(self, path: str, data: bytes) -> None:
        self.call("PUT", f"{ARTIFACTS}/{quote(path)}", content=data)

    def download(self, path: str) -> bytes:
        try:
            resp = self._send("GET", f"{ARTIFACTS}/{quote(path)}")
        except outbound.Refused as exc:
            raise RegistryError(f"MLflow registry at {self.base} refused by the outbound guard ({exc.detail})",
                                code="registry_refused") from None
        except (httpx.HTTPError, outbound.OutboundError) as exc:
            raise RegistryError(f"MLflow registry at {self.base} unreachable ({type(exc).__name__})",
                                code="registry_unreachable") from None
        if resp.status_code >= 400:
            raise RegistryError(f"MLflow artifact {path} could not be downloaded (HTTP {resp.status_code})",
                                code="registry_artifact_missing", retry=resp.status_code >= 500)
        return resp.content

    def list_files(self, path: str) -> list[str]:
        """Every file under ``path`` (recursively), relative to the artifact root."""
        body = self.call("GET", ARTIFACTS, params={"path": path}, ok_missing=True) or {}
        files = []
        for f in body.get("files", []):
            full = f"{path.rstrip('/')}/{f['path'].split('/')[-1]}"
            files += self.list_files(full) if f.get("is_dir") else [full]
        return files

    def delete_artifacts(self, path: str) -> list[str]:
        files = self.list_files(path)
        if files or path:
            self.call("DELETE", f"{ARTIFACTS}/{quote(path)}", ok_missing=True)
        left = self.list_files(path)
        if left:
            raise RegistryError(f"MLflow registry at {self.base} kept {len(left)} artifact file(s) under {path}",
                                code="registry_artifacts_left")
        return files


def proxied_path(source: str | None) -> str | None:
    """The artifact-proxy path of a ``mlflow-artifacts:`` URI (with or without a host), else None."""
    if not source or not source.startswith("mlflow-artifacts:"):
        return None
    parsed = urlparse(source)
    return parsed.path.lstrip("/")


def free_of_tag(request_ids: list[str]) -> str:
    """``lethe.free_of``: the count and the erasure request IDs (never subject IDs); past MLflow's tag
    limit, the count and a digest of the sorted IDs (Lethe's DB has the list)."""
    import hashlib

    ids = sorted(request_ids)
    full = json.dumps({"count": len(ids), "request_ids": ids}, separators=(",", ":"))
    if len(full) <= MAX_TAG:
        return full
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    return json.dumps({"count": len(ids), "request_ids_sha256": digest}, separators=(",", ":"))


class MlflowTarget:
    """One registered model on one tracking server."""

    def __init__(self, config: dict[str, Any], settings: Any) -> None:
        self.config = config
        self.key = target_key(config)
        self.name = config["registered_model"]
        self.alias = config.get("alias")
        self.client = MlflowClient(config["tracking_uri"], settings)

    def close(self) -> None:
        self.client.close()

    def versions(self) -> list[RegistryVersion]:
        self.client.ensure_registered_model(self.name)
        return self.client.versions(self.name)

    def publish(self, *, files: dict[str, Path | bytes], tags: dict[str, str], folder: str) -> RegistryVersion:
        """One run in experiment ``lethe/<registered model>`` holds the files under ``model/`` (MLflow
        accepts a version's source only inside a run's artifacts); the version points there."""
        experiment = self._experiment()
        run = self.client.call("POST", f"{API}/runs/create", json={
            "experiment_id": experiment, "run_name": f"lethe-{folder}",
            "tags": [{"key": k, "value": v[:MAX_TAG]} for k, v in tags.items()]})["run"]["info"]
        base = proxied_path(run["artifact_uri"])
        if base is None:
            raise RegistryError(f"MLflow registry at {self.client.base} does not proxy artifacts (run artifact URI "
                                f"scheme {urlparse(run['artifact_uri']).scheme!r}); start it with --serve-artifacts",
                                retry=False, code="registry_artifacts_unreachable")
        for rel, data in files.items():
            self.client.upload(f"{base}/model/{rel}", data if isinstance(data, bytes) else Path(data).read_bytes())
        body = self.client.call("POST", f"{API}/model-versions/create", json={
            "name": self.name, "source": f"{run['artifact_uri']}/model", "run_id": run["run_id"],
            "tags": [{"key": k, "value": v[:MAX_TAG]} for k, v in tags.items()],
            "description": f"Lethe version {tags.get('lethe.version')} (sha256 {tags.get('lethe.sha256')})"})
        self.client.call("POST", f"{API}/runs/update", json={"run_id": run["run_id"], "status": "FINISHED"})
        mv = body["model_version"]
        return RegistryVersion(number=str(mv["version"]), source=mv.get("source"), tags=dict(tags),
                               run_id=run["run_id"])

    def sweep(self) -> list[str]:
        """Delete the files of Lethe's runs that no model version points at (a publish cut off between
        upload and version creation): such a copy would escape every later purge. Returns the files."""
        body = self.client.call("GET", f"{API}/experiments/get-by-name",
                                params={"experiment_name": f"lethe/{self.name}"}, ok_missing=True)
        if body is None:
            return []
        referenced = {v.run_id for v in self.client.versions(self.name) if v.run_id}
        deleted, token = [], None
        while True:
            page = self.client.call("POST", f"{API}/runs/search", json={
                "experiment_ids": [body["experiment"]["experiment_id"]], "max_results": 1000,
                "run_view_type": "ACTIVE_ONLY", **({"page_token": token} if token else {})}) or {}
            for run in page.get("runs", []):
                info = run["info"]
                if info["run_id"] in referenced or (path := proxied_path(info.get("artifact_uri"))) is None:
                    continue
                deleted += self.client.delete_artifacts(path)
                self.client.call("POST", f"{API}/runs/delete", json={"run_id": info["run_id"]}, ok_missing=True)
            token = page.get("next_page_token")
            if not token:
                return deleted

    def _experiment(self) -> str:
        name = f"lethe/{self.name}"
        body = self.client.call("GET", f"{API}/experiments/get-by-name", params={"experiment_name": name},
                                ok_missing=True)
        if body is not None and body["experiment"].get("lifecycle_stage") != "deleted":
            return body["experiment"]["experiment_id"]
        return self.client.call("POST", f"{API}/experiments/create", json={"name": name})["experiment_id"]

    def alias_version(self) -> str | None:
        return self.client.alias_version(self.name, self.alias) if self.alias else None

    def move_alias(self, number: str | None) -> None:
        if not self.alias:
            return
        if number is None:
            self.client.call("DELETE", f"{API}/registered-models/alias", json={"name": self.name, "alias": self.alias},
                             ok_missing=True)
        else:
            self.client.call("POST", f"{API}/registered-models/alias",
                             json={"name": self.name, "alias": self.alias, "version": number})

    def purge(self, version: RegistryVersion, *, archive_tags: dict[str, str] | None) -> list[str]:
        """Delete the version's artifact files (checked gone), then the version itself — or, with
        ``archive_tags``, keep the stripped version with those tags. Returns the deleted files."""
        path = proxied_path(version.source)
        if path is None:
            try:
                path = proxied_path(self.client.download_uri(self.name, version.number))
            except RegistryError as exc:
                if exc.retry:
                    raise
        if path is None:
            raise RegistryError(
                f"registry version {version.number} of {self.name} keeps its artifacts outside the server's artifact "
                f"proxy ({urlparse(version.source or '').scheme or 'unknown'} URI): Lethe cannot delete them",
                code="registry_artifacts_unreachable", retry=False)
        deleted = self.client.delete_artifacts(path)
        if version.run_id:  # the run only held these files: gone with them (MLflow keeps a soft-deleted row)
            self.client.call("POST", f"{API}/runs/delete", json={"run_id": version.run_id}, ok_missing=True)
        if archive_tags is None:
            self.client.call("DELETE", f"{API}/model-versions/delete",
                             json={"name": self.name, "version": version.number}, ok_missing=True)
        else:
            for k, v in archive_tags.items():
                self.client.call("POST", f"{API}/model-versions/set-tag",
                                 json={"name": self.name, "version": version.number, "key": k, "value": v[:MAX_TAG]})
        return deleted


@register("mlflow", validate=_validate)
def open_mlflow(config: dict[str, Any], settings: Any) -> MlflowTarget:
    return MlflowTarget(config, settings)


def fetch_weights(uri: str, *, tracking_uri: str, settings: Any, dest: Path) -> dict[str, Any]:
    """Adoption (``--weights models:/NAME@ALIAS`` or ``models:/NAME/VERSION``): download the version's
    safetensors file to ``dest``; returns its registry provenance for the manifest."""
    import hashlib

    ref = uri[len("models:/"):] if uri.startswith("models:/") else ""
    name, alias, number = ref, None, None
    if "@" in ref:
        name, alias = ref.split("@", 1)
    elif "/" in ref:
        name, number = ref.rsplit("/", 1)
    if not name or (alias is None and not (number or "").isdigit()):
        raise RegistryError(f"{uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION", retry=False,
                            code="invalid_registry_uri")
    client = MlflowClient(tracking_uri, settings)
    try:
        if alias is not None:
            number = client.alias_version(name, alias)
            if number is None:
                raise RegistryError(f"registered model {name!r} has no alias {alias!r} (or does not exist)",
                                    retry=False, code="registry_alias_missing")
        version = client.get_version(name, number)
        if version is None:
            raise RegistryError(f"registered model {name!r} has no version {number}", retry=False,
                                code="registry_version_missing")
        path = proxied_path(version.source) or proxied_path(client.download_uri(name, number))
        if path is None:
            raise RegistryError(f"version {number} of {name!r} keeps its artifacts outside the server's artifact "
                                "proxy; download them and register the file", retry=False,
                                code="registry_artifacts_unreachable")
        weights = [f for f in client.list_files(path) if f.endswith(".safetensors")]
        if len(weights) != 1:
            raise RegistryError(f"version {number} of {name!r} has {len(weights)} .safetensors files; exactly one "
                                "is needed", retry=False, code="registry_weights_ambiguous")
        data = client.download(weights[0])
    finally:
        client.close()
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return {"kind": "mlflow", "tracking_uri": tracking_uri, "registered_model": name, "alias": alias,
            "version": number, "file": weights[0].rsplit("/", 1)[-1], "sha256": hashlib.sha256(data).hexdigest()}
