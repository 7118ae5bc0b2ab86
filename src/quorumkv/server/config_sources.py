"""Where a :class:`~quorumkv.server.config.ServerConfig` comes from, with etcd 3.4's precedence rules.

Without a config file: command-line flag > ``QUORUMKV_<FLAG>`` > ``ETCD_<FLAG>`` > default, where
``<FLAG>`` is the flag upper-cased with ``-`` -> ``_`` (``--listen-client-urls`` <->
``ETCD_LISTEN_CLIENT_URLS``).
With ``--config-file`` (or ``ETCD_CONFIG_FILE``/``QUORUMKV_CONFIG_FILE``) the YAML file is the only source and
every other flag and environment variable is ignored, with a warning, as in etcd 3.4.

Every error is a :class:`ConfigError` whose message names the flag, variable or YAML key at fault.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import yaml

from quorumkv.server.config import ConfigError, ServerConfig
from quorumkv.server.durations import NS_PER_MS, DurationError, parse_duration_ns

__all__ = [
    "COMPAT_FLAGS",
    "ENV_PREFIXES",
    "FLAG_SPECS",
    "CompatFlag",
    "FlagSpec",
    "LoadedConfig",
    "env_names",
    "load_config",
    "load_config_file",
    "parse_go_bool",
]

Kind = Literal["str", "int", "bool", "list", "duration_ms"]

#: Checked in this order: a ``QUORUMKV_`` variable shadows the ``ETCD_`` one with the same suffix.
ENV_PREFIXES = ("QUORUMKV_", "ETCD_")


@dataclass(frozen=True)
class FlagSpec:
    """One etcd flag quorumkv implements: its ``ServerConfig`` field, value kind and YAML placement.

    ``yaml_section`` is ``client-transport-security``/``peer-transport-security`` for TLS flags (whose YAML
    key is then ``yaml_key`` inside that mapping); otherwise the YAML key is the flag name.
    """

    flag: str
    field: str
    kind: Kind
    help: str
    default_text: str
    yaml_section: str | None = None
    yaml_key: str | None = None

    @property
    def option(self) -> str:
        """The flag as typed: ``--name``."""
        return "--" + self.flag

    @property
    def yaml_path(self) -> str:
        """Where the value lives in a config file: ``name`` or ``client-transport-security.cert-file``."""
        if self.yaml_section:
            return f"{self.yaml_section}.{self.yaml_key}"
        return self.flag


def _s(flag: str, field_: str, kind: Kind, default_text: str, help_: str) -> FlagSpec:
    return FlagSpec(flag, field_, kind, help_, default_text)


def _tls(flag: str, field_: str, kind: Kind, default_text: str, help_: str) -> FlagSpec:
    peer = flag.startswith("peer-")
    section = "peer-transport-security" if peer else "client-transport-security"
    key = flag.removeprefix("peer-")
    return FlagSpec(flag, field_, kind, help_, default_text, yaml_section=section, yaml_key=key)


#: Every flag backed by a ``ServerConfig`` field, in ``etcd --help`` order.
FLAG_SPECS: tuple[FlagSpec, ...] = (
    _s("name", "name", "str", "default", "Human-readable name for this member."),
    _s("data-dir", "data_dir", "str", "${name}.quorumkv", "Path to the data directory."),
    _s("wal-dir", "wal_dir", "str", "", "Path to the dedicated wal directory."),
    _s(
        "snapshot-count",
        "snapshot_count",
        "int",
        "100000",
        "Number of committed transactions to trigger a snapshot to disk.",
    ),
    _s(
        "heartbeat-interval",
        "heartbeat_interval_ms",
        "int",
        "100",
        "Time (in milliseconds) of a heartbeat interval.",
    ),
    _s(
        "election-timeout",
        "election_timeout_ms",
        "int",
        "1000",
        "Time (in milliseconds) for an election to timeout.",
    ),
    _s(
        "listen-peer-urls",
        "listen_peer_urls",
        "list",
        "http://localhost:2380",
        "List of URLs to listen on for peer traffic.",
    ),
    _s(
        "listen-client-urls",
        "listen_client_urls",
        "list",
        "http://localhost:2379",
        "List of URLs to listen on for client traffic.",
    ),
    _s(
        "listen-client-http-urls",
        "listen_client_http_urls",
        "list",
        "",
        "List of URLs to listen on for http only client traffic (etcd 3.5 flag).",
    ),
    _s(
        "listen-metrics-urls",
        "listen_metrics_urls",
        "list",
        "",
        "List of URLs to listen on for the metrics and health endpoints.",
    ),
    _s(
        "quota-backend-bytes",
        "quota_backend_bytes",
        "int",
        "0",
        "Raise alarms when backend size exceeds the given quota (0 defaults to 2 GiB).",
    ),
    _s(
        "max-txn-ops", "max_txn_ops", "int", "128", "Maximum number of operations permitted in a transaction."
    ),
    _s(
        "max-request-bytes",
        "max_request_bytes",
        "int",
        "1572864",
        "Maximum client request size in bytes the server will accept.",
    ),
    _s(
        "initial-advertise-peer-urls",
        "initial_advertise_peer_urls",
        "list",
        "http://localhost:2380",
        "List of this member's peer URLs to advertise to the rest of the cluster.",
    ),
    _s(
        "initial-cluster",
        "initial_cluster",
        "str",
        "${name}=http://localhost:2380",
        "Initial cluster configuration for bootstrapping.",
    ),
    _s(
        "initial-cluster-state",
        "initial_cluster_state",
        "str",
        "new",
        "Initial cluster state ('new' or 'existing').",
    ),
    _s(
        "initial-cluster-token",
        "initial_cluster_token",
        "str",
        "etcd-cluster",
        "Initial cluster token for the etcd cluster during bootstrap.",
    ),
    _s(
        "advertise-client-urls",
        "advertise_client_urls",
        "list",
        "http://localhost:2379",
        "List of this member's client URLs to advertise to the public.",
    ),
    _s(
        "strict-reconfig-check",
        "strict_reconfig_check",
        "bool",
        "true",
        "Reject reconfiguration requests that would cause quorum loss.",
    ),
    _s(
        "pre-vote",
        "pre_vote",
        "bool",
        "true",
        "Enable to run an additional Raft election phase (etcd 3.4 defaults to false).",
    ),
    _s(
        "auto-compaction-retention",
        "auto_compaction_retention",
        "str",
        "0",
        "Auto compaction retention length. 0 means disable auto compaction.",
    ),
    _s(
        "auto-compaction-mode",
        "auto_compaction_mode",
        "str",
        "periodic",
        "Interpret 'auto-compaction-retention' one of: periodic|revision.",
    ),
    _s(
        "auth-token",
        "auth_token",
        "str",
        "simple",
        "Specify auth token specific options ('simple' or 'jwt,pub-key=...,priv-key=...,sign-method=...,ttl=...').",
    ),
    _s("bcrypt-cost", "bcrypt_cost", "int", "10", "Specify bcrypt algorithm cost factor for auth password hashing."),
    _s("auth-token-ttl", "auth_token_ttl", "int", "300", "The lifetime in seconds of the auth token."),
    _tls("cert-file", "cert_file", "str", "", "Path to the client server TLS cert file."),
    _tls("key-file", "key_file", "str", "", "Path to the client server TLS key file."),
    _tls("client-cert-auth", "client_cert_auth", "bool", "false", "Enable client cert authentication."),
    _tls(
        "trusted-ca-file", "trusted_ca_file", "str", "", "Path to the client server TLS trusted CA cert file."
    ),
    _tls("auto-tls", "auto_tls", "bool", "false", "Client TLS using generated certificates."),
    _tls("peer-cert-file", "peer_cert_file", "str", "", "Path to the peer server TLS cert file."),
    _tls("peer-key-file", "peer_key_file", "str", "", "Path to the peer server TLS key file."),
    _tls(
        "peer-client-cert-auth",
        "peer_client_cert_auth",
        "bool",
        "false",
        "Enable peer client cert authentication.",
    ),
    _tls(
        "peer-trusted-ca-file",
        "peer_trusted_ca_file",
        "str",
        "",
        "Path to the peer server TLS trusted CA file.",
    ),
    _tls("peer-auto-tls", "peer_auto_tls", "bool", "false", "Peer TLS using self-generated certificates."),
    _s("peer-cert-allowed-cn", "peer_cert_allowed_cn", "str", "", "Allowed CN for inter peer authentication."),
    _s("client-crl-file", "client_crl_file", "str", "", "Path to the client certificate revocation list file."),
    _s("peer-crl-file", "peer_crl_file", "str", "", "Path to the peer certificate revocation list file."),
    _s(
        "cipher-suites",
        "cipher_suites",
        "list",
        "",
        "Comma-separated list of supported TLS cipher suites between client/server and peers.",
    ),
    _s("enable-pprof", "enable_pprof", "bool", "false", "Enable runtime profiling data via HTTP server."),
    _s(
        "metrics",
        "metrics",
        "str",
        "basic",
        "Set level of detail for exported metrics, specify 'extensive' to include histogram metrics.",
    ),
    _s("logger", "logger", "str", "zap", "Specify 'zap' for structured logging or 'capnslog'."),
    _s(
        "log-outputs",
        "log_outputs",
        "list",
        "default",
        "Specify 'stdout' or 'stderr' to skip journald logging, or list of comma separated output targets.",
    ),
    _s(
        "log-level",
        "log_level",
        "str",
        "info",
        "Configures log level. Only supports debug, info, warn, error, panic, or fatal.",
    ),
    _s("log-format", "log_format", "str", "json", "Log format: 'json' or 'console' (etcd 3.5 flag)."),
    _s(
        "force-new-cluster", "force_new_cluster", "bool", "false", "Force to create a new one-member cluster."
    ),
    # -- cluster reset (K3s; server/reset.py) --
    _s(
        "cluster-reset",
        "cluster_reset",
        "bool",
        "false",
        "Forget all peers and become the sole member of a new cluster, data kept (once: leaves reset-flag).",
    ),
    _s(
        "cluster-reset-restore-path",
        "cluster_reset_restore_path",
        "str",
        "",
        "With --cluster-reset: restore this snapshot (file, .zip or s3://) into the data dir first.",
    ),
    # -- end cluster reset --
    _s(
        "experimental-watch-progress-notify-interval",
        "watch_progress_notify_interval_ms",
        "duration_ms",
        "10m",
        "Duration of periodical watch progress notification.",
    ),
    _s(
        "experimental-enable-lease-checkpoint",
        "experimental_enable_lease_checkpoint",
        "bool",
        "false",
        "Enable the leader to checkpoint remaining lease TTLs through the log, so a lease keeps its remaining TTL "
        "across a leader change or a restart.",
    ),
    _s(
        "experimental-lease-checkpoint-interval",
        "lease_checkpoint_interval_ms",
        "duration_ms",
        "5m",
        "How often the leader checkpoints a lease's remaining TTL (with --experimental-enable-lease-checkpoint; "
        "quorumkv flag, etcd 3.4 fixes it at 5m).",
    ),
    _s(
        "etcd-snapshot-schedule-cron",
        "etcd_snapshot_schedule_cron",
        "str",
        "0 */12 * * *",
        "Snapshot interval time in cron spec, e.g. every 5 hours '0 */5 * * *'.",
    ),
    _s("etcd-snapshot-retention", "etcd_snapshot_retention", "int", "5", "Number of snapshots to retain."),
    _s("etcd-snapshot-dir", "etcd_snapshot_dir", "str", "${data-dir}/snapshots", "Directory to save snapshots."),
    _s("etcd-snapshot-compress", "etcd_snapshot_compress", "bool", "false", "Compress snapshots (zip)."),
    _s("etcd-disable-snapshots", "etcd_disable_snapshots", "bool", "false", "Disable scheduled snapshots."),
    _s("etcd-snapshot-name", "etcd_snapshot_name", "str", "etcd-snapshot", "Base name of scheduled snapshots."),
    _s("etcd-s3", "etcd_s3", "bool", "false", "Upload snapshots to S3."),
    _s("etcd-s3-endpoint", "etcd_s3_endpoint", "str", "s3.amazonaws.com", "S3 endpoint url."),
    _s("etcd-s3-bucket", "etcd_s3_bucket", "str", "", "S3 bucket name."),
    _s("etcd-s3-folder", "etcd_s3_folder", "str", "", "S3 folder."),
    _s("etcd-s3-access-key", "etcd_s3_access_key", "str", "", "S3 access key."),
    _s("etcd-s3-secret-key", "etcd_s3_secret_key", "str", "", "S3 secret key."),
    _s("etcd-s3-region", "etcd_s3_region", "str", "us-east-1", "S3 region / bucket location."),
    _s("etcd-s3-insecure", "etcd_s3_insecure", "bool", "false", "Disables S3 over HTTPS."),
    _s("etcd-s3-timeout", "etcd_s3_timeout_ms", "duration_ms", "5m", "S3 timeout."),
    _s(
        "etcd-s3-retention",
        "etcd_s3_retention",
        "int",
        "5",
        "Number of snapshots to retain in S3 (separate from --etcd-snapshot-retention).",
    ),
    # managed (K3s-style) cluster lifecycle: docs/ha.md
    _s("cluster-init", "cluster_init", "bool", "false",
       "Initialize a managed cluster: generate its CA, this member's certificates and a join token."),
    _s("server", "server", "str", "", "Join the managed cluster through this member's client URL (https://...)."),
    _s("token", "token", "str", "", "The cluster's join token (K10<ca hash>::server:<secret>, or a bare secret)."),
    _s("token-file", "token_file", "str", "", "File holding the cluster's join token."),
    _s("tls-san", "tls_san", "list", "", "Extra names/IPs for the generated server and peer certificates."),
    _s("learner-stall-timeout", "learner_stall_timeout_ms", "duration_ms", "10m",
       "A joined learner that has not caught up within this long is removed from the cluster."),
)


@dataclass(frozen=True)
class CompatFlag:
    """An etcd 3.4 flag quorumkv recognises but does not implement.

    ``refuse``: any non-default value is a :class:`ConfigError` (ignoring it would change behaviour or weaken
    security). Otherwise a non-default value is accepted and reported as ignored in the warnings.
    """

    flag: str
    default_text: str
    refuse: bool = False
    is_bool: bool = False

    @property
    def option(self) -> str:
        return "--" + self.flag


def _c(flag: str, default_text: str, *, refuse: bool = False) -> CompatFlag:
    return CompatFlag(flag, default_text, refuse=refuse, is_bool=default_text in ("true", "false"))


COMPAT_FLAGS: tuple[CompatFlag, ...] = (
    _c("initial-election-tick-advance", "true"),
    _c("max-snapshots", "5"),
    _c("max-wals", "5"),
    _c("backend-batch-interval", ""),
    _c("backend-batch-limit", "0"),
    _c("max-concurrent-streams", ""),
    _c("grpc-keepalive-min-time", "5s"),
    _c("grpc-keepalive-interval", "2h"),
    _c("grpc-keepalive-timeout", "20s"),
    _c("discovery", "", refuse=True),
    _c("discovery-fallback", "proxy"),
    _c("discovery-proxy", "", refuse=True),
    _c("discovery-srv", "", refuse=True),
    _c("discovery-srv-name", "", refuse=True),
    _c("enable-v2", "false", refuse=True),
    _c("enable-grpc-gateway", "true"),
    _c("client-cert-allowed-hostname", "", refuse=True),
    _c("peer-cert-allowed-hostname", "", refuse=True),
    _c("cors", "*", refuse=True),
    _c("host-whitelist", "*", refuse=True),
    _c("proxy", "off", refuse=True),
    _c("proxy-failure-wait", "5000"),
    _c("proxy-refresh-interval", "30000"),
    _c("proxy-dial-timeout", "1000"),
    _c("proxy-write-timeout", "5000"),
    _c("proxy-read-timeout", "0"),
    _c("debug", "false"),
    _c("log-package-levels", ""),
    _c("experimental-initial-corrupt-check", "false"),
    _c("experimental-corrupt-check-time", "0s", refuse=True),
    _c("experimental-enable-v2v3", "", refuse=True),
    _c("experimental-backend-bbolt-freelist-type", "array"),
    # etcd 3.4.23 keeps checkpoints across a restart with or without it (observed); quorumkv always does
    _c("experimental-enable-lease-checkpoint-persist", "false"),
    _c("experimental-compaction-batch-limit", "1000"),
    _c("experimental-peer-skip-client-san-verification", "false"),
    _c("experimental-warning-apply-duration", "100ms"),
)

_SPEC_BY_FLAG = {s.flag: s for s in FLAG_SPECS}
_COMPAT_BY_FLAG = {c.flag: c for c in COMPAT_FLAGS}
_TLS_SECTIONS = ("client-transport-security", "peer-transport-security")
#: ETCD_ variables that are not flags and must not trigger "unrecognized" warnings.
_ENV_NOT_FLAGS = frozenset({"ETCD_VERSION", "ETCD_UNSUPPORTED_ARCH", "ETCD_CONFIG_FILE"})


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config plus the warnings etcd would have logged while building it (to print, not fail)."""

    config: ServerConfig
    warnings: list[str] = field(default_factory=list)
    #: Field name -> where its value came from (``--name``, ``ETCD_NAME``, ``config file key 'name'``).
    origins: dict[str, str] = field(default_factory=dict)


