"""One validated settings object: env `SENTINEL_*`, an optional `sentinel.toml`, then CLI flags.

Bad values stop start-up with a message naming the setting, never a traceback.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

PRODUCT_RE = re.compile(r"^[A-Z0-9]{1,12}-[A-Z0-9]{1,12}$")
SOURCE_KINDS = ("coinbase", "simulator", "replay:PATH")
#: Live venues a source list may name (each also as `simulator-<venue>`, its simulated twin).
LIVE_VENUES = ("coinbase", "binance", "kraken", "coinbase-advanced")
#: Settings that no longer exist, and why. An old sentinel.toml or environment that still sets
#: one must not stop start-up: the value is ignored with a warning, not an "unknown setting".
RETIRED = {
    "spark_shuffle_partitions": "the Spark job's plan has no shuffle since issue 22",
}

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """Settings could not be loaded; the message is meant for the user as is."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SENTINEL_", toml_file="sentinel.toml", extra="forbid", validate_default=True
    )

    source: str = Field(
        "coinbase",
        description="coinbase | binance | kraken | coinbase-advanced (several: comma-separated)"
        " | simulator | simulator-<venue> | replay:PATH",
    )
    products: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["BTC-USD", "ETH-USD", "SOL-USD"]
    )
    coinbase_ws_url: str = "wss://ws-feed.exchange.coinbase.com"
    coinbase_rest_url: str = "https://api.exchange.coinbase.com"
    # Other venues; product lists in the normalised BASE-QUOTE form.
    binance_ws_url: str = "wss://data-stream.binance.vision"  # market data only
    binance_rest_url: str = "https://data-api.binance.vision"
    binance_products: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["BTC-USDT", "ETH-USDT", "SOL-USDT"]
    )
    kraken_ws_url: str = "wss://ws.kraken.com/v2"
    kraken_rest_url: str = "https://api.kraken.com"
    kraken_products: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["BTC-USD", "ETH-USD", "SOL-USD"]
    )
    kraken_rest_rate: float = Field(
        1.0, gt=0, le=50, description="Kraken public REST requests/s for backfill (about 1)"
    )
    coinbase_advanced_ws_url: str = "wss://advanced-trade-ws.coinbase.com"
    coinbase_advanced_rest_url: str = "https://api.coinbase.com"
    coinbase_advanced_products: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["BTC-USD", "ETH-USD", "SOL-USD"]
    )
    connect_timeout: float = Field(5.0, gt=0, le=120)
    fallback_to_simulator: bool = True

    data_dir: Path = Path(".sentinel")
    lake_dir: Path | None = None
    lake_uri: str | None = Field(
        None,
        description="lake on S3-compatible storage, s3://bucket/prefix (overrides lake_dir;"
        " credentials, region and endpoint from the standard AWS_* variables)",
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)

    batch_interval_ms: int = Field(250, ge=10, le=60_000)
    batch_max_frames: int = Field(20_000, ge=1, le=1_000_000)
    bus_capacity: int = Field(5_000, ge=1, le=10_000_000)
    app_id: str = Field("sentinel-embedded", min_length=1, max_length=200)

    simulator_rate: float = Field(20.0, ge=1, le=50_000)
    simulator_seed: int = 1
    simulator_max_trades: int | None = Field(None, ge=1)
    simulator_url: str | None = Field(None, description="use a running `sentinel simulate`")
    simulator_faults: str = Field(
        "", description="simulator fault injection, e.g. disconnect_every=3,drop=0.01,seed=7"
    )
    backfill: bool = Field(True, description="fetch missed trades from the REST API")
    idle_timeout: float = Field(10.0, gt=0, le=600, description="reconnect after this quiet")
    backoff_cap: float = Field(30.0, gt=0, le=600, description="longest reconnect delay (s)")
    replay_speed: str = "max"
    replay_exchange: str = Field(
        "coinbase", description="lake name whose codec reads the recording (coinbase, binance, …)"
    )

    bus: str = Field("memory", pattern="^(memory|kafka)$", description="memory | kafka")
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_topic_prefix: str = Field("sentinel.raw.", pattern=r"^[A-Za-z0-9._-]+$")
    kafka_partitions: int = Field(6, ge=1, le=1000)
    kafka_replication: int = Field(1, ge=1, le=10)
    kafka_min_insync: int = Field(1, ge=1, le=10)
    kafka_retention_hours: float = Field(168, gt=0)
    kafka_group: str = Field("sentinel-process", min_length=1)

    hot_trades_per_product: int = Field(1000, ge=50, le=1_000_000)
    log_level: str = "INFO"

    # Level-2 order books (issue 17): subscribe to each venue's book channel, keep the books.
    books: bool = Field(False, description="capture level-2 order books")
    book_depth: int = Field(1000, ge=10, le=5000)  # levels per side subscribed / REST snapshot
    book_snapshot_seconds: float = Field(1.0, gt=0, le=3600)  # gold.book_snapshots interval
    book_snapshot_levels: int = Field(50, ge=1, le=5000)  # levels per side in those snapshots
    book_checkpoint_seconds: float = Field(60.0, gt=0, le=86_400)  # full-depth snapshot (at=)
    coinbase_api_key: str | None = None  # Exchange `level2` needs an authenticated subscribe
    coinbase_api_secret: SecretStr | None = None
    coinbase_api_passphrase: SecretStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_retired(cls, data: Any) -> Any:
        """Ignore retired settings (env or sentinel.toml), each with one warning."""
        if not isinstance(data, dict):
            return data
        for name, why in RETIRED.items():
            env = f"SENTINEL_{name.upper()}"
            origins = [f"env {env}"] if env in os.environ else []
            if name in data:  # the env source reads known fields only: this is the file's
                origins.append("sentinel.toml")
            if origins:
                where = ", ".join(origins)
                log.warning("setting %s (%s) is no longer used, ignored: %s", name, where, why)
                data = {k: v for k, v in data.items() if k != name}
        return data

    @field_validator("app_id", "spark_app_id")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value.startswith("_"):
            raise ValueError(f"{value!r}: names starting with '_' are the lake's own locks")
        return value

    @field_validator("replay_exchange")
    @classmethod
    def _known_exchange(cls, value: str) -> str:
        from crypto_sentinel.sources.venues import VENUES, venue_of

        if venue_of(value) is None:
            raise ValueError(f"no codec for exchange {value!r}; known: {', '.join(VENUES)}")
        return value

    @field_validator(
        "products",
        "binance_products",
        "kraken_products",
        "coinbase_advanced_products",
        mode="before",
    )
    @classmethod
    def _split_products(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [p for p in value.replace(" ", "").split(",") if p]
        return value

    @field_validator(
        "products", "binance_products", "kraken_products", "coinbase_advanced_products"
    )
    @classmethod
    def _check_products(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one product is required, e.g. BTC-USD")
        bad = [p for p in value if not PRODUCT_RE.match(p)]
        if bad:
            raise ValueError(f"not a product id (expected BASE-QUOTE like BTC-USD): {bad}")
        return list(dict.fromkeys(value))

    @field_validator("lake_uri")
    @classmethod
    def _check_lake_uri(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        bucket = value.split("://", 1)[1].split("/", 1)[0] if "://" in value else ""
        if not value.startswith(("s3://", "s3a://")) or not bucket:
            raise ValueError(f"must look like s3://bucket/prefix, got {value!r}")
        return value.rstrip("/")

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str) -> str:
        if value.startswith("replay:") and len(value) > len("replay:"):
            return value
        names = [name.strip() for name in value.split(",")]
        known = (*LIVE_VENUES, "simulator", *(f"simulator-{v}" for v in LIVE_VENUES[1:]))
        for name in names:
            if name not in known:
                raise ValueError(
                    f"unknown source {name!r}; use {', '.join(LIVE_VENUES)} (several:"
                    " comma-separated), simulator, simulator-<venue> or replay:PATH"
                )
        if len(set(names)) != len(names):
            raise ValueError(f"source {value!r} names a venue twice")
        return ",".join(names)

    @field_validator("simulator_faults")
    @classmethod
    def _check_faults(cls, value: str) -> str:
        from crypto_sentinel.simulator.faults import FaultSpec

        FaultSpec.parse(value)  # raises ValueError with a message naming the bad part
        return value

    @field_validator("replay_speed")
    @classmethod
    def _check_speed(cls, value: str) -> str:
        if value == "max":
            return value
        try:
            speed = float(value)
        except ValueError:
            raise ValueError("replay speed must be a number > 0 or 'max'") from None
        if speed <= 0:
            raise ValueError("replay speed must be a number > 0 or 'max'")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("log level must be DEBUG, INFO, WARNING or ERROR")
        return level

    @property
    def exchange(self) -> str:
        """Lake name of the (first) configured source's data (simulated data never says
        coinbase)."""
        if self.source.startswith("replay:"):
            return self.replay_exchange
        return self.source_names[0]

    @property
    def source_names(self) -> list[str]:
        """The sources to run, each a lake exchange name (`replay:PATH` stays whole)."""
        return [self.source] if self.source.startswith("replay:") else self.source.split(",")

    def products_for(self, venue: str) -> list[str]:
        """The products configured for a venue (Coinbase and the simulator: `products`)."""
        if venue in ("binance", "kraken", "coinbase-advanced"):
            return list(getattr(self, f"{venue.replace('-', '_')}_products"))
        return list(self.products)

    def rest_rate_for(self, venue: str) -> float | None:
        """A venue's backfill request rate when set here (else its connector's own)."""
        return self.kraken_rest_rate if venue == "kraken" else None

    def venue_urls(self, venue: str) -> tuple[str, str]:
        """(WebSocket URL, REST URL) of a live venue."""
        key = venue.replace("-", "_")
        return getattr(self, f"{key}_ws_url"), getattr(self, f"{key}_rest_url")

    @property
    def lake_path(self) -> Path:
        return (self.lake_dir or self.data_dir / "lake").resolve()

    @property
    def lake_root(self) -> Path | str:
        """Where the lake lives: `lake_uri` on object storage, else the local `lake_path`."""
        return self.lake_uri or self.lake_path

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    # --- serving layer: API, hot state and live push ----------------------------------------
    api_cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="origins allowed to read the API from a browser page of another site"
        " (comma separated; * = any); default none: CORS off",
    )
    api_hot_minutes: int = Field(1510, ge=60, le=20_160)  # 1-min candles in memory (300 x 5m)
    api_warmup_seconds: float = Field(30.0, gt=0, le=3600)  # budget to rebuild hot state
    api_stream_queue: int = Field(2000, ge=10, le=1_000_000)  # messages per push client
    api_stream_max_clients: int = Field(1000, ge=1, le=100_000)
    api_heartbeat_seconds: float = Field(5.0, gt=0, le=300)  # push heartbeat interval
    # --- API security (issue 9): optional bearer token, per-client rate limit ------------------
    api_token: SecretStr | None = Field(
        None,
        description="when set, every route but /health and /ready needs"
        " `Authorization: Bearer <token>` (WebSocket/SSE also ?access_token=)",
    )
    api_rate_limit: float = Field(
        100.0, ge=0, le=1_000_000, description="requests per second per client IP; 0 = off"
    )
    api_rate_burst: int = Field(200, ge=1, le=10_000_000)  # bucket size: requests at once
    api_rate_limit_loopback: bool = Field(
        False, description="also limit clients on 127.0.0.1/::1 (default: exempt)"
    )

    @field_validator("api_token")
    @classmethod
    def _check_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None  # SENTINEL_API_TOKEN= (empty): no token
        text = value.get_secret_value()
        if len(text) < 16 or len(text) > 512:
            raise ValueError("must be 16 to 512 characters (the value is not shown)")
        if not all(33 <= ord(c) <= 126 for c in text):
            raise ValueError("must be printable ASCII without spaces (the value is not shown)")
        return value

    @field_validator("api_cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [o for o in value.replace(" ", "").split(",") if o]
        return value

    # --- lake maintenance: compaction, retention, vacuum, checkpoints ---------------------------
    # Run in-process by `sentinel up` and on demand by `sentinel maintain ...`.
    maintenance_enabled: bool = True  # run the scheduler inside the pipeline
    # Seconds between passes. Short, so each pass packs few small files: at 2,000 trades/s a
    # pass every 15 s held `sentinel up` flat (+0.5 MB/min over 10 minutes) where one every
    # 60 s grew +2.0-2.3 MB/min (docs/benchmarks.md, session 19).
    maintenance_interval_s: float = Field(15.0, ge=1, le=86_400)
    maintenance_target_file_mb: int = Field(128, ge=1, le=4096)  # compaction target file size
    maintenance_max_files_per_partition: int = Field(32, ge=2, le=100_000)  # compact above this
    maintenance_zorder: bool = False  # z-order closed (past) partitions by product and time
    maintenance_vacuum_safety_hours: int = Field(1, ge=0, le=8760)  # keep replaced files this long
    # Commits per checkpoint. Reading the log past a checkpoint fetches each commit file on a
    # tokio thread of its own: at 100 the process kept ~110 threads and ~14 MB more resident.
    maintenance_checkpoint_interval: int = Field(25, ge=1, le=100_000)
    # Commit files older than this go at each checkpoint. Short: every commit lists the log.
    maintenance_log_retention_minutes: float = Field(0.5, ge=0.1, le=525_600)
    retention_bronze_days: int = Field(7, ge=0, le=36_500)  # 0 = keep forever
    retention_quarantine_days: int = Field(0, ge=0, le=36_500)
    retention_silver_days: int = Field(0, ge=0, le=36_500)
    retention_gold_days: int = Field(0, ge=0, le=36_500)

    # --- Spark engine: Structured Streaming job, sized for a 2-core, 2 GB box ----------------
    spark_master: str = Field("local[2]", pattern=r"^(local(\[(\d+|\*)\])?|spark://\S+)$")
    spark_app_id: str = Field("sentinel-spark", min_length=1, max_length=200)  # Delta txn app id
    spark_checkpoint_dir: Path | None = None  # default <data dir>/spark/checkpoint
    spark_jars_cache: Path | None = None  # Maven-resolved jars; default <data dir>/spark
    spark_trigger_seconds: float = Field(1.0, gt=0, le=3600)  # micro-batch interval
    spark_max_offsets_per_trigger: int = Field(10_000, ge=1, le=100_000_000)  # Kafka records
    spark_driver_memory: str = Field("768m", pattern=r"^\d+[kmg]$")  # heap; JVM RSS is ~2x
    spark_executor_memory: str = Field("512m", pattern=r"^\d+[kmg]$")
    spark_worker_memory: str = Field("1g", pattern=r"^\d+[kmg]$")  # standalone worker's limit
    spark_worker_cores: int = Field(2, ge=1, le=1024)
    spark_daemon_memory: str = Field("256m", pattern=r"^\d+[kmg]$")  # master/worker JVM heap
    spark_java_options: str = (  # driver and executors: bound what lives outside the heap
        "-XX:+UseG1GC -XX:+ExitOnOutOfMemoryError -XX:ReservedCodeCacheSize=128m"
        " -XX:MaxDirectMemorySize=256m -Xss1m"
    )

    # --- Kafka client security (issue 20): given to every producer, consumer and admin client
    # as librdkafka's security.protocol, sasl.mechanism, sasl.username/password and
    # ssl.ca.location. The password is a SecretStr: repr, logs and /health never show it.
    kafka_security_protocol: str = Field(
        "PLAINTEXT", pattern="^(PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL)$"
    )
    kafka_sasl_mechanism: str = Field(
        "SCRAM-SHA-256", pattern="^(PLAIN|SCRAM-SHA-256|SCRAM-SHA-512)$"
    )
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: Path | None = None  # PEM CA bundle; default: the system's CAs

    @field_validator("kafka_sasl_password")
    @classmethod
    def _check_sasl(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        protocol = info.data.get("kafka_security_protocol", "")
        if str(protocol).startswith("SASL_") and (
            not info.data.get("kafka_sasl_username")
            or value is None
            or not value.get_secret_value()
        ):
            raise ValueError(
                f"security protocol {protocol} needs SENTINEL_KAFKA_SASL_USERNAME and"
                " SENTINEL_KAFKA_SASL_PASSWORD"
            )
        return value

    @field_validator("kafka_ssl_ca_location")
    @classmethod
    def _check_ca(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no CA file at {value}")
        return value


def load_settings(flags: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings (flags > env > sentinel.toml > defaults) or raise ConfigError.

    `flags` names the command-line flag each override came from (setting -> flag), so an
    error blames what the user actually typed, not an environment variable they never set.
    """
    clean = {k: v for k, v in overrides.items() if v is not None}
    flags = flags or {}
    try:
        return Settings(**clean)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"sentinel.toml is not valid TOML: {exc}") from None
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "settings"
            top = str(err["loc"][0]) if err["loc"] else ""
            used_flag = top in flags and top in clean
            origin = flags[top] if used_flag else f"env SENTINEL_{name.upper()}"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown setting (check the spelling)"
            lines.append(f"{name} ({origin}): {msg}")
        raise ConfigError("invalid configuration: " + "; ".join(lines)) from None
