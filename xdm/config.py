"""The one typed configuration of xdm-recall.

Precedence, lowest first: dataclass defaults < named profile (`local`, `test`, `cluster`) < environment
`XDM_<SECTION>__<FIELD>` < explicit `section.field=value` overrides (the CLI's `--set`). `load_config` is
pure: the environment is passed in, nothing is read at import time. Unknown keys and bad values raise
ConfigError naming the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from xdm.errors import ConfigError
from xdm.model_config import ModelConfig
from xdm.stream_rules import SampleRules, WindowRules


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap: str = "127.0.0.1:9092"  # broker list host:port[,host:port]; a real Kafka cluster by URL alone
    clicks_topic: str = "xdm.clicks"  # click events, keyed by user id
    impressions_topic: str = "xdm.impressions"  # impression events, keyed by user id (co-partitioned)
    items_topic: str = "xdm.items"  # item catalogue records, keyed by item id
    users_topic: str = "xdm.users"  # optional user profile records, keyed by user id
    samples_topic: str = "xdm.samples"  # training samples, keyed by user id
    dlq_topic: str = "xdm.dead-letters"  # malformed inputs with their reason
    versions_topic: str = "xdm.model-versions"  # learners announce published model versions here
    partitions: int = 4  # partitions of every keyed topic (events and samples must match)
    replication: int = 1  # replication factor of created topics
    session_timeout_ms: int = 6000  # consumer group session timeout; short joins on the embedded broker
    heartbeat_ms: int = 2000  # consumer heartbeat interval
    rebalance_timeout_ms: int = 10000  # max time a member may take to rejoin during a rebalance
    exactly_once: bool = False  # Faust processing_guarantee "exactly_once" (transactions; real Kafka only, not tansu)
    compaction: bool = False  # create changelog, catalogue, profile and versions topics with cleanup.policy=compact
    min_insync_replicas: int = 0  # min.insync.replicas of created topics; 0 = replication - 1 (at least 1)
    # How every Kafka client (Faust, aiokafka, kafka-python) reaches the brokers: xdm/client_security.py.
    # Secrets come from files (a mounted Secret), never from the config: env, argv and `xdm config show` stay clean.
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL
    sasl_mechanism: str = "PLAIN"  # with SASL_*: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512
    sasl_username: str = ""  # with SASL_*: the user name
    sasl_password_file: str = ""  # with SASL_*: file holding the password
    ssl_cafile: str = ""  # with *SSL: PEM CA bundle that signed the brokers' certificates ("" = the system's)
    ssl_certfile: str = ""  # with *SSL: client certificate (PEM) for mutual TLS ("" = none)
    ssl_keyfile: str = ""  # with *SSL: the client certificate's private key (PEM)

    def __post_init__(self) -> None:
        _check_kafka_security(self)
        if self.partitions < 1 or self.replication < 1:
            raise ValueError(f"kafka.partitions ({self.partitions}) and kafka.replication ({self.replication}) must be >= 1")
        if not 0 <= self.min_insync_replicas <= self.replication:
            raise ValueError(f"kafka.min_insync_replicas ({self.min_insync_replicas}) must be between 0 (auto) "
                             f"and kafka.replication ({self.replication})")


@dataclass(frozen=True)
class StreamConfig:
    app_id: str = "xdm-stream"  # Faust app id: consumer group and changelog topic prefix
    store: str = "rocksdb://"  # Faust table store URL
    data_dir: str = "var/stream"  # folder of the worker's RocksDB tables
    catalogue_store: str = "rocksdb"  # the worker's catalogue mirror: "rocksdb" (under data_dir, rebuilt at start) or "memory" (a dict)
    catalogue_cache_items: int = 50_000  # decoded catalogue items kept in memory beside the RocksDB mirror (~450 B each)
    web_port: int = 0  # Faust web port (0 = pick a free one)
    max_event_bytes: int = 65536  # larger payloads go to the dead-letter topic
    max_future_ms: int = 86_400_000  # events stamped further than this past wall clock are rejected
    metrics_port: int = 0  # Prometheus metrics port of the worker (0 = disabled)
    batch_max: int = 5000  # most records in one batch (one state load and write per user); a full batch starts at once
    batch_within_ms: int = 100  # longest wait (ms) for a round to fill before it starts
    align_idle_ms: int = 200  # a caught-up topic silent this long (ms) stops holding the other one back
    align_max_hold_ms: int = 30_000  # a held record leaves after this long (ms) unless the other topic lags
    align_max_held: int = 200_000  # most records held for event-time alignment; past it the oldest leave
    state_cache_users: int = 20_000  # decoded user states kept in memory between batches
    counters_log_s: float = 10.0  # log the worker counters this often (s)
    fetch_max_wait_ms: int = 100  # longest a fetch waits at the broker for records (ms); Faust's own is 1500
    yield_every: int = 64  # Faust's stream iterator yields to the event loop once per this many records (1 = Faust's)
    user_retention_ms: int = 0  # users idle this long (event time, ms) leave the windows table, tombstoned; 0 = kept forever
    retention_sweep_s: float = 600.0  # how often (s) the worker looks for users idle past user_retention_ms

    def __post_init__(self) -> None:
        if self.catalogue_store not in ("rocksdb", "memory"):
            raise ValueError(f"stream.catalogue_store must be 'rocksdb' or 'memory', got {self.catalogue_store!r}")


@dataclass(frozen=True)
class LearnerConfig:
    arm: str = "xdm"  # A/B arm this learner trains; names its consumer group, collections and versions
    variant: str = "xdm"  # model variant (learner.model.VARIANTS)
    batch_size: int = 256  # samples per optimiser step (papers §4.3)
    max_wait_ms: int = 2000  # train on a partial batch after waiting this long
    lr: float = 0.1  # AdaGrad learning rate (papers §4.3)
    dense_optimizer: str = "auto"  # the layers besides the item/feature tables: adagrad, adam, or auto = each
    #                                base's own paper's (Adam for sasrec and hstu, AdaGrad for sdm and gru4rec; learner/trainer.py)
    adam_lr: float = 1e-3  # Adam's learning rate where the dense layers take Adam
    adagrad_init: float = 0.0  # AdaGrad's initial accumulator: torch's 0; TF's 0.1 learns far slower here (trainer.py)
    lr_warmup_steps: int = 100  # the learning rate ramps in linearly over this many steps (trainer.py: the metric loss collapsed without)
    clip_norm: float = 5.0  # gradient clipping norm (papers §4.3)
    device: str = "auto"  # "auto" picks CUDA when present, else CPU
    torch_threads: int = 1  # CPU threads for torch; more than the free cores makes small models far slower
    seed: int = 7  # random seed (deterministic on CPU)
    checkpoint_dir: str = "var/checkpoints"  # one sub-folder per arm
    checkpoint_every_steps: int = 50  # checkpoint after this many optimiser steps
    dedup_samples: int = 200_000  # newest sample ids remembered to skip repeats after a worker restart (0 = off)
    record_trained_ids: bool = False  # append trained sample ids next to the checkpoint (learner/trained_ids.py; checks)
    publish_every_steps: int = 20  # publish a model version after this many steps
    publish_every_s: float = 30.0  # ... or after this many seconds with new steps
    publish_deadline_s: float = 600.0  # a publish running longer (s) is abandoned unannounced; training never waits on one
    model_store: str = "var/models"  # folder that holds one user tower per published version
    keep_versions: int = 3  # published versions kept before older ones are dropped (and the full versions they apply to)
    publish_delta_max_share: float = 0.2  # a version is published as the rows changed since its base (the last full
    #                                       version) unless they exceed this share of the items; 0 = always full
    publish_full_every: int = 100  # ... and in full after this many deltas on one base (0 = no such limit)
    evict_after_ms: int = 14 * 86_400_000  # free item rows unseen in samples for this long (event time, ms); 0 = never
    evict_every_steps: int = 100  # look for items to evict after this many steps
    rehearsal_steps: int = 2  # extra steps after each new batch on random batches of recent samples (learner/rehearsal.py)
    rehearsal_window: int = 20_000  # the last this many samples taken are what rehearsal draws from
    validation_full_max_items: int = 100_000  # progressive validation ranks every item for every sample up to this
    #                                           many items (exact); above, a sample of both (learner/progressive.py)
    validation_users: int = 16  # ... above it: samples of a batch scored
    validation_items: int = 400_000  # ... against this many items, each row with probability items / N (ranks scaled); all when fewer
    sparse_item_update: str = "auto"  # on: the vocabulary tables get row-sparse gradients, AdaGrad updates only
    #                                   the rows a batch touched; off: dense; auto: tables of > 100 k rows (learner/trainer.py)
    metrics_port: int = 0  # Prometheus metrics port (0 = disabled)

    def __post_init__(self) -> None:
        if self.sparse_item_update not in ("auto", "on", "off"):
            raise ValueError(f"sparse_item_update must be auto, on or off, got {self.sparse_item_update!r}")
        if self.dense_optimizer not in ("auto", "adagrad", "adam"):
            raise ValueError(f"dense_optimizer must be auto, adagrad or adam, got {self.dense_optimizer!r}")
        if self.rehearsal_steps < 0:
            raise ValueError(f"rehearsal_steps must be >= 0, got {self.rehearsal_steps}")
        if self.rehearsal_window < 1:
            raise ValueError(f"rehearsal_window must be >= 1, got {self.rehearsal_window}")
        if min(self.validation_full_max_items, self.validation_users, self.validation_items) < 1:
            raise ValueError("validation_full_max_items, validation_users and validation_items must be >= 1")


INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT")  # build parameters: learner/vector_store.py INDEX_PARAMS


@dataclass(frozen=True)
class MilvusConfig:
    uri: str = "http://127.0.0.1:19530"  # Milvus (or Milvus Lite server) URI
    collection_prefix: str = "xdm"  # collections are <prefix>_<arm>_v<version>
    index_type: str = "FLAT"  # one of INDEX_TYPES: FLAT is exact; HNSW / IVF_FLAT for large catalogues
    search_ef: int = 256  # HNSW: candidates a search examines (at least k); recall vs latency: bench/serving_latency.py
    search_nprobe: int = 64  # IVF_FLAT: of its 1024 lists, those a search scans
    lite_data: str = "var/milvus.db"  # Milvus Lite data file when the stack starts one
    # Client keepalive ping interval (s); 0 sends none. pymilvus pings every 10 s, idle or not, which Milvus
    # accepts; the Milvus Lite server allows one ping per 5 minutes and none on an idle connection, and
    # answers more with GOAWAY "too_many_pings" (seen in bench runs under load), dropping the connection
    # of every client in the process. The stack that starts Milvus Lite sets 0: on loopback a server that
    # dies resets the connection at once, so nothing needs the pings.
    keepalive_s: float = 10.0
    call_timeout_s: float = 120.0  # deadline of one Milvus call (s) in publishing and in reading a version's vectors
    token_file: str = ""  # file holding the Milvus token ("user:password" or an API key); "" = no login
    tls_ca: str = ""  # PEM CA that signed the Milvus server's certificate; set, clients speak TLS ("" = plaintext)

    def __post_init__(self) -> None:
        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {', '.join(INDEX_TYPES)}, got {self.index_type!r}")


@dataclass(frozen=True)
class ServingConfig:
    host: str = "127.0.0.1"  # bind address; loopback unless deliberately exposed
    port: int = 50051  # gRPC port
    max_k: int = 500  # largest k a request may ask for
    arms: str = "xdm:100"  # arm:share,... sticky assignment by user hash
    search_timeout_s: float = 2.0  # vector search deadline before UNAVAILABLE
    compute_timeout_s: float = 5.0  # a compute child silent this long (s) on a batch is killed and replaced (batch UNAVAILABLE)
    compute_load_timeout_s: float = 300.0  # ... or this long (s) while it loads a version (IVF k-means at 2 M items: minutes)
    metrics_port: int = 0  # Prometheus metrics port (0 = disabled)
    batch_max: int = 32  # most concurrent requests answered by one tower call and one search
    local_index_max_items: int = 2_000_000  # up to this many items a version's vectors are searched in memory
    local_index: str = "auto"  # in-memory search: "exact" (full scan), "ivf" (k-means lists), "auto" (ivf if it
    #                            finds ivf_min_recall of the full scan's answers, else the scan: serving/search.py)
    local_index_scan: str = "auto"  # full-scan precision: float32, bfloat16 (then float32 re-score), auto (faster here)
    ivf_nlist: int = 1024  # ivf: k-means lists per version (fewer when a list would hold < 39 items)
    ivf_nprobe: int = 16  # ivf: lists scanned per query, then re-scored exactly; recall: bench/serving_latency.py
    ivf_min_items: int = 50_000  # ivf: smaller catalogues are searched exactly (a full scan is already cheap)
    ivf_min_recall: float = 0.99  # auto: share of the full scan's top 50 the IVF index must find on probe queries
    batch_runners: int = 1  # batches in flight at once, each on its own compute thread; at most one per core
    compute: str = "process"  # where user towers and in-memory search run: "process" (a child with its own
    #                           GIL, serving/compute_process.py) or "thread" (in the server, sharing its GIL)
    trace_tower: bool = True  # serve each version's user tower traced and frozen (serving/compiled_tower.py)
    item_encodings_max: int = 200_000  # item keys whose q_i a served version keeps (serving/item_encodings.py;
    #                                    51 MB at Le 64); a full table starts over
    gc_freeze: bool = True  # freeze the start-up heap out of garbage collection (full collections took 120-230 ms)
    max_pending_calls: int = 20_000  # calls queued before the server takes them; gRPC cancels the overflow
    switch_interval_ms: float = 5.0  # Python's GIL switch interval in the server; 1 ms measured no better (bench)
    popular_half_life_ms: int = 86_400_000  # decay of click counts behind cold-start answers (event time)
    task_unhealthy_after_s: float = 30.0  # a background task failing this long (s) turns health NOT_SERVING (xdm/supervision.py)
    tls_cert: str = ""  # PEM certificate file; with tls_key, the server speaks TLS only
    tls_key: str = ""  # PEM private key file
    tls_ca: str = ""  # PEM CA bundle clients (xdm recall, replay) trust for the server; set, they speak TLS
    auth_token_file: str = ""  # file holding the bearer token: the server asks every call but health for it
    #                            (UNAUTHENTICATED without), clients send it; needs TLS (serving/auth.py)
    reflection: bool = False  # serve gRPC reflection (grpcurl without .proto files); the local and test profiles turn it on
    max_request_bytes: int = 65_536  # largest request message; a Recall request is < 1 KB, bigger ones end RESOURCE_EXHAUSTED
    health_port: int = 0  # plaintext port serving only grpc.health.v1 (the kubelet's gRPC probes cannot speak TLS); 0 = none
    grace_s: float = 5.0  # on SIGTERM, in-flight requests get this long to finish
    # Sharded windows replica (xdm/shards.py): user -> changelog partition (Kafka's murmur2) -> shard.
    shards: int = 1  # servers split the users into this many shards; partition p belongs to shard p mod shards
    shard: int = 0  # this server's shard, 0..shards-1: it mirrors and answers only its partitions' users
    shard_partitions: str = ""  # explicit layout instead of the rule, "0,2;1,3" = shard 0 holds 0 and 2, shard 1 holds 1 and 3
    # Where clients find each shard: gRPC targets separated by ';' (replicas of one shard in one target, e.g.
    # "ipv4:h1:50051,h2:50051"), or one target with {shard} in it ("dns:///xdm-recall-{shard}-headless:50051");
    # "" with one shard: the address a client is given, else serving.host:port
    shard_targets: str = ""


@dataclass(frozen=True)
class SimConfig:
    users: int = 300  # simulated users for `xdm up`
    items: int = 2000  # simulated catalogue size for `xdm up`
    days: int = 10  # simulated days for `xdm up`
    seed: int = 1  # simulator seed
    speed: float = 0.0  # replay speed vs real time; 0 = as fast as the system accepts


@dataclass(frozen=True)
class Config:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    windows: WindowRules = field(default_factory=WindowRules)
    samples: SampleRules = field(default_factory=SampleRules)
    model: ModelConfig = field(default_factory=ModelConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    milvus: MilvusConfig = field(default_factory=MilvusConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    sim: SimConfig = field(default_factory=SimConfig)


PROFILES: dict[str, dict[str, Any]] = {
    # One machine: embedded tansu broker and Milvus Lite; ports are filled in by infra.stack.
    "local": {"serving.reflection": True},
    # Tests: small batches, frequent checkpoints and publishes so loops close in seconds.
    "test": {
        "kafka.partitions": 2,
        "learner.batch_size": 32,
        "learner.max_wait_ms": 500,
        "learner.checkpoint_every_steps": 5,
        "learner.publish_every_steps": 5,
        "learner.publish_every_s": 2.0,
        "model.embed_dim": 16,
        "model.n_negatives": 100,
        "sim.users": 60,
        "sim.items": 300,
        "sim.days": 6,
        "serving.reflection": True,
    },
    # A real Kafka cluster and Milvus: set the URLs through env or --set.
    "cluster": {
        "kafka.partitions": 24,
        "kafka.replication": 3,
        "kafka.session_timeout_ms": 45000,
        "kafka.heartbeat_ms": 3000,
        "kafka.rebalance_timeout_ms": 60000,
        "kafka.compaction": True,
        # IVF_FLAT, not HNSW: on a real Milvus 2.3.5, clustered 1 M x 64 vectors, HNSW (M 16) found 0.24 of
        # the exact top-50 and IVF_FLAT (nprobe 64) all of it (bench/results/serving_milvus/)
        "milvus.index_type": "IVF_FLAT",
    },
}

ENV_PREFIX = "XDM_"


def load_config(
    profile: str = "local",
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Resolve the configuration; see the module docstring for precedence."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    cfg = apply_overrides(Config(), PROFILES[profile])
    cfg = apply_overrides(cfg, _env_overrides(env or {}))
    return apply_overrides(cfg, overrides or {})


def apply_overrides(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    """Return cfg with `section.field` keys replaced; values may be strings (parsed to the field's type)."""
    by_section: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        by_section.setdefault(section, {})[name] = value
    for section, values in by_section.items():
        current = _section(cfg, section)
        fields = {f.name: f for f in dataclasses.fields(current)}
        parsed = {}
        for name, value in values.items():
            if name not in fields:
                raise ConfigError(f"unknown config key {section}.{name}; known: {', '.join(sorted(fields))}")
            parsed[name] = _coerce(f"{section}.{name}", value, type(getattr(current, name)))
        try:
            updated = dataclasses.replace(current, **parsed)
        except ValueError as exc:  # a section's own consistency check
            raise ConfigError(f"config section {section}: {exc}") from None
        cfg = dataclasses.replace(cfg, **{section: updated})
    return cfg


def parse_set_options(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Turn `section.field=value` strings into an overrides mapping."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set expects section.field=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def as_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(cfg)


def _section(cfg: Config, section: str) -> Any:
    names = [f.name for f in dataclasses.fields(cfg)]
    if section not in names:
        raise ConfigError(f"unknown config section {section!r}; known: {', '.join(names)}")
    return getattr(cfg, section)


def _env_overrides(env: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        section, _, name = key[len(ENV_PREFIX):].partition("__")
        out[f"{section.lower()}.{name.lower()}"] = value
    return out


KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")  # the ones Faust, aiokafka and kafka-python all take


def _check_kafka_security(k: KafkaConfig) -> None:
    """A setting the chosen protocol would ignore is refused: a login that silently never happens is a hole."""
    if k.security_protocol not in KAFKA_PROTOCOLS:
        raise ValueError(f"kafka.security_protocol is {k.security_protocol!r}; use one of {', '.join(KAFKA_PROTOCOLS)}")
    sasl, tls = k.security_protocol.startswith("SASL_"), k.security_protocol.endswith("SSL")
    if sasl and k.sasl_mechanism not in SASL_MECHANISMS:
        raise ValueError(f"kafka.sasl_mechanism is {k.sasl_mechanism!r}; use one of {', '.join(SASL_MECHANISMS)}")
    if sasl and not (k.sasl_username and k.sasl_password_file):
        raise ValueError(f"kafka.security_protocol {k.security_protocol} needs kafka.sasl_username and kafka.sasl_password_file")
    if not sasl and (k.sasl_username or k.sasl_password_file):
        raise ValueError(f"kafka.sasl_username / sasl_password_file are set but kafka.security_protocol is "
                         f"{k.security_protocol}; use SASL_SSL (or SASL_PLAINTEXT)")
    if not tls and (k.ssl_cafile or k.ssl_certfile or k.ssl_keyfile):
        raise ValueError(f"kafka.ssl_* files are set but kafka.security_protocol is {k.security_protocol}; use SSL or SASL_SSL")
    if bool(k.ssl_certfile) != bool(k.ssl_keyfile):
        raise ValueError("kafka.ssl_certfile and kafka.ssl_keyfile go together: set both (mutual TLS) or neither")


def parse_setting(text: str, kind: type) -> Any:
    """`text` read as a setting of type `kind` (int, float, bool, str), the one way config overrides, `xdm tune`
    values and `xdm simulate --world` read theirs; ValueError when it is not one."""
    if kind is bool:
        return _parse_bool(text)
    return kind(text)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(text)


def _coerce(key: str, value: Any, kind: type) -> Any:
    if not isinstance(value, str):
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, kind):
            return value
        raise ConfigError(f"{key} expects {kind.__name__}, got {value!r}")
    try:
        return parse_setting(value, kind)
    except ValueError:
        raise ConfigError(f"{key} expects {kind.__name__}, got {value!r}") from None