def env_names(flag: str) -> tuple[str, ...]:
    """Environment variables for ``flag``, highest precedence first: ``("QUORUMKV_NAME", "ETCD_NAME")``."""
    suffix = flag.upper().replace("-", "_")
    return tuple(prefix + suffix for prefix in ENV_PREFIXES)


_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_go_bool(text: str) -> bool:
    """Go's ``strconv.ParseBool``: 1/t/T/TRUE/true/True and 0/f/F/FALSE/false/False; else ``ValueError``."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(text)


def _expectation(spec: FlagSpec) -> str:
    if spec.kind == "bool":
        return "expected true or false"
    if spec.kind == "duration_ms":
        return "expected a Go duration such as 10m, 30s or 500ms"
    if spec.kind == "int":
        unit = (
            "milliseconds" if spec.field.endswith("_ms") else "bytes" if spec.field.endswith("_bytes") else ""
        )
        return (
            f"expected a whole number{' of ' + unit if unit else ''}, e.g. {spec.option}={spec.default_text}"
        )
    return "expected a string"


def _bad_value(spec: FlagSpec, raw: object, origin: str) -> ConfigError:
    where = origin if origin == spec.option else f"{origin} ({spec.option})"
    shown = raw if isinstance(raw, str) else repr(raw)
    return ConfigError(f'invalid value "{shown}" for {where}: {_expectation(spec)}', flag=spec.option)


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _convert_text(spec: FlagSpec, raw: str, origin: str) -> object:
    """Convert a flag or environment value (always text) to the field's type."""
    try:
        if spec.kind == "str":
            return raw
        if spec.kind == "int":
            text = raw.strip().replace("_", "")
            if not text.lstrip("+-").isdigit() or not text.isascii():
                raise ValueError(raw)
            return int(text)
        if spec.kind == "bool":
            return parse_go_bool(raw.strip())
        if spec.kind == "list":
            return _split_list(raw)
        ns = parse_duration_ns(raw.strip())
        if ns <= 0:
            raise ValueError(raw)
        return max(1, ns // NS_PER_MS)
    except (ValueError, DurationError):
        raise _bad_value(spec, raw, origin) from None


def _convert_yaml(spec: FlagSpec, raw: object, origin: str) -> object:
    """Convert a parsed YAML value; etcd's YAML writes URL lists as comma-joined strings, lists also work."""
    if isinstance(raw, str):
        return _convert_text(spec, raw, origin)
    if spec.kind == "bool" and isinstance(raw, bool):
        return raw
    if spec.kind == "int" and isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if spec.kind == "str" and isinstance(raw, int | float) and not isinstance(raw, bool):
        return str(raw)
    if spec.kind == "list" and isinstance(raw, list) and all(isinstance(v, str) for v in raw):
        return [v.strip() for v in raw if v.strip()]
    if spec.kind == "duration_ms" and isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
        return max(1, raw // NS_PER_MS)  # etcd's YAML encodes time.Duration as integer nanoseconds
    raise _bad_value(spec, raw, origin)


def _compat_value_is_default(compat: CompatFlag, raw: object) -> bool:
    if raw is None:
        return True
    if isinstance(raw, bool):
        if compat.is_bool:
            return raw == (compat.default_text == "true")
        return not raw and compat.default_text in ("", "off")  # YAML 1.1 reads a bare `off` as false
    text = str(raw).strip()
    if compat.is_bool:
        try:
            return parse_go_bool(text) == (compat.default_text == "true")
        except ValueError:
            return False
    return text == compat.default_text or (text == "" and compat.default_text in ("", "*"))


def _apply_compat(compat: CompatFlag, raw: object, origin: str, warnings: list[str]) -> None:
    if _compat_value_is_default(compat, raw):
        return
    where = origin if origin == compat.option else f"{origin} ({compat.option})"
    if compat.refuse:
        raise ConfigError(
            f"{where}={raw!s} is not supported by quorumkv; remove it (the etcd 3.4 default is "
            f"{compat.default_text or 'empty'})",
            flag=compat.option,
        )
    warnings.append(f"{where} is an etcd 3.4 flag quorumkv does not implement; its value {raw!s} is ignored")


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _build(kwargs: dict[str, object], origins: dict[str, str], warnings: list[str]) -> LoadedConfig:
    try:
        config = ServerConfig(**cast(dict[str, Any], kwargs))
    except ConfigError as exc:
        spec = next((s for s in FLAG_SPECS if s.option == exc.flag), None)
        origin = origins.get(spec.field) if spec else None
        if origin and origin != exc.flag:
            raise ConfigError(f"{exc.message} (value from {origin})", flag=exc.flag) from None
        raise
    return LoadedConfig(config, warnings, origins)


def load_config(flags: Mapping[str, str], environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Build the config from command-line ``flags`` (flag name without dashes -> raw text) and ``environ``.

    ``flags`` holds only flags present on the command line. A config file named by ``config-file`` (or the
    environment) replaces both sources; see the module docstring for precedence.
    """
    env = dict(os.environ if environ is None else environ)
    config_file = flags.get("config-file") or next(
        (env[n] for n in env_names("config-file") if env.get(n)), ""
    )
    if config_file:
        loaded = load_config_file(config_file)
        ignored = [f"--{f}" for f in flags if f != "config-file"]
        known = {n for flag in (*_SPEC_BY_FLAG, *_COMPAT_BY_FLAG) for n in env_names(flag)}
        ignored += sorted(n for n in env if n in known and env[n] != "")
        note = f"loaded server configuration from {config_file!r}; other command line flags and environment "
        note += "variables are ignored"
        if ignored:
            note += f": ignoring {', '.join(ignored)}"
        loaded.warnings.insert(0, note)
        return loaded

    warnings: list[str] = []
    raw: dict[str, tuple[str, str]] = {}  # flag -> (text, origin)
    used_env: set[str] = set()
    for flag in (*_SPEC_BY_FLAG, *_COMPAT_BY_FLAG):
        present = [n for n in env_names(flag) if env.get(n, "") != ""]
        if flag in flags:
            raw[flag] = (flags[flag], "--" + flag)
            warnings += [
                f"recognized environment variable {n}, but unused: shadowed by corresponding flag"
                for n in present
            ]
        elif present:
            raw[flag] = (env[present[0]], present[0])
            warnings += [
                f"recognized environment variable {n}, but unused: shadowed by {present[0]}"
                for n in present[1:]
            ]
        used_env.update(env_names(flag))
    for name in sorted(env):
        if name.startswith("ETCD_") and name not in used_env and name not in _ENV_NOT_FLAGS:
            warnings.append(f"unrecognized environment variable {name}={env[name]}")

    if "listen-client-urls" in raw and "advertise-client-urls" not in raw:
        raise ConfigError(
            "--advertise-client-urls is required when --listen-client-urls is set explicitly "
            f"(set by {raw['listen-client-urls'][1]}); advertise URL(s) clients can reach, "
            "e.g. --advertise-client-urls=http://10.0.1.10:2379",
            flag="--advertise-client-urls",
        )

    kwargs: dict[str, object] = {}
    origins: dict[str, str] = {}
    for flag, (text, origin) in raw.items():
        if flag in _COMPAT_BY_FLAG:
            _apply_compat(_COMPAT_BY_FLAG[flag], text, origin, warnings)
            continue
        spec = _SPEC_BY_FLAG[flag]
        kwargs[spec.field] = _convert_text(spec, text, origin)
        origins[spec.field] = origin
    return _build(kwargs, origins, warnings)


def load_config_file(path: str) -> LoadedConfig:
    """Build the config from an etcd-style YAML file; unknown keys are errors naming the key.

    Keys are etcd's flag names; TLS settings sit under ``client-transport-security`` and
    ``peer-transport-security``; a key with an empty (null) value means "use the default".
    """
    try:
        with open(path, encoding="utf-8") as fh:
            document = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(
            f"cannot read --config-file {path!r}: {exc.strerror}", flag="--config-file"
        ) from None
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(
            f"--config-file {path!r} is not valid YAML: {detail}", flag="--config-file"
        ) from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(
            f"--config-file {path!r} must contain a YAML mapping of etcd flag names to values",
            flag="--config-file",
        )

    top_level = {s.flag: s for s in FLAG_SPECS if s.yaml_section is None}
    known_keys = [*top_level, *_COMPAT_BY_FLAG, *_TLS_SECTIONS]
    kwargs: dict[str, object] = {}
    origins: dict[str, str] = {}
    warnings: list[str] = []
    for key, value in document.items():
        origin = f"config file key '{key}' in {path}"
        if not isinstance(key, str) or key not in known_keys:
            raise ConfigError(
                f"unknown key {key!r} in --config-file {path}{_suggest(str(key), known_keys)}; "
                "keys are etcd flag names without the leading --",
                flag="--config-file",
            )
        if key in _TLS_SECTIONS:
            _load_tls_section(key, value, path, kwargs, origins)
        elif key in _COMPAT_BY_FLAG:
            _apply_compat(_COMPAT_BY_FLAG[key], value, origin, warnings)
        elif value is not None:
            spec = top_level[key]
            kwargs[spec.field] = _convert_yaml(spec, value, origin)
            origins[spec.field] = origin
    return _build(kwargs, origins, warnings)


def _load_tls_section(
    section: str, value: object, path: str, kwargs: dict[str, object], origins: dict[str, str]
) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise ConfigError(
            f"{section} in --config-file {path} must be a mapping with keys cert-file, key-file, "
            "client-cert-auth, trusted-ca-file, auto-tls",
            flag="--config-file",
        )
    specs = {s.yaml_key: s for s in FLAG_SPECS if s.yaml_section == section}
    for key, item in value.items():
        origin = f"config file key '{section}.{key}' in {path}"
        if key not in specs:
            raise ConfigError(
                f"unknown key '{section}.{key}' in --config-file {path}"
                f"{_suggest(str(key), [str(k) for k in specs])}; valid keys are {', '.join(map(str, specs))}",
                flag="--config-file",
            )
        if item is not None:
            spec = specs[key]
            kwargs[spec.field] = _convert_yaml(spec, item, origin)
            origins[spec.field] = origin
