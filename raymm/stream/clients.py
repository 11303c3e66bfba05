"""Every Kafka client raymm makes, built by one function with the security settings.

kafka-python's ``KafkaConsumer``, ``KafkaProducer`` and ``KafkaAdminClient`` take SASL and TLS as
keyword arguments, and a client built without them talks plaintext: to a secured cluster it fails
to connect, or connects unauthenticated. So raymm builds none of them directly: the event
consumers, the items follower, the dead-letter and forwarding producer of every poll loop, the
HTTP API's producer, :func:`~raymm.stream.producer.replay` and the admin client of
:func:`~raymm.stream.broker.ensure_topics` all call :func:`kafka_client`, which adds
:meth:`KafkaSettings.client_options() <raymm.stream.settings.KafkaSettings.client_options>`
(tests/reliability/test_access.py checks each of them, and that nothing else builds a client).
"""

from __future__ import annotations

from typing import Any, TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from raymm.stream.settings import KafkaSettings

__all__ = ["CLIENT_CLASSES", "kafka_client"]

#: The kafka-python clients :func:`kafka_client` builds.
CLIENT_CLASSES = (KafkaConsumer, KafkaProducer, KafkaAdminClient)

Client = TypeVar("Client", KafkaConsumer, KafkaProducer, KafkaAdminClient)


def kafka_client(kind: type[Client], bootstrap_servers: str, kafka: KafkaSettings, **settings: Any) -> Client:
    """A ``kind`` client of ``bootstrap_servers`` with ``kafka``'s client id and security settings
    and the client's own ``settings`` (``acks``, ``group_id``, timeouts, ...).

    Raises ``ValueError`` naming the keys when ``settings`` repeats one that ``kafka`` decides
    (``client_id``, ``security_protocol``, ``sasl_*``, ``ssl_*``): those come from the
    configuration only, so no caller can weaken them.
    """
    security = kafka.client_options()
    clash = sorted(set(settings) & set(security) | {k for k in settings if k.startswith(("sasl_", "ssl_"))})
    if clash:
        raise ValueError(
            f"{clash} are security settings of a Kafka client: they come from KafkaSettings only"
        )
    return kind(bootstrap_servers=bootstrap_servers, **security, **settings)
