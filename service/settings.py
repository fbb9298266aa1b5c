"""The one settings object, built at start-up and passed in. Every SCANTIDE_* name lives here.

Sources, highest first: keyword overrides, environment (``SCANTIDE_*``), ``scantide.toml`` (or
the file named by ``SCANTIDE_CONFIG``), defaults. ClearML and AWS credentials are not here: they
come from their own standard chains.

Secrets (``SECRET_FIELDS``: the API tokens, the webhook secret, the control plane token) are
``SecretStr``: a repr, a dump, a log line or an error shows ``**********``. ``reveal`` gives the value
where it is used (signing, a header, the token check), and ``settings_env``'s dump with
``REVEAL_SECRETS`` in the context hands them to child processes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, PlainSerializer, SecretStr, SerializationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from scantide.signing import SECRET_PREFIX, signing_key

ENV_PREFIX = "SCANTIDE_"
CONFIG_ENV = "SCANTIDE_CONFIG"  # path of an optional TOML file
# prometheus-client's own name: its multiprocess mode keeps each process's series in files there
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_CONFIG_FILE = "scantide.toml"
SCOPES = ("enqueue", "read", "promote", "register")
WHSEC_COMMAND = ("python -c 'import base64, secrets; print(\"whsec_\" + "
                 "base64.b64encode(secrets.token_bytes(32)).decode())'")
QUEUE_NAME_MIN = 3  # a ClearML server strips a queue name and refuses a shorter one (400/800)
REVEAL_SECRETS = "reveal_secrets"  # a JSON dump with this true in its context writes secrets in clear


def _dump_secret(value: SecretStr | str, info: SerializationInfo) -> str:
    # a str: put there by model_copy(update=...), which does not validate; a secret all the same
    plain = value.get_secret_value() if isinstance(value, SecretStr) else value
    return plain if (info.context or {}).get(REVEAL_SECRETS) else str(SecretStr(plain))


Secret = Annotated[SecretStr, PlainSerializer(_dump_secret, when_used="json")]


def reveal(secret: SecretStr | None) -> str:
    """A secret's value, "" when unset: only where it is used, never to print or log."""
    return secret.get_secret_value() if secret is not None else ""


