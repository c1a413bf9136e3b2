"""One typed settings object, read from ``LETHE_*`` environment variables.

Anchor: full-stack-fastapi-template ``core/config.py``; Polar's ``env_prefix``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET = "lethe-dev-secret-change-me"
FIDES_API_PATH = "/api/v1"


def normalise_fides_url(value: str | None) -> str | None:
    """Fides' reply-to is a path under its API base (``/privacy-request/{id}/resume``); with a bare
    ``http://host:port`` every resume got 405. A bare host gets ``/api/v1``; any other path is refused."""
    if value is None or not value.strip():
        return None
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"LETHE_FIDES_URL must be an http(s) URL of Fides' API base, like "
                         f"https://fides.example.org{FIDES_API_PATH}; got {value!r}")
    path = parts.path.rstrip("/")
    if path == "":
        path = FIDES_API_PATH
    elif not path.endswith(FIDES_API_PATH):
        raise ValueError(f"LETHE_FIDES_URL must end in {FIDES_API_PATH} (Fides' API base), got {value!r}")
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_", env_file=None, extra="ignore", populate_by_name=True)

    def initial_models(self) -> list[tuple[str, str]]:
        """(name, spec) pairs of ``models``: production registers nothing unless told to."""
        value = self.models if self.models is not None else ("" if self.env == "production" else "movielens,digits")
        pairs = []
        for item in (i.strip() for i in value.split(",") if i.strip()):
            name, _, spec = item.partition("=")
            pairs.append((name.strip(), (spec or name).strip()))
        return pairs

    env: Literal["development", "production", "test"] = Field(
        "development", description="production refuses default secrets and generated certificates."
    )
    data_dir: Path = Field(Path("var"), description="Embedded default: SQLite DB, broker DB, artifacts, keys.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///<data_dir>/lethe.db. PostgreSQL in production."
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Broker and model-update pub/sub when reachable.")
    broker_url: str | None = Field(
        None,
        description="Celery broker; default: redis_url when Redis answers, else kombu's SQLAlchemy transport "
        "on SQLite (single-worker embedded default only).",
    )
    subject_key_secret: str = Field(DEV_SECRET, description="HMAC key that pseudonymises subject IDs.")
    host: str = Field("127.0.0.1", description="API bind address for `lethe run`.")
    port: int = Field(8000, description="API port for `lethe run`.")
    api_workers: int = Field(1, description="uvicorn worker processes (replicas) for `lethe run`.")
    public_url: str | None = Field(None, description="Base URL used in status links; default http://host:port.")
    bootstrap_admin_key: str | None = Field(None, description="Use this admin API key instead of generating one.")
    models: str | None = Field(
        None, validation_alias=AliasChoices("LETHE_MODELS", "LETHE_DEMO_MODELS"),
        description="Models the first start registers: comma list of `name` or `name=spec` (spec: an entry point "
                    "of group lethe.models). Default: the demo models movielens,digits; in production none.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Worker device: CUDA when present.")
    torch_threads: int = Field(1, description="CPU threads per process for torch (API and worker share the cores).")
    default_policy: str = Field("auto", description="Unlearning policy when a request names none.")
    batch_window_s: float = Field(2.0, description="Wait this long for more requests before starting a job.")
    batch_max: int = Field(500, description="Most erasure requests folded into one job.")
    intake_rate_per_s: float = Field(
        0.0, ge=0, description="Erasure intake (native, OpenDSR, Fides) per API key and replica, requests/s; "
                               "over it: 429 with Retry-After. 0 = unlimited.")
    intake_burst: int = Field(200, ge=1, description="Requests an API key may send at once before the rate applies.")
    intake_writers: int = Field(2, ge=1, description="Intake writer threads per replica (transactions in flight).")
    intake_batch_max: int = Field(
        64, ge=1, description="Most erasure requests one intake transaction records (group commit; 1 = one "
                              "transaction per request).")
    max_job_attempts: int = Field(3, description="A job re-delivered more often than this fails visibly.")
    max_request_attempts: int = Field(3, description="Jobs an erasure gets before it is marked failed (it stays "
                                                     "owed: POST .../retry or a new request reopens it).")
    job_seed: int | None = Field(None, description="Seed of every unlearning job (tests, reproductions); unset: a "
                                                   "fresh seed per job, recorded in the job and its audit events.")
    retry_backoff_s: float = Field(30.0, description="Wait before an owed erasure's next attempt after a failed "
                                                     "job; doubles with each attempt.")
    schedule_tick_s: float = Field(
        30.0, gt=0, description="Beat interval of the erasure scheduler (issue 16): wakes a model's exact job when "
                                "its earliest exact_due_at less the expected exact cost arrives.")
    db_outage_wait_s: float = Field(
        600.0, gt=0, description="A worker whose job hit a database outage waits this long for the database, "
                                 "then resumes the job; longer, the job is left to the reconciler.")
    job_lease_s: float = Field(
        120.0, description="Per-model job lease, renewed every third of it; a dead worker's lease expires after this.")
    replica_ttl_s: float = Field(10.0, description="A replica silent for longer drops out of the live set.")
    heartbeat_interval_s: float = Field(1.0, description="How often a replica reports its serving version.")
    poll_interval_s: float = Field(2.0, description="DB poll for model updates (fallback to pub/sub).")
    key_cache_ttl_s: float = Field(
        3.0, ge=0, description="How long a serving replica may reuse an API key it authenticated. A revoke or "
                               "rotate answers once every live replica confirmed (Redis pub/sub) it dropped the "
                               "key, else after this long, so no replica accepts the old secret after it answers. "
                               "0 = look every key up in the DB.")
    deploy_timeout_s: float = Field(120.0, description="How long a job waits for live replicas to swap.")
    reconcile_interval_s: float = Field(30.0, description="How often queued work whose message vanished is re-sent.")
    orphan_grace_s: float = Field(
        3600.0, ge=0, description="The reconciler deletes an unreferenced data or artifact file (an orphan: written by a "
                                  "transaction that rolled back) only once it is this old, so work still being "
                                  "committed (an ingest, a registration) is never swept (issue 23).")
    keep_tainted_versions: int = Field(
        0, ge=0, description="Keep the N newest versions that carry a completed erasure un-purged (their weights "
                             "stay on disk; rollback and loading still refuse them). For tests that must show "
                             "those refusals on a real stack; refused in production (issue 23).")
    test_hook_dir: Path | None = Field(
        None, description="Folder where a drill arms the worker's named pause/fail steps (app/core/testhook.py), so "
                          "a test kills or fails a worker at an exact step of a job on a running stack. Tests only; "
                          "refused in production (issue 23).")
    deadline_override_s: float | None = Field(
        None, gt=0, description="New requests are due this many seconds after receipt instead of Art. 12(3)'s one "
                                "month, so a test sees a deadline pass on a running stack. Tests only; refused in "
                                "production (issue 23).")
    log_level: str = Field("INFO", description="Python log level.")
    audit_sequence_interval_s: float = Field(0.5, description="How often each API process chains pending audit events.")
    # --- signatures, callbacks, deadlines, audit checkpoints (issue 5) ---
    signing_key_path: Path | None = Field(
        None, description="Ed25519 private key (PEM) signing erasure certificates and audit checkpoints; default "
        "<data_dir>/keys/ed25519.pem, generated only outside production.")
    processor_key_path: Path | None = Field(
        None, description="RSA private key (PEM) for OpenDSR response/callback signatures; default "
        "<data_dir>/keys/processor-rsa.pem, generated only outside production.")
    processor_cert_path: Path | None = Field(
        None, description="X.509 certificate (PEM) of the processor key, CA-issued in production (OpenDSR 4.1); "
        "default <data_dir>/keys/processor-cert.pem, self-signed and generated only outside production.")
    processor_domain: str | None = Field(
        None, description="X-OpenDSR-Processor-Domain (and OpenGDPR/OpenCompliance) value; default: public URL host.")
    opendsr_identity_types: str = Field(
        "controller_customer_id", description="Comma list of OpenDSR identity_type values (format raw) that carry "
        "Lethe's subject ID.")
    callback_hmac_secret: str = Field(DEV_SECRET, description="HMAC-SHA256 key signing native status callbacks.")
    callback_timeout_s: float = Field(5.0, description="HTTP timeout of one callback delivery attempt.")
    # --- outbound guard (issue 17, app/core/outbound.py) ---
    callback_hmac_secret_previous: str | None = Field(
        None, description="The secret being rotated out: while set, callbacks carry a signature with it too.")
    callback_allow: str | None = Field(
        None, description="Internal receivers admitted on purpose: comma list of host names, *.suffix patterns "
        "or CIDRs. Default: loopback (127.0.0.0/8, ::1) in the embedded default and tests, nothing in production.")
    callback_allow_http: bool | None = Field(
        None, description="Admit plain-http callback URLs. Default: yes outside production, no in production.")
    callback_connect_timeout_s: float = Field(3.0, gt=0, description="Connect timeout of one outbound call.")
    callback_max_response_bytes: int = Field(65536, ge=0, description="Larger receiver responses fail the attempt.")
    callback_max_attempts: int = Field(12, description="A callback failing this often is given up (audited).")
    callback_backoff_s: float = Field(10.0, description="First retry delay; doubles per attempt, capped at 1 h.")
    housekeeping_interval_s: float = Field(5.0, description="Beat period of callback delivery.")
    deadline_check_interval_s: float = Field(300.0, description="Beat period of the GDPR deadline check.")
    audit_checkpoint_interval_s: float = Field(300.0, description="Beat period of signed audit-chain checkpoints.")
    source_erasure_interval_s: float = Field(
        300.0, description="Beat period of the Delta-store work (issue 18): owed DELETEs and purges in the "
        "organisation's tables, and the re-ingestion check for rows of suppressed subjects.")
    audit_checkpoint_path: Path | None = Field(
        None, description="JSONL file of signed audit-chain heads, outside the DB; default "
        "<data_dir>/audit-checkpoints.jsonl.")
    sisa_models: str = Field(
        "", description="Comma list of demo models registered as SISA ensembles (4 shards x 3 slices, or the "
        "spec's measured layout: movielens 4 x 4, user-sharded): exact, cheap `sisa` unlearning; only exact "
        "methods run on them.")
    sisa_fan_out: bool = Field(
        False, description="Retrain the shards an erasure touches as one Celery task each (app/ml/sisa_tasks.py), "
        "so k shards on k workers cost about one shard's time; a shard no worker claims within "
        "sisa_claim_timeout_s is trained by the job itself (off: in the job, one after another).")
    sisa_claim_timeout_s: float = Field(15.0, description="Seconds a fanned-out SISA shard may wait for a worker "
                                        "before the job trains it itself (also the silence after which a claimed "
                                        "shard counts as lost, x2).")
    update_log_models: str = Field(
        "", description="Comma list of demo models trained with a per-step update log for `amnesiac` (storage: "
        "a parameter vector per step: ~25 MB toy, ~97 MB digits).")
    fides_url: str | None = Field(
        None, description="Fides' API base URL, ending in /api/v1 (e.g. https://fides.example.org/api/v1): "
        "its two-way webhooks send reply-to as a path under it. A bare http(s)://host[:port] gets /api/v1 "
        "appended at start-up; any other path is refused.")
    fides_token_ttl_s: float = Field(
        216000.0, gt=0, description="Lifetime of a Fides reply-to-token, seconds; must equal Fides' "
        "privacy_request_delay_timeout (default 3,600 minutes = 216000 s). A halted request's token expires "
        "at FidesResume.token_expires_at = created_at + this.")
    fides_resume_timeout_s: float = Field(
        60.0, gt=0, description="HTTP timeout of one Fides resume call: Fides runs the rest of the privacy "
        "request inside it (eager mode), which took 8.9 s with a second webhook; a resume that outlasts it "
        "and succeeded is recognised on retry (Fides' 400 'status = complete' ends the delivery as done).")
    fides_identity_fields: str = Field(
        "external_id,user_id", description="Fides identity fields, in order, that carry Lethe's subject ID.")
    # Publish targets (issue 19, app/publish/): credentials live here (env), never in a model's config.
    mlflow_tracking_uri: str | None = Field(
        None, validation_alias=AliasChoices("LETHE_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"),
        description="MLflow server that `register --weights models:/NAME@ALIAS` adopts from (when the model's "
        "publish config names none).")
    mlflow_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("LETHE_MLFLOW_TOKEN", "MLFLOW_TRACKING_TOKEN"),
        description="Bearer token for MLflow registries (never stored in the DB, never logged).")
    mlflow_username: str | None = Field(
        None, validation_alias=AliasChoices("LETHE_MLFLOW_USERNAME", "MLFLOW_TRACKING_USERNAME"),
        description="Basic-auth user for MLflow registries (with LETHE_MLFLOW_PASSWORD).")
    mlflow_password: SecretStr | None = Field(
        None, validation_alias=AliasChoices("LETHE_MLFLOW_PASSWORD", "MLFLOW_TRACKING_PASSWORD"),
        description="Basic-auth password for MLflow registries.")
    registry_timeout_s: float = Field(30.0, description="HTTP timeout of one model-registry call.")
    registry_backoff_s: float = Field(10.0, description="First retry delay of a registry sync; doubles per "
                                      "attempt, capped at 1 h, never given up (an erasure's purge is owed).")

    @field_validator("callback_allow")
    @classmethod
    def _cidrs_parse(cls, value: str | None) -> str | None:
        import ipaddress

        for item in (i.strip() for i in (value or "").split(",") if "/" in i):
            ipaddress.ip_network(item.strip("[]"), strict=False)  # ValueError names the bad CIDR
        return value

    @field_validator("fides_url")
    @classmethod
    def _fides_api_base(cls, value: str | None) -> str | None:
        return normalise_fides_url(value)

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        if self.env == "production":
            defaults = [name for name in ("subject_key_secret", "callback_hmac_secret")
                        if getattr(self, name) == DEV_SECRET]
            if defaults:
                raise ValueError(f"set {', '.join('LETHE_' + n.upper() for n in defaults)} in production")
            if self.keep_tainted_versions:
                raise ValueError("LETHE_KEEP_TAINTED_VERSIONS must be 0 in production: tainted weights are deleted")
            if self.test_hook_dir is not None or self.deadline_override_s is not None:
                raise ValueError("LETHE_TEST_HOOK_DIR and LETHE_DEADLINE_OVERRIDE_S are for tests; unset them in "
                                 "production")
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'lethe.db').resolve()}"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


@functools.lru_cache
def get_settings() -> Settings:
    return Settings()
