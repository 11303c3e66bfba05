"""What raymm's stream layer is configured with: where Kafka is, and how consumers keep user state.

Plain pydantic (no Kafka client), so :mod:`raymm.config` can hold these sections without
importing kafka-python. :class:`KafkaSettings` is the ``kafka:`` section and
:class:`StreamSettings` the ``stream:`` section of the configuration.

**The Kafka password never travels as an argument.** Ray shows a Serve deployment actor's
``init_kwargs`` in its dashboard and ``serve status`` and pickles every actor's arguments into its
control store, so the settings cross to a state shard or a replica as :meth:`KafkaSettings.shared`
(no password), and that process takes the password from its own environment
(:meth:`KafkaSettings.received`, :data:`PASSWORD_ENV`). Kubernetes puts it there from a Secret
(:mod:`raymm.deploy.kubernetes`); a local Ray instance that raymm starts inherits it from the
driver (:func:`raymm.serve.auth.export_secrets`). Runtime-env ``env_vars`` would show in the
dashboard too, so they are not used.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from raymm.errors import ConfigError
from raymm.stream.events import DEAD_LETTER_TOPIC, EVENTS_TOPIC, ITEMS_TOPIC, EventLimits
from raymm.stream.ownership import Partitioner

BrokerKind = Literal["tansu", "noida"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"]
#: The mechanisms that authenticate with ``sasl_plain_username`` and ``sasl_plain_password``.
PASSWORD_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: Where a process that was handed :meth:`KafkaSettings.shared` finds the password (the variable
#: :mod:`raymm.config` reads as ``kafka.sasl_plain_password``).
PASSWORD_ENV = "RAYMM__KAFKA__SASL_PLAIN_PASSWORD"
#: What a secret looks like wherever it is shown.
MASK = "**********"


class RedactedStr(str):
    """A secret as kafka-python needs it (a ``str``), whose ``repr`` is masked: kafka-python's admin
    client logs its whole configuration at DEBUG (a dict, formatted with each value's ``repr``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(MASK)


class KafkaSettings(BaseModel):
    """Where raymm's Kafka is and how to reach it; ``bootstrap_servers=None`` starts an embedded one.

    :meth:`client_options` gives the security keyword arguments every kafka-python client takes
    (producer, consumer, admin), so SASL and TLS pass through unchanged; every client raymm makes
    is built with them (:func:`raymm.stream.clients.kafka_client`). Inconsistent settings
    (a SASL mechanism on a non-SASL protocol, PLAIN/SCRAM without credentials, a client
    certificate without its key) raise ``ValidationError`` naming the fields.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The brokers to connect to, ``host:port`` pairs separated by commas; None: ``raymm serve``
    #: and ``raymm quickstart`` start an embedded broker (``embedded_broker``).
    bootstrap_servers: str | None = None
    #: The broker started when ``bootstrap_servers`` is None; noida joins consumer groups in ~0.4 s
    #: (Tansu takes ~23 s) and keeps its data across restarts.
    embedded_broker: BrokerKind = "noida"
    #: How clients talk to the brokers: ``SSL`` and ``SASL_SSL`` encrypt with TLS, the ``SASL_``
    #: ones authenticate with ``sasl_mechanism``.
    security_protocol: SecurityProtocol = "PLAINTEXT"
    #: How a ``SASL_`` protocol authenticates; required with one, refused with any other.
    sasl_mechanism: SaslMechanism | None = None
    #: The user that PLAIN and SCRAM mechanisms log in as.
    sasl_plain_username: str | None = None
    #: That user's password, best set with ``RAYMM__KAFKA__SASL_PLAIN_PASSWORD``: raymm's Ray
    #: workers read it from their environment, never from an argument (:mod:`raymm.stream.settings`
    #: says why).
    sasl_plain_password: SecretStr | None = None
    #: CA bundle (PEM) that verifies the brokers' certificates under TLS; None: the system's CAs.
    ssl_cafile: str | None = None
    #: Client certificate (PEM) for brokers that require TLS client authentication; needs
    #: ``ssl_keyfile``.
    ssl_certfile: str | None = None
    #: Private key (PEM) of ``ssl_certfile``.
    ssl_keyfile: str | None = None
    #: The name every raymm client gives the brokers, as it appears in their logs and quotas.
    client_id: str = "raymm"
    #: Partitions of ``raymm.events``: the most consumer replicas that can share the stream.
    partitions: int = Field(8, gt=0)
    #: The owner rule's hash of ``user_id`` (:mod:`raymm.stream.ownership`): ``murmur2`` as Kafka's
    #: Java client and kafka-python partition keys, ``crc32`` as librdkafka clients (kcat,
    #: confluent-kafka) do by default. Events on another partition are forwarded to the owner's
    #: whichever is chosen; choosing the producers' own keeps forwarding rare.
    partitioner: Partitioner = "murmur2"
    #: Partitions of ``raymm.items`` (new and updated items; every serving replica reads them all).
    item_partitions: int = Field(1, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and self.sasl_mechanism is None:
            raise ValueError(f"security_protocol {self.security_protocol} needs a sasl_mechanism")
        if not sasl and self.sasl_mechanism is not None:
            raise ValueError(
                f"sasl_mechanism {self.sasl_mechanism} needs security_protocol SASL_PLAINTEXT or "
                f"SASL_SSL, got {self.security_protocol}"
            )
        if self.sasl_mechanism in PASSWORD_MECHANISMS and (
            self.sasl_plain_username is None or self.sasl_plain_password is None
        ):
            raise ValueError(
                f"sasl_mechanism {self.sasl_mechanism} needs sasl_plain_username and sasl_plain_password"
            )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together: set both or neither")
        return self

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for ``KafkaProducer``/``KafkaConsumer``/``KafkaAdminClient``: the
        client id and the security settings that are set (never ``bootstrap_servers``); the
        password as a :class:`RedactedStr`."""
        options: dict[str, Any] = {"client_id": self.client_id, "security_protocol": self.security_protocol}
        if self.sasl_mechanism is not None:
            options["sasl_mechanism"] = self.sasl_mechanism
        if self.sasl_plain_username is not None:
            options["sasl_plain_username"] = self.sasl_plain_username
        if self.sasl_plain_password is not None:
            options["sasl_plain_password"] = RedactedStr(self.sasl_plain_password.get_secret_value())
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(self, name) is not None:
                options[name] = getattr(self, name)
        return options

    def shared(self) -> dict[str, Any]:
        """These settings as plain data for another process (a state shard, a Serve replica),
        without the password: see the module docstring. :meth:`received` rebuilds them there."""
        return self.model_dump(mode="json", exclude={"sasl_plain_password"})

    @classmethod
    def received(cls, document: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> KafkaSettings:
        """The settings :meth:`shared` gave, with the password from ``environ`` (default: this
        process's environment) at :data:`PASSWORD_ENV`.

        Raises :class:`~raymm.errors.ConfigError` naming the variable when the SASL mechanism
        needs a password and the environment has none.
        """
        environ = os.environ if environ is None else environ
        fields = dict(document)
        password = environ.get(PASSWORD_ENV)
        if password:
            fields["sasl_plain_password"] = password
        elif fields.get("sasl_mechanism") in PASSWORD_MECHANISMS:
            raise ConfigError(
                f"kafka.sasl_mechanism {fields['sasl_mechanism']} needs the password, which reaches "
                f"raymm's Ray workers only through their environment: {PASSWORD_ENV} is not set in "
                f"this process (pid {os.getpid()}). Set it on every Ray node (a Kubernetes Secret, as "
                "`raymm deploy render` wires it), or let raymm start the local Ray instance"
            )
        return cls.model_validate(fields)

    def topic_configs(self) -> dict[str, dict[str, str]]:
        """Settings of the topics raymm creates: dead letters are keyed by their source
        ``topic:partition:offset`` on a compacted topic, so the copies a replay or a second
        cluster sends collapse to one (and still expire with the topic's retention)."""
        return {DEAD_LETTER_TOPIC: {"cleanup.policy": "compact,delete"}}

    def topics(self) -> dict[str, int]:
        """The topics raymm produces to, with their partition counts, for :func:`ensure_topics`."""
        return {EVENTS_TOPIC: self.partitions, ITEMS_TOPIC: self.item_partitions, DEAD_LETTER_TOPIC: 1}


class StreamSettings(BaseModel):
    """How an event consumer keeps user state (``stream:`` in the configuration).

    Snapshots hold each partition's users together with the offset applied last, so a restarted
    or new owner of the partition restores them and replays only what came after.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Where snapshots go: a local path or any pyarrow filesystem URI (``s3://bucket/state``);
    #: None: ``<out>/state``.
    snapshot_uri: str | None = None
    #: Take a snapshot of a partition when this many seconds passed since its last one...
    snapshot_interval_s: float = Field(30.0, gt=0)
    #: ...or when this many events were applied to it since then; and always on shutdown.
    snapshot_every_events: int = Field(50_000, gt=0)
    #: Snapshots kept per partition; at least 2, so a corrupt newest one has a previous good one.
    keep_snapshots: int = Field(3, ge=2)
    #: Users held in memory across all owned partitions; the least recently used beyond this are
    #: moved to a spill file on local disk and read back when an event or a request needs them.
    #: None: no bound.
    max_users_in_memory: int | None = Field(1_000_000, gt=0)
    #: Where the spill file lives (default: a temporary directory, removed on close).
    spill_dir: str | None = None
    #: Remember this many recent event ids per user and apply an id seen again only once
    #: (a producer that retried, a client that posted twice). 0 turns it off.
    dedupe_window: int = Field(32, ge=0)
    #: Items remembered as seen per user (never recommended again), the most recently touched:
    #: bounds each user's state, as ``max_users_in_memory`` bounds the users. None: every item.
    max_seen: int | None = Field(10_000, gt=0)
    #: The most records one poll returns.
    poll_max_records: int = Field(2_000, gt=0)
    #: How long a poll waits for records when none are ready, in milliseconds.
    poll_timeout_ms: int = Field(200, gt=0)
    #: A state shard answers as ready once, after it starts, every partition it owns is within this
    #: many messages of the end of its log; serving waits for that before it takes traffic, so an
    #: upgrade never switches to a cluster that is still replaying.
    ready_max_lag: int = Field(1_000, ge=0)
    #: A consumer whose loop has not come round for this long reports itself not alive.
    liveness_timeout_s: float = Field(30.0, gt=0)
    limits: EventLimits = Field(default_factory=EventLimits)