def queue_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a task-store queue, or None. The rule is the ClearML server's
    (``Queue.name``: stripped, at least 3 characters), kept in both modes so a configuration that
    works embedded works on ClearML; spaces around a name would make the server keep another name."""
    if name != name.strip():
        return f"queue name {name!r} has spaces around it"
    if len(name) < QUEUE_NAME_MIN:
        return f"queue name {name!r} is shorter than {QUEUE_NAME_MIN} characters (a ClearML server refuses it)"
    return None


class Settings(BaseSettings):
    # hide_input_in_errors: a ValidationError's text would otherwise quote the secrets it was given
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True,
                                      hide_input_in_errors=True)

    backend: Literal["embedded", "clearml"] = Field("embedded", description="The task store: embedded (SQLite in "
                                                    "the state dir, local workers) or clearml (a ClearML server).")
    state_dir: Path = Field(Path(".scantide"), description="SQLite store, tokens and logs (embedded).")
    data_root: Path | None = Field(None, description="Local scans must live under it; default <state_dir>/data.")
    output_root: Path | str | None = Field(
        None, description="Where outputs go: a local path, or a URL prefix such as s3://bucket/outputs; "
        "default <state_dir>/outputs.")

    default_algorithm: str = Field("video_summary", description="The algorithm a request that names none runs.")
    default_queue: str = Field("default", description="Embedded mode's one local queue (every algorithm's, unless "
                               "algorithm_queues maps it), which `scantide up` and `scantide worker` serve.")

    api_host: str = Field("127.0.0.1", description="The address the API listens on.")
    api_port: int = Field(8700, ge=1, le=65535, description="The port the API listens on.")
    api_tokens: dict[Secret, list[str]] = Field(
        default_factory=dict,
        description='Bearer tokens and their scopes, e.g. {"s3cr3t": ["enqueue", "read"]}. '
        "Empty: `scantide up` creates one with every scope in <state_dir>/api_token.",
    )
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="Largest request body the API reads, bytes.")
    max_bundle_bytes: int = Field(64 * 1024**2, ge=1024,
                                  description="Largest algorithm folder registered (POST /v1/algorithms), bytes.")
    max_blob_bytes: int = Field(16 * 1024**2, ge=1024,
                                description="Largest input uploaded with POST /v1/blobs (a Knot call's argument), bytes.")
    api_rate_limit_per_s: float | None = Field(
        None, ge=0, description="Requests a second each bearer token may send to the API (per API process), "
        "answered 429 rate_limited with Retry-After beyond it; unset or 0: no limit (the default, as embedded "
        "mode's one local token needs none).")
    api_rate_limit_burst: int = Field(0, ge=0, description="Requests a token may send back to back before "
                                      "api_rate_limit_per_s applies; 0: one second's worth.")
    algorithm_queues: dict[str, str] = Field(
        default_factory=dict,
        description='Descriptor queue -> task-store queue, e.g. {"gpu": "gpu-scans"}. Unmapped: embedded mode '
        "uses default_queue (its one local pool), ClearML mode the descriptor's name.")
    allowed_scan_hosts: list[str] = Field(
        default_factory=list,
        description="http(s) hosts allowed even though they resolve to loopback/private/link-local addresses.",
    )

    lease_s: float = Field(30.0, gt=0, description="A running task is re-queued if its worker is silent this long.")
    heartbeat_s: float = Field(5.0, gt=0, description="How often a worker renews its lease, seconds.")
    max_attempts: int = Field(2, ge=1, description="Runs per task before an expired lease fails it (worker_lost).")
    task_timeout_s: float = Field(1800.0, gt=0, description="Hard limit on one run of the algorithm, seconds.")
    worker_poll_s: float = Field(0.5, gt=0, description="Idle worker's pause between claims, seconds.")
    worker_slots: int = Field(1, ge=1, le=64, description="Tasks one worker runs at once, each in its own executor.")
    wake_ups: bool = Field(True, description="Embedded: a queued task wakes idle workers, a change the monitor and "
                                            "the conductor, at once (false: they only poll).")
    spot_notice_url: str | None = Field(None, description="EC2 instance metadata service (http://169.254.169.254) "
                                        "a worker polls for the spot interruption notice; unset: never polled (the "
                                        "EC2 boot script sets it on spot instances).")
    spot_notice_poll_s: float = Field(5.0, gt=0, description="How often a worker reads the spot notice, seconds.")
    worker_warm: bool = Field(True, description="Python algorithms run in a warm executor per slot (false: a "
                                                "process per task, as a ClearML agent runs them).")
    executor_max_tasks: int = Field(200, ge=1, description="A warm executor is replaced after this many tasks.")
    executor_max_rss_mib: int = Field(8192, ge=64, description="A warm executor grown past this is replaced, MiB.")
    workers: int = Field(2, ge=0, description="Most local workers the embedded autoscaler runs at once.")
    local_idle_timeout_s: float = Field(30.0, gt=0, description="An idle local worker is stopped after this long.")
    autoscaler_config: Path | None = Field(None, description="TOML file of pools; unset: one local pool.")
    autoscaler_tick_s: float | None = Field(None, gt=0, description="Tick; default 15 s (config file), 1 s (local).")

    s3_endpoint_url: str | None = Field(None, description="S3 endpoint override (moto, MinIO); unset: AWS's own.")
    presign_ttl_s: int = Field(7 * 24 * 3600, ge=1, le=7 * 24 * 3600,
                               description="Lifetime of presigned output links in webhooks, seconds (SigV4: 7 days "
                               "at most; links signed with temporary credentials die with them).")
    max_scan_bytes: int = Field(4 * 1024**3, ge=1, description="Largest scan a worker downloads, bytes.")
    input_cache_dir: Path | None = Field(None, description="A worker's cache of fetched remote inputs (scans, "
                                         "weights, upstream outputs); default <state_dir>/input_cache.")
    input_cache_max_bytes: int = Field(20 * 1024**3, ge=0, description="Most the input cache keeps, bytes (least "
                                       "recently used go first); 0: no cache, every input fetched per task.")

    webhook_url: str | None = Field(None, description="Where the monitor posts events; unset: kept, not sent.")
    webhook_secret: Secret | None = Field(None, description="Signs webhooks (Standard Webhooks): whsec_<base64 of "
                                          "24-64 random bytes>, or a plain secret of 16+ characters, whose whsec_ "
                                          "form is whsec_ + base64 of its UTF-8 bytes.")
    webhook_timeout_s: float = Field(10.0, gt=0, description="Per-request timeout of a webhook POST, seconds.")
    webhook_max_age_s: float = Field(24 * 3600.0, gt=0, description="Retry an event this long, then dead-letter it.")
    webhook_backoff_base_s: float = Field(1.0, gt=0, description="First retry delay, seconds (doubles, jittered).")
    webhook_backoff_cap_s: float = Field(600.0, gt=0, description="Longest retry delay, seconds.")
    webhook_concurrency: int = Field(8, ge=1, description="Scans whose events are sent at the same time.")
    monitor_poll_s: float = Field(0.5, gt=0, description="How often the monitor reads task changes, seconds.")
    stall_no_heartbeat_s: float = Field(60.0, gt=0, description="A running task silent this long is scan.stalled.")
    max_queue_wait_s: float = Field(1800.0, gt=0, description="A task queued this long is scan.stalled.")
    backlog_slo_s: float = Field(600.0, gt=0, description="Oldest queued task older than this: queue.backlog.")
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Production: each daemon (monitor, "
                                     "conductor, autoscaler, worker) serves its Prometheus metrics at "
                                     "http://<metrics_host>:<port>/metrics; unset: none. `scantide up` ignores it: "
                                     "the API's GET /metrics serves every process's series.")
    metrics_host: str = Field("127.0.0.1", description="The address a daemon's metrics port listens on "
                              "(production: the interface Prometheus reaches, or 0.0.0.0).")
    metrics_token_required: bool = Field(False, description="GET /metrics on the API needs a bearer token with the "
                                         "read scope (Prometheus: authorization.credentials_file); default: open, "
                                         "like /healthz.")
    status_poll_s: float = Field(2.0, gt=0, description="How often the status page's event stream reads the "
                                 "state when nothing rings (production always; embedded mode is rung on each "
                                 "change), seconds.")

    log_format: Literal["json", "text"] | None = Field(None, description="How every process logs to stderr: "
                                                       "json (one object a line, with the ids of the request, "
                                                       "task, scan or run it is about) or text (key=value, for "
                                                       "people); unset: text on a terminal, json anywhere else.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="The least severe lines logged, every process's and the Lambda's (any case).")

    # Pipelines: the conductor, and the compute targets steps run on.
    conductor_poll_s: float = Field(0.2, gt=0, description="How often the conductor reads run and task changes, "
                                    "seconds.")
    compute_name: str = Field("", pattern=r"^([a-z][a-z0-9_-]{0,40})?$", description="The name pipeline steps give "
                              "this deployment's own backend as their compute; default local (embedded), cloud "
                              "(clearml).")
    compute_targets: dict[str, dict[str, Any]] = Field(default_factory=dict, description="More compute targets for "
                                                       "pipeline steps: name -> settings that differ from these, e.g. "
                                                       '{"cloud": {"backend": "clearml", "output_root": "s3://b/out"}}; '
                                                       "never a secret (those are the deployment's own).")
    default_compute: str = Field("", description="Where a step without compute runs; default this deployment's own.")
    pipeline_prefixes: dict[str, str] = Field(default_factory=dict, description="The Lambda's routing of S3 keys to "
                                              'pipelines by key prefix, e.g. {"uploads/triage/": "triage"}; the '
                                              "longest matching prefix wins, no match runs the default algorithm.")
    control_plane_url: str | None = Field(None, description="The Lambda's way to the API for S3 keys routed to a "
                                          "pipeline (runs live with the control plane), e.g. https://scantide.internal; "
                                          "unset: the Lambda starts runs in this state dir's pipeline store.")
    control_plane_token: Secret | None = Field(None, description="Bearer token (enqueue scope) for control_plane_url.")
    webhook_step_events: bool = Field(False, description="Also send scan.* events for the tasks of pipeline steps "
                                      "(by default a run sends only pipeline.completed or pipeline.failed).")

    # ClearML mode (backend = "clearml"). Server and credentials come from the SDK's own chain:
    # CLEARML_API_HOST, CLEARML_API_ACCESS_KEY, CLEARML_API_SECRET_KEY or clearml.conf.
    clearml_project: str = Field("scantide", min_length=1, description="ClearML project of templates and tasks.")
    clearml_timeout_s: float = Field(10.0, gt=0, description="Read timeout of one ClearML API request, seconds.")
    clearml_retries: int = Field(2, ge=0, description="Retries of a failed ClearML request before giving up (503).")

    @field_validator("output_root", mode="before")
    @classmethod
    def _output_root_kind(cls, value: Any) -> Any:
        # A URL prefix stays a string (Path would fold "s3://" into "s3:/"); anything else is a path.
        if isinstance(value, str) and "://" not in value:
            return Path(value)
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level_case(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("compute_targets")
    @classmethod
    def _targets_hold_no_secret(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        # A target's settings are printed as they are; its secrets would be in clear, and it has no use for them.
        for name, overrides in value.items():
            if held := sorted(set(overrides) & set(SECRET_FIELDS)):
                raise ValueError(f"compute_targets[{name!r}] sets {held}: secrets are the deployment's own, "
                                 "never a target's")
        return value

    @field_validator("default_queue")
    @classmethod
    def _default_queue_name(cls, value: str) -> str:
        problem = queue_name_problem(value)
        if problem:
            raise ValueError(f"default_queue: {problem}")
        return value

    @field_validator("algorithm_queues")
    @classmethod
    def _algorithm_queue_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key, queue in value.items():
            problem = queue_name_problem(queue)
            if problem:
                raise ValueError(f"algorithm_queues[{key!r}]: {problem}")
        return value

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        # Absolute from the start: a task runs in a working folder of its own, where a relative
        # state dir (the default ".scantide") would name another place.
        self.state_dir = self.state_dir.absolute()
        if self.data_root is None:
            self.data_root = self.state_dir / "data"
        if self.output_root is None:
            self.output_root = self.state_dir / "outputs"
        if self.input_cache_dir is None:
            self.input_cache_dir = self.state_dir / "input_cache"
        self.data_root, self.input_cache_dir = self.data_root.absolute(), self.input_cache_dir.absolute()
        if isinstance(self.output_root, Path):
            self.output_root = self.output_root.absolute()
        for name, tokens in (("api_tokens", self.api_tokens),):
            for scopes in tokens.values():
                unknown = set(scopes) - set(SCOPES)
                if unknown:
                    raise ValueError(f"{name}: unknown scopes {sorted(unknown)}; known: {list(SCOPES)}")
        secret = reveal(self.webhook_secret)
        if self.webhook_url and len(secret) < 16:
            raise ValueError("webhook_secret must be set (16+ characters) when webhook_url is set; generate one "
                             f"with: {WHSEC_COMMAND}")
        if secret.startswith(SECRET_PREFIX):
            try:
                key = signing_key(secret)
            except ValueError as exc:
                raise ValueError(f"webhook_secret: {exc}") from None
            if not 24 <= len(key) <= 64:
                raise ValueError(f"webhook_secret: a {SECRET_PREFIX} secret holds 24 to 64 bytes (Standard Webhooks); "
                                 f"this one holds {len(key)}; generate one with: {WHSEC_COMMAND}")
        return self

    @property
    def own_compute(self) -> str:
        """The compute target name of this deployment's own backend."""
        return self.compute_name or ("local" if self.backend == "embedded" else "cloud")

    @property
    def rejections_db(self) -> Path:
        """Input the Lambda refused, reported through the API, for the monitor to announce."""
        return self.state_dir / "rejections.db"

    @property
    def pipelines_db(self) -> Path:
        return self.state_dir / "pipelines.db"

    @property
    def metrics_dir(self) -> Path:
        """Where `scantide up`'s processes keep their Prometheus series (``METRICS_DIR_ENV``)."""
        return self.state_dir / "metrics"

    @property
    def db_path(self) -> Path:
        return self.state_dir / "scantide.db"

    @property
    def token_file(self) -> Path:
        return self.state_dir / "api_token"

    @property
    def output_root_uri(self) -> str:
        """``output_root`` as task and model URIs start: a URL prefix as given, a local path resolved;
        no trailing ``/``."""
        root = str(self.output_root)
        return (root if "://" in root else str(Path(root).resolve())).rstrip("/")

    @property
    def autoscaler_journal(self) -> Path:
        """The autoscaler's decisions, JSON lines; the monitor turns its launch failures into events."""
        return self.state_dir / "autoscaler" / "journal.jsonl"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get(CONFIG_ENV, DEFAULT_CONFIG_FILE))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)


