"""The server's validated configuration: one field per etcd 3.4 server flag quorumkv implements.

Invariant: a :class:`ServerConfig` that exists has passed :meth:`ServerConfig.validate`; construction with a
bad value raises :class:`ConfigError` whose message names the etcd flag and says how to fix it.
Where to read values from (flags, ``ETCD_*``/``QUORUMKV_*`` environment, YAML) lives in
:mod:`quorumkv.server.config_sources`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from quorumkv.security.ciphers import CipherSuiteError, openssl_names
from quorumkv.server.durations import NS_PER_S, DurationError, parse_duration_ns

__all__ = [
    "AUTO_COMPACTION_MODES",
    "DEFAULT_QUOTA_BACKEND_BYTES",
    "DEFAULT_SNAPSHOT_CRON",
    "INITIAL_CLUSTER_STATES",
    "LOGGERS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_ELECTION_TIMEOUT_MS",
    "METRICS_LEVELS",
    "REFUSED_FIELDS",
    "ConfigError",
    "ServerConfig",
    "parse_initial_cluster",
]

#: etcd's ``DefaultQuotaBytes``: what ``--quota-backend-bytes=0`` means (2 GiB).
DEFAULT_QUOTA_BACKEND_BYTES = 2 * 1024**3
#: K3s's default snapshot schedule: every 12 hours, on the hour.
DEFAULT_SNAPSHOT_CRON = "0 */12 * * *"
#: etcd 3.4 refuses election timeouts longer than this ("should be set less than 50000ms").
MAX_ELECTION_TIMEOUT_MS = 50_000

INITIAL_CLUSTER_STATES = ("new", "existing")
AUTO_COMPACTION_MODES = ("periodic", "revision")
LOG_LEVELS = ("debug", "info", "warn", "error", "panic", "fatal")
LOGGERS = ("zap", "capnslog")
LOG_FORMATS = ("json", "console")
METRICS_LEVELS = ("basic", "extensive")


#: Flags that are part of etcd 3.4's command line but not implemented by quorumkv: a non-default value is refused
#: at start-up with this line (the flag and what to do instead).
REFUSED_FIELDS: dict[str, str] = {
    "wal_dir": "--wal-dir is not supported by quorumkv: the raft log is kept in the SQLite database inside "
               "--data-dir, not in a separate WAL directory; remove --wal-dir and put --data-dir on the fast disk",
    "enable_pprof": "--enable-pprof is not supported by quorumkv (Go's pprof does not exist in Python); remove it "
                    "and profile the process with py-spy (py-spy top --pid <pid>) instead",
}


class ConfigError(ValueError):
    """A configuration value is unusable; ``flag`` is the etcd flag at fault (``"--heartbeat-interval"``)."""

    def __init__(self, message: str, *, flag: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.flag = flag

    def __str__(self) -> str:
        return self.message


def _default_client_urls() -> list[str]:
    return ["http://localhost:2379"]


def _default_peer_urls() -> list[str]:
    return ["http://localhost:2380"]


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Server configuration mirroring etcd 3.4's flags; defaults are etcd's unless documented otherwise.

    Invariants after construction: every field has its declared type; ``data_dir`` and ``initial_cluster``
    are never empty (derived from ``name`` as etcd does); list fields are private copies; all cross-field
    rules of :meth:`validate` hold.
    """

    # Member
    name: str = "default"
    #: ``""`` means ``f"{name}.quorumkv"`` (etcd uses ``<name>.etcd``).
    data_dir: str = ""
    wal_dir: str = ""
    snapshot_count: int = 100_000
    heartbeat_interval_ms: int = 100
    election_timeout_ms: int = 1000
    listen_peer_urls: list[str] = field(default_factory=_default_peer_urls)
    listen_client_urls: list[str] = field(default_factory=_default_client_urls)
    listen_client_http_urls: list[str] = field(default_factory=list)
    listen_metrics_urls: list[str] = field(default_factory=list)
    max_request_bytes: int = 1_572_864
    max_txn_ops: int = 128
    #: 0 means :data:`DEFAULT_QUOTA_BACKEND_BYTES`; see :attr:`effective_quota_backend_bytes`.
    quota_backend_bytes: int = 0

    # Clustering
    initial_advertise_peer_urls: list[str] = field(default_factory=_default_peer_urls)
    advertise_client_urls: list[str] = field(default_factory=_default_client_urls)
    #: ``""`` means ``name=<url>`` for each of ``initial_advertise_peer_urls``, as etcd derives it.
    initial_cluster: str = ""
    initial_cluster_state: str = "new"
    initial_cluster_token: str = "etcd-cluster"
    strict_reconfig_check: bool = True
    #: etcd 3.4 defaults ``--pre-vote`` to false; quorumkv defaults it to true (the flag still works).
    pre_vote: bool = True
    auto_compaction_mode: str = "periodic"
    auto_compaction_retention: str = "0"
    force_new_cluster: bool = False
    #: K3s's --cluster-reset and --cluster-reset-restore-path (server/reset.py).
    cluster_reset: bool = False
    cluster_reset_restore_path: str = ""

    # Auth
    auth_token: str = "simple"
    bcrypt_cost: int = 10
    auth_token_ttl: int = 300

    # Security
    cert_file: str = ""
    key_file: str = ""
    client_cert_auth: bool = False
    trusted_ca_file: str = ""
    auto_tls: bool = False
    peer_cert_file: str = ""
    peer_key_file: str = ""
    peer_client_cert_auth: bool = False
    peer_trusted_ca_file: str = ""
    peer_auto_tls: bool = False
    cipher_suites: list[str] = field(default_factory=list)
    peer_cert_allowed_cn: str = ""
    client_crl_file: str = ""
    peer_crl_file: str = ""

    # Profiling, monitoring and logging
    enable_pprof: bool = False
    metrics: str = "basic"
    #: etcd 3.4 defaults ``--logger`` to ``capnslog`` (deprecated); quorumkv's structured logger is ``zap``.
    logger: str = "zap"
    log_outputs: list[str] = field(default_factory=lambda: ["default"])
    log_level: str = "info"
    #: Not an etcd 3.4 flag (etcd 3.5 added ``--log-format``).
    log_format: str = "json"

    # Experimental
    #: ``--experimental-watch-progress-notify-interval`` (a Go duration such as ``10m``) in milliseconds.
    watch_progress_notify_interval_ms: int = 600_000
    #: ``--experimental-enable-lease-checkpoint``: the leader checkpoints remaining lease TTLs through the log.
    experimental_enable_lease_checkpoint: bool = False
    #: ``--experimental-lease-checkpoint-interval`` in milliseconds (etcd 3.4's fixed 5m by default).
    lease_checkpoint_interval_ms: int = 300_000

    # Snapshots and S3 (K3s's flags; quorumkv.backup)
    #: five cron fields (croniter); a sixth field is seconds (docs/operations.md: the test hook).
    etcd_snapshot_schedule_cron: str = DEFAULT_SNAPSHOT_CRON
    etcd_snapshot_retention: int = 5
    #: ``""`` means ``<data-dir>/snapshots``.
    etcd_snapshot_dir: str = ""
    etcd_snapshot_compress: bool = False
    etcd_disable_snapshots: bool = False
    etcd_snapshot_name: str = "etcd-snapshot"
    etcd_s3: bool = False
    etcd_s3_endpoint: str = "s3.amazonaws.com"
    etcd_s3_bucket: str = ""
    etcd_s3_folder: str = ""
    etcd_s3_access_key: str = ""
    etcd_s3_secret_key: str = ""
    etcd_s3_region: str = "us-east-1"
    etcd_s3_insecure: bool = False
    #: ``--etcd-s3-timeout`` (a Go duration, default ``5m``) in milliseconds.
    etcd_s3_timeout_ms: int = 300_000
    etcd_s3_retention: int = 5

    # Managed (K3s-style) cluster lifecycle (server/join.py, docs/ha.md)
    #: generate the cluster CA, this member's certificates and a join token (first server, or a single member
    #: becoming the first server of a cluster)
    cluster_init: bool = False
    #: ``https://host:port``: join the cluster through this member's client URL (any live member)
    server: str = ""
    token: str = ""
    token_file: str = ""
    #: extra names and addresses for the generated server and peer certificates
    tls_san: list[str] = field(default_factory=list)
    #: a learner that has not caught up this long after joining is removed (stall eviction)
    learner_stall_timeout_ms: int = 600_000

    def __post_init__(self) -> None:
        hints = _field_types()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = hints[f.name]
            flag = flag_for_field(f.name)
            if expected == "list[str]":
                if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                    raise ConfigError(f"{flag} must be a list of strings, got {value!r}", flag=flag)
                object.__setattr__(self, f.name, list(value))
            elif expected == "int":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConfigError(f"{flag} must be an integer, got {value!r}", flag=flag)
            elif expected == "bool":
                if not isinstance(value, bool):
                    raise ConfigError(f"{flag} must be true or false, got {value!r}", flag=flag)
            elif not isinstance(value, str):
                raise ConfigError(f"{flag} must be a string, got {value!r}", flag=flag)
        if self.data_dir == "":
            object.__setattr__(self, "data_dir", f"{self.name}.quorumkv")
        if self.initial_cluster == "":
            derived = ",".join(f"{self.name}={url}" for url in self.initial_advertise_peer_urls)
            object.__setattr__(self, "initial_cluster", derived)
        if self.etcd_snapshot_dir == "":
            object.__setattr__(self, "etcd_snapshot_dir", f"{self.data_dir}/snapshots")
        self.validate()

    @property
    def effective_quota_backend_bytes(self) -> int:
        """The backend quota in bytes: ``quota_backend_bytes``, or 2 GiB when that is 0 (etcd's rule)."""
        return self.quota_backend_bytes or DEFAULT_QUOTA_BACKEND_BYTES

    def initial_cluster_members(self) -> dict[str, list[str]]:
        """``initial_cluster`` as ``{member name: [peer url, ...]}`` in the order given."""
        return parse_initial_cluster(self.initial_cluster)

    def auto_compaction_retention_parsed(self) -> int:
        """Retention as whole seconds (``periodic`` mode) or a revision count (``revision`` mode); 0 = off.

        Periodic: a Go duration (``1h``, ``30m``, ``1h30m``) or a bare non-negative integer meaning hours.
        Revision: a non-negative integer.
        """
        flag = "--auto-compaction-retention"
        text = self.auto_compaction_retention.strip()
        if self.auto_compaction_mode == "revision":
            if not text.isdigit() or not text.isascii():
                raise ConfigError(
                    f"{flag}={self.auto_compaction_retention!r} is not a revision count: with "
                    "--auto-compaction-mode=revision it must be a non-negative integer such as 1000",
                    flag=flag,
                )
            return int(text)
        if text.isascii() and text.isdigit():
            return int(text) * 3600
        try:
            ns = parse_duration_ns(text)
        except DurationError as exc:
            raise ConfigError(
                f"{flag}={self.auto_compaction_retention!r} is not a duration ({exc}); with "
                "--auto-compaction-mode=periodic use a Go duration such as 30m or 1h30m, "
                "or a whole number of hours such as 1",
                flag=flag,
            ) from None
        if ns < 0 or 0 < ns < NS_PER_S:
            raise ConfigError(
                f"{flag}={self.auto_compaction_retention!r} must be 0 (disabled) or at least 1s",
                flag=flag,
            )
        return ns // NS_PER_S

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the flag if any value or cross-field rule is violated."""
        self._validate_member()
        self._validate_urls()
        self._validate_cluster()
        self._validate_tls()
        self._validate_choices()
        self._validate_snapshots()
        self._validate_managed()
        self.auto_compaction_retention_parsed()
        if self.cluster_reset_restore_path and not self.cluster_reset:  # cluster reset (server/reset.py)
            raise ConfigError("--cluster-reset-restore-path needs --cluster-reset: add --cluster-reset to restore "
                              "the snapshot as a new one-member cluster", flag="--cluster-reset-restore-path")

    def _validate_managed(self) -> None:
        if self.cluster_init and self.server:
            raise ConfigError("--cluster-init and --server cannot be used together: the first server takes "
                              "--cluster-init, the others --server https://<any member>:<client port> --token ...",
                              flag="--server")
        if self.token and self.token_file:
            raise ConfigError("give either --token (or QUORUMKV_TOKEN) or --token-file, not both",
                              flag="--token-file")
        if self.server:
            try:
                parts = urllib.parse.urlsplit(self.server)
                port = parts.port
            except ValueError:
                port = None
                parts = urllib.parse.urlsplit("")
            if parts.scheme != "https" or not parts.hostname or port is None or parts.path not in ("", "/"):
                raise ConfigError(f"--server={self.server!r} must be a member's client URL https://host:port "
                                  "(a managed cluster serves its client URLs over TLS)", flag="--server")
            if not (self.token or self.token_file):
                raise ConfigError("--server needs the cluster's token: --token, QUORUMKV_TOKEN or --token-file "
                                  "(printed by the first server; 'quorumkv token show --data-dir ...')",
                                  flag="--token")
        for san in self.tls_san:
            if not san or (any(c.isspace() or c in "/:," for c in san.strip("[]")) and not _is_ip(san)):
                raise ConfigError(f"--tls-san {san!r} must be a DNS name or an IP address", flag="--tls-san")
        if self.learner_stall_timeout_ms <= 0:
            raise ConfigError("--learner-stall-timeout must be > 0, e.g. 10m", flag="--learner-stall-timeout")

    def _validate_snapshots(self) -> None:
        from croniter import croniter

        if not croniter.is_valid(self.etcd_snapshot_schedule_cron):
            raise ConfigError(
                f"--etcd-snapshot-schedule-cron={self.etcd_snapshot_schedule_cron!r} is not a cron spec; use five "
                "fields such as '0 */12 * * *' (minute hour day-of-month month day-of-week)",
                flag="--etcd-snapshot-schedule-cron",
            )
        for fname in ("etcd_snapshot_retention", "etcd_s3_retention", "etcd_s3_timeout_ms"):
            if getattr(self, fname) < 1:
                flag = flag_for_field(fname)
                raise ConfigError(f"{flag} must be at least 1 (set to {getattr(self, fname)}); "
                                  f"e.g. {flag}={'5m' if fname.endswith('_ms') else 5}", flag=flag)
        name = self.etcd_snapshot_name
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"--etcd-snapshot-name={name!r} must be a plain file name prefix such as "
                              "etcd-snapshot (no '/', not starting with '.')", flag="--etcd-snapshot-name")
        if self.etcd_s3 and not self.etcd_s3_bucket:
            raise ConfigError("--etcd-s3 needs --etcd-s3-bucket: name the bucket snapshots are uploaded to",
                              flag="--etcd-s3-bucket")

    def _validate_member(self) -> None:
        for fname, refusal in REFUSED_FIELDS.items():
            if getattr(self, fname):
                raise ConfigError(refusal, flag=flag_for_field(fname))
        if self.name == "":
            raise ConfigError(
                "--name must not be empty; pass a member name such as --name=infra0", flag="--name"
            )
        for fname, unit, example in (
            ("snapshot_count", "", "100000"),
            ("max_request_bytes", "bytes", "1572864"),
            ("max_txn_ops", "", "128"),
            ("heartbeat_interval_ms", "ms", "100"),
            ("election_timeout_ms", "ms", "1000"),
            ("watch_progress_notify_interval_ms", "ms", "10m"),
            ("lease_checkpoint_interval_ms", "ms", "5m"),
        ):
            value = getattr(self, fname)
            if value <= 0:
                flag = flag_for_field(fname)
                raise ConfigError(
                    f"{flag} must be > 0 (set to {value}{unit}); use e.g. {flag}={example}", flag=flag
                )
        if self.quota_backend_bytes < 0:
            raise ConfigError(
                f"--quota-backend-bytes must be >= 0 (set to {self.quota_backend_bytes}); "
                "use 0 for the 2 GiB default or a positive byte count",
                flag="--quota-backend-bytes",
            )
        if not 4 <= self.bcrypt_cost <= 31:  # bcrypt's MinCost and MaxCost, as etcd checks
            raise ConfigError(f"--bcrypt-cost must be between 4 and 31 (set to {self.bcrypt_cost})",
                              flag="--bcrypt-cost")
        if self.auth_token_ttl <= 0:
            raise ConfigError(f"--auth-token-ttl must be > 0 seconds (set to {self.auth_token_ttl})",
                              flag="--auth-token-ttl")
        from quorumkv.server.auth_tokens import TokenError, make_provider

        try:  # the syntax; the member reads the key files when it starts, before anything listens
            make_provider(self.auth_token, self.auth_token_ttl, load_keys=False)
        except TokenError as exc:
            raise ConfigError(str(exc), flag="--auth-token") from None
        hb, et = self.heartbeat_interval_ms, self.election_timeout_ms
        if et < 5 * hb:
            raise ConfigError(
                f"--election-timeout[{et}ms] should be at least 5 times --heartbeat-interval[{hb}ms]; "
                f"raise --election-timeout to at least {5 * hb} or lower --heartbeat-interval",
                flag="--election-timeout",
            )
        if et > MAX_ELECTION_TIMEOUT_MS:
            raise ConfigError(
                f"--election-timeout[{et}ms] is too long, and should be set less than "
                f"{MAX_ELECTION_TIMEOUT_MS}ms",
                flag="--election-timeout",
            )

    def _validate_urls(self) -> None:
        for fname, listen, required in (
            ("listen_peer_urls", True, True),
            ("listen_client_urls", True, True),
            ("listen_client_http_urls", True, False),
            ("listen_metrics_urls", True, False),
            ("initial_advertise_peer_urls", False, True),
            ("advertise_client_urls", False, True),
        ):
            flag = flag_for_field(fname)
            urls: list[str] = getattr(self, fname)
            if required and not urls:
                raise ConfigError(
                    f"{flag} must list at least one URL, e.g. {flag}={_default_example(fname)}", flag=flag
                )
            for url in urls:
                check_url(url, flag, listen=listen)

    def _validate_cluster(self) -> None:
        if self.initial_cluster_state not in INITIAL_CLUSTER_STATES:
            raise ConfigError(
                f'invalid value "{self.initial_cluster_state}" for --initial-cluster-state: '
                'valid values are "new", "existing"',
                flag="--initial-cluster-state",
            )
        members = self.initial_cluster_members()
        if self.name not in members:
            raise ConfigError(
                f'couldn\'t find local name "{self.name}" in the initial cluster configuration: '
                f"--initial-cluster={self.initial_cluster} must contain an entry {self.name}=<peer url>",
                flag="--initial-cluster",
            )
        seen: dict[str, str] = {}
        for member, urls in members.items():
            for url in urls:
                if url in seen and seen[url] != member:
                    raise ConfigError(
                        f"--initial-cluster has duplicate url {url} (members {seen[url]} and {member})",
                        flag="--initial-cluster",
                    )
                seen[url] = member
        mine, advertised = members[self.name], self.initial_advertise_peer_urls
        if self.initial_cluster_state == "new" and sorted(mine) != sorted(advertised):
            raise ConfigError(
                f"--initial-cluster has {self.name}={','.join(mine)} but missing from "
                f"--initial-advertise-peer-urls={','.join(advertised)}; the URLs given for this member "
                "in --initial-cluster must equal --initial-advertise-peer-urls",
                flag="--initial-cluster",
            )

    def _validate_tls(self) -> None:
        for prefix, urls_fields, scope in (
            ("", ("listen_client_urls", "listen_client_http_urls", "advertise_client_urls"), "client"),
            ("peer_", ("listen_peer_urls", "initial_advertise_peer_urls"), "peer"),
        ):
            cert, key = getattr(self, prefix + "cert_file"), getattr(self, prefix + "key_file")
            cert_flag, key_flag = flag_for_field(prefix + "cert_file"), flag_for_field(prefix + "key_file")
            if bool(cert) != bool(key):
                missing = key_flag if cert else cert_flag
                raise ConfigError(
                    f"{cert_flag} and {key_flag} must be given together; {missing} is missing", flag=missing
                )
            has_tls = bool(cert) or getattr(self, prefix + "auto_tls")
            if has_tls:
                continue
            for fname in urls_fields:
                if fname.startswith("advertise"):
                    continue  # etcd only checks the URLs it binds
                for url in getattr(self, fname):
                    if url.lower().startswith("https://"):
                        raise ConfigError(
                            f"TLS key/cert ({cert_flag}, {key_flag}) must be provided for {scope} url {url} "
                            f"in {flag_for_field(fname)} "
                            f"with HTTPS scheme (or set {flag_for_field(prefix + 'auto_tls')})",
                            flag=flag_for_field(fname),
                        )
        for suite in self.cipher_suites:
            if not suite.strip():
                raise ConfigError("--cipher-suites must not contain empty names", flag="--cipher-suites")
        if self.cipher_suites:
            try:
                openssl_names(self.cipher_suites)
            except CipherSuiteError as exc:
                raise ConfigError(str(exc), flag="--cipher-suites") from None
        for fname, needs in (("client_crl_file", "cert_file"), ("peer_crl_file", "peer_cert_file"),
                             ("peer_cert_allowed_cn", "peer_cert_file")):
            if getattr(self, fname) and not (getattr(self, needs) or getattr(self, needs.replace("cert_file",
                                                                                               "auto_tls"))):
                raise ConfigError(f"{flag_for_field(fname)} needs TLS: set {flag_for_field(needs)} and "
                                  f"{flag_for_field(needs.replace('cert', 'key'))}", flag=flag_for_field(fname))

    def _validate_choices(self) -> None:
        for fname, allowed in (
            ("auto_compaction_mode", AUTO_COMPACTION_MODES),
            ("log_level", LOG_LEVELS),
            ("logger", LOGGERS),
            ("log_format", LOG_FORMATS),
            ("metrics", METRICS_LEVELS),
        ):
            value = getattr(self, fname)
            if value not in allowed:
                flag = flag_for_field(fname)
                raise ConfigError(
                    f'unknown {flag[2:]} "{value}"; {flag} must be one of: {", ".join(allowed)}', flag=flag
                )
        if not self.log_outputs or any(not o for o in self.log_outputs):
            raise ConfigError(
                "--log-outputs must list at least one output (default, stdout, stderr or a file path)",
                flag="--log-outputs",
            )
        if self.logger == "capnslog":  # etcd 3.4's rules for its deprecated logger
            if len(self.log_outputs) != 1:
                raise ConfigError(f"--logger=capnslog supports only 1 value in '--log-outputs', got "
                                  f"{self.log_outputs}", flag="--log-outputs")
            if self.log_outputs[0] not in ("default", "stderr", "stdout"):
                raise ConfigError(f'unknown log-output "{self.log_outputs[0]}" (only supports "default", '
                                  '"stderr", "stdout" with --logger=capnslog; use --logger=zap to log to a file)',
                                  flag="--log-outputs")


_FIELD_TYPES: dict[str, str] = {}


def _field_types() -> dict[str, str]:
    """Field name -> annotation text (``"int"``, ``"list[str]"``...), computed once."""
    if not _FIELD_TYPES:
        _FIELD_TYPES.update({f.name: str(f.type) for f in dataclasses.fields(ServerConfig)})
    return _FIELD_TYPES


_FLAG_EXCEPTIONS = {
    "heartbeat_interval_ms": "--heartbeat-interval",
    "election_timeout_ms": "--election-timeout",
    "watch_progress_notify_interval_ms": "--experimental-watch-progress-notify-interval",
    "etcd_s3_timeout_ms": "--etcd-s3-timeout",
    "lease_checkpoint_interval_ms": "--experimental-lease-checkpoint-interval",
    "learner_stall_timeout_ms": "--learner-stall-timeout",
}


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def flag_for_field(field_name: str) -> str:
    """The etcd flag for a field: ``heartbeat_interval_ms`` -> ``--heartbeat-interval``."""
    return _FLAG_EXCEPTIONS.get(field_name, "--" + field_name.replace("_", "-"))


def _default_example(field_name: str) -> str:
    return "http://localhost:2380" if "peer" in field_name else "http://localhost:2379"


def check_url(url: str, flag: str, *, listen: bool) -> None:
    """Raise :class:`ConfigError` unless ``url`` is ``http(s)://host:port`` with no path.

    Listen URLs must name an IP address or ``localhost`` (etcd: "expected IP in URL for binding") and may
    use port 0; advertised URLs need a port in 1..65535.
    """
    example = "http://127.0.0.1:2379"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{flag}: invalid URL {url!r} ({exc}); use the form {example}", flag=flag) from None
    if parts.scheme in ("unix", "unixs"):
        raise ConfigError(
            f"{flag}: unix socket URL {url!r} is not supported by quorumkv; use http://host:port or "
            "https://host:port",
            flag=flag,
        )
    if parts.scheme not in ("http", "https"):
        raise ConfigError(
            f"{flag}: URL {url!r} must start with http:// or https:// (for example {example})", flag=flag
        )
    if parts.path or parts.query or parts.fragment:
        raise ConfigError(f"{flag}: URL {url!r} must not contain a path; use the form {example}", flag=flag)
    if parts.username is not None or not parts.hostname or port is None:
        raise ConfigError(f'{flag}: URL {url!r} does not have the form "scheme://host:port"', flag=flag)
    if not listen and port == 0:
        raise ConfigError(f"{flag}: URL {url!r} must advertise a port in 1..65535", flag=flag)
    if listen and parts.hostname != "localhost":
        try:
            ipaddress.ip_address(parts.hostname)
        except ValueError:
            raise ConfigError(
                f"{flag}: expected IP in URL for binding ({url}); use an IP address or localhost, "
                "e.g. http://0.0.0.0:2379",
                flag=flag,
            ) from None


def parse_initial_cluster(text: str, flag: str = "--initial-cluster") -> dict[str, list[str]]:
    """Parse ``name=url,name=url2,...`` into ``{name: [url, ...]}``; a name may repeat to add URLs."""
    members: dict[str, list[str]] = {}
    for entry in text.split(","):
        entry = entry.strip()
        name, sep, url = entry.partition("=")
        if not sep or not name or not url:
            raise ConfigError(
                f"{flag}: entry {entry!r} is not of the form name=url; use e.g. "
                f"{flag}=infra0=http://10.0.1.10:2380,infra1=http://10.0.1.11:2380",
                flag=flag,
            )
        check_url(url, flag, listen=False)
        members.setdefault(name, []).append(url)
    return members


def config_fields() -> dict[str, Any]:
    """Field name -> default value as written in the dataclass (``""`` for derived fields)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(ServerConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out
