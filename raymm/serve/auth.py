"""Who may call the HTTP API, and how serving's secrets reach the processes that need them.

**The API key.** With ``serve.api_key`` (set by ``RAYMM__SERVE__API_KEY``, which Kubernetes fills
from a Secret) or ``serve.api_key_file`` (a file holding the key: a Secret mounted as a volume),
every route but ``/healthz`` answers 401 ``unauthorized``, with ``WWW-Authenticate: Bearer``,
unless the request carries the key as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``
(:func:`raymm.serve.http.authorized`). ``/healthz`` stays open for probes, and ``/docs`` and
``/openapi.json`` for readers: the schema names both ways to send the key. Without a key the API
is open, as it always was. :meth:`ApiKey.matches` compares SHA-256 digests with
:func:`hmac.compare_digest`, so the time it takes says nothing of the key, not even its length.

**Secrets never travel as arguments.** Ray pickles a replica's and an actor's arguments into its
control store, and shows a Serve deployment actor's ``init_kwargs`` in its dashboard and in
``serve status``; runtime-env ``env_vars`` show there too. So :class:`~raymm.serve.deployment.ServeArgs`
carries :class:`ApiKeySource` (whether a key is required, and the file's path) and Kafka settings
without the password (:meth:`KafkaSettings.shared <raymm.stream.settings.KafkaSettings.shared>`);
each replica and state shard reads the secrets from its own environment (:data:`API_KEY_ENV`,
:data:`~raymm.stream.settings.PASSWORD_ENV`) or the file. Kubernetes sets the variables on every
pod (:mod:`raymm.deploy.kubernetes`); a local Ray instance that raymm starts inherits them from
the driver (:func:`export_secrets`). A replica that must have a key and finds none refuses to
start, naming the variable: a missing key never opens the API.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from raymm.config import RaymmConfig
from raymm.errors import ConfigError
from raymm.serve.settings import ServeConfig
from raymm.stream.settings import MASK, PASSWORD_ENV

__all__ = ["API_KEY_ENV", "ApiKey", "ApiKeySource", "export_secrets"]

#: The variable the API key reaches serving's processes by (:mod:`raymm.config` reads it as
#: ``serve.api_key``).
API_KEY_ENV = "RAYMM__SERVE__API_KEY"


class ApiKey:
    """The API key, kept as its SHA-256 digest; ``repr`` shows nothing of it.

    ``where`` names the key's source in errors. Raises :class:`~raymm.errors.ConfigError` for an
    empty key (it would let anyone in) or one that is not printable ASCII (HTTP header values are
    bytes, and a client and this server could encode other characters differently).
    """

    __slots__ = ("_digest",)

    def __init__(self, key: str, where: str) -> None:
        if not key:
            raise ConfigError(f"the API key from {where} is empty: set a key, or none to leave the API open")
        if not (key.isascii() and key.isprintable()):
            raise ConfigError(
                f"the API key from {where} must be printable ASCII (it is sent as an HTTP header)"
            )
        self._digest = hashlib.sha256(key.encode()).digest()

    def matches(self, presented: str | None) -> bool:
        """Whether ``presented`` is the key, in a time that does not depend on either."""
        if presented is None:
            return False
        return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), self._digest)

    def __repr__(self) -> str:
        return f"ApiKey({MASK!r})"


@dataclass(frozen=True)
class ApiKeySource:
    """Where a replica finds the API key (never the key): ``file``, else :data:`API_KEY_ENV` in
    its environment. ``required``: the configuration set a key, so finding none is an error."""

    required: bool = False
    file: str | None = None

    @classmethod
    def of(cls, serve: ServeConfig) -> ApiKeySource:
        """The source for ``serve``'s settings (``serve.api_key``, ``serve.api_key_file``); a
        relative file is taken from here, since a replica runs in a directory of Ray's."""
        file = None if serve.api_key_file is None else os.path.abspath(serve.api_key_file)
        return cls(required=serve.api_key is not None or file is not None, file=file)

    def load(self, environ: Mapping[str, str] | None = None) -> ApiKey | None:
        """The key from the file or ``environ`` (default: this process's environment); None: no
        key, the API is open. A key in the environment is enforced even when not ``required``.

        Raises :class:`~raymm.errors.ConfigError` for an unreadable file, and for a required key
        that is nowhere, naming where it was looked for.
        """
        if self.file is not None:
            try:
                text = Path(self.file).read_text()
            except OSError as exc:
                raise ConfigError(f"serve.api_key_file {self.file}: {exc.strerror or exc}") from None
            return ApiKey(text.strip(), f"serve.api_key_file {self.file}")
        value = (os.environ if environ is None else environ).get(API_KEY_ENV)
        if value is not None:
            return ApiKey(value, API_KEY_ENV)
        if self.required:
            raise ConfigError(
                f"serve.api_key is set, but {API_KEY_ENV} is not in this replica's environment (pid "
                f"{os.getpid()}): the key reaches Ray's workers only through it. Set it on every Ray node "
                "(a Kubernetes Secret, as `raymm deploy render` wires it), use serve.api_key_file, or let "
                "raymm start the local Ray instance"
            )
        return None


def export_secrets(config: RaymmConfig) -> list[str]:
    """Put ``config``'s secrets (the Kafka password, the API key) into this process's environment
    before raymm starts a local Ray instance, whose processes inherit it; returns the variables set.

    Does nothing when Ray is up already or ``ray.address`` joins a cluster: those processes have
    the environment they were started with, which must hold the variables itself.
    """
    import ray

    if ray.is_initialized() or config.ray.address:
        return []
    secrets = {PASSWORD_ENV: config.kafka.sasl_plain_password, API_KEY_ENV: config.serve.api_key}
    exported = []
    for name, secret in secrets.items():
        if secret is not None:
            os.environ[name] = secret.get_secret_value()
            exported.append(name)
    return exported