def _holds_secret(annotation: Any) -> bool:
    return annotation is SecretStr or any(_holds_secret(arg) for arg in get_args(annotation))


SECRET_FIELDS = frozenset(name for name, info in Settings.model_fields.items() if _holds_secret(info.annotation))


def load_settings(**overrides: Any) -> Settings:
    """Build the settings once at start-up; raises ``ConfigError`` with a readable message, which
    names no secret (an API token's place in a path reads ``<secret>``)."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from service.errors import ConfigError

    where = f"({ENV_PREFIX}* or {DEFAULT_CONFIG_FILE})"
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{_path(e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors())
        error = ConfigError(f"invalid settings {where}: {problems}")
    except SettingsError as exc:  # a value the environment or file gave that does not parse (JSON)
        error = ConfigError(f"invalid settings {where}: {exc}")
    raise error  # outside the except: the cause, which quotes what it was given, stays unchained


def _path(loc: tuple[int | str, ...]) -> str:
    """A field path, with the key under a secret field (an API token) masked."""
    shown = (*loc[:1], "<secret>", *loc[2:]) if loc[:1] and loc[0] in SECRET_FIELDS and len(loc) > 1 else loc
    return ".".join(map(str, shown))


def with_local_token(settings: Settings) -> Settings:
    """With no tokens configured, make one (every scope) and keep it in <state_dir>/api_token (0600)."""
    import secrets

    if settings.api_tokens:
        return settings
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    path = settings.token_file
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32))
    token = path.read_text().strip()
    return settings.model_copy(update={"api_tokens": {SecretStr(token): list(SCOPES)}})
