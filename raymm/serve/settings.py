"""The serving stage's configuration: the ``serve`` section (where the live application listens,
how it is sized, its limits and its API key).

Plain pydantic on :class:`raymm.settings_base.StrictModel` (no Ray, no FastAPI), so
:mod:`raymm.config` assembles this section without serving importing the hub.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from raymm.settings_base import StrictModel

__all__ = ["ServeConfig"]


class ServeConfig(StrictModel):
    """The live application (``raymm serve``): where it listens, how it is sized, its limits."""

    #: The model artifact to serve (local path or URI); None: ``<out>/model``.
    model: str | None = None
    #: The Serve application's name, as ``serve status`` lists it; stopping ``raymm serve``
    #: deletes this application only.
    app_name: str = "raymm"
    #: The address Serve's HTTP server binds; ``0.0.0.0`` takes every interface, as a Kubernetes
    #: pod needs (``raymm deploy render`` sets it).
    host: str = "127.0.0.1"
    #: The TCP port Serve's HTTP server listens on.
    port: int = Field(8000, gt=0, lt=65536)
    #: The URL path the API's routes hang under (``/`` puts ``/healthz`` at the root).
    route_prefix: str = "/"
    #: State shards (event consumers), each owning ``partition % state_shards == rank``; at most
    #: ``kafka.partitions``.
    state_shards: int = Field(1, gt=0)
    #: Replicas of the Recommender deployment (the HTTP API that scores requests); a deploy
    #: variant's ``recommender_max_replicas`` autoscales up from this many.
    recommender_replicas: int = Field(1, gt=0)
    #: CPUs Ray reserves for each state shard actor (a fraction packs several onto one CPU).
    shard_num_cpus: float = Field(0.25, ge=0)
    #: CPUs Ray reserves for each Recommender replica.
    recommender_num_cpus: float = Field(0.5, ge=0)
    #: The largest ``k`` a request may ask for (also capped by the ranker's ``retriever_top_n``).
    max_k: int = Field(100, gt=0)
    #: The largest request body a POST route reads, in bytes; a larger one is answered 413
    #: ``body_too_large``.
    max_body_bytes: int = Field(65_536, gt=0)
    #: How long a request waits for its user's state before the fallback answers.
    state_timeout_s: float = Field(0.5, gt=0)
    #: How long a new replica waits for every state shard to catch up (``stream.ready_max_lag``)
    #: before it takes traffic; past it the replica fails to start, naming the shards behind.
    ready_timeout_s: float = Field(1_800.0, gt=0)
    #: An event hits when its item was served to the user within this many seconds.
    hit_window_s: float = Field(600.0, gt=0)
    #: The most concurrent requests scored together in one batch (Serve's batching).
    max_batch_size: int = Field(32, gt=0)
    #: How long the first request of a batch waits for company, in milliseconds. Keep it short:
    #: at moderate rates the batches stay small and the wait is added latency
    #: (bench/serve_latency.py measures both).
    batch_wait_ms: float = Field(1.0, ge=0)
    #: Serve's access log, a line per request from its proxy and from the replica that answered
    #: (``logs/serve/``). Off: Serve's request metrics count the same requests, and the line costs
    #: CPU on the request path.
    access_log: bool = False
    #: How requests search the catalog: ``exact`` reads every item vector (memory-bound, so its
    #: cost grows with the catalog), ``faiss`` an IVF-Flat index that reads ``nprobe`` of its
    #: ~4 sqrt(N) lists, ``auto`` faiss from ``faiss_min_items`` items on.
    index: Literal["auto", "exact", "faiss"] = "auto"
    #: With ``index`` ``auto``, the catalog size from which requests search with faiss instead of
    #: exactly (bench/retrieval.py measures both; the default is
    #: ``raymm.recommend.index.FAISS_MIN_ITEMS``, where it says why).
    faiss_min_items: int = Field(5_000, gt=0)
    #: faiss lists scored per request: more lists, higher recall against exact search and more
    #: CPU (bench/retrieval.py sweeps it against exact search: bench/results/retrieval.json).
    nprobe: int = Field(128, gt=0)
    #: The key every route but ``/healthz`` requires (``Authorization: Bearer <key>`` or
    #: ``X-API-Key: <key>``; 401 without it); None, and no ``api_key_file``: the API is open. Set it
    #: with ``RAYMM__SERVE__API_KEY`` (a Kubernetes Secret): it is never written out, and serving's
    #: processes read it from their environment (:mod:`raymm.serve.auth`).
    api_key: SecretStr | None = None
    #: A file holding the key instead (a Kubernetes Secret mounted as a volume), read by each
    #: replica when it starts; whitespace around the key is ignored.
    api_key_file: str | None = None

    @model_validator(mode="after")
    def _one_api_key(self) -> ServeConfig:
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError("set serve.api_key or serve.api_key_file, not both")
        if self.api_key is not None and not self.api_key.get_secret_value():
            raise ValueError("serve.api_key is empty: set a key, or none to leave the API open")
        return self
