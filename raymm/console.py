"""What a person sees on the console: numbered stages, progress bars and a summary; Ray's output goes to a log.

Unless ``verbose``, :func:`configure_logging` sends everything Ray prints for its own developers to one log
file (``<out>/logs/raymm.log`` from :func:`log_file_for`):

- Python ``logging`` of ``ray`` (``ray.init``'s INFO lines, Ray Train's driver side), ``ray.data``
  (execution plans, the progress dumps it logs when stdout is not a terminal, sink summaries) and
  Python warnings (``py.warnings``): all to the file at INFO and above; Ray's records reach the console
  only at WARNING and above, warnings never.
- the driver's native stderr (file descriptor 2): Ray's C++ core worker copies its ERROR lines there
  (e.g. ``E ... core_worker.cc: ... has constructor arguments in the object store``, which every Ray
  Data actor pool triggers, because Ray Data ``ray.put``\\s the pool's constructor and restarts actors).
  Descriptor 2 is pointed at the log file and Python's ``sys.stderr`` at a copy of the old descriptor,
  so raymm's messages, tracebacks and tqdm bars still reach the console.
- worker and actor output (``(pid=...)`` lines): not forwarded, see :func:`raymm.runtime.init_ray`.

Errors still reach the user: a failed Ray task or Train run raises in the driver, and the CLI prints it.
A C++ fatal error of the driver itself lands in the log file only; the CLI names the file on failure.
"""

from __future__ import annotations

import io
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Protocol, TextIO, TypeVar

# Loggers whose records are Ray's; children such as ``ray.train`` propagate into ``ray``.
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve")
# Below this level Ray's records go to the log file only.
RAY_CONSOLE_LEVEL = logging.WARNING
LOG_FORMAT = (
    "%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"  # Ray sets this one on its handlers
)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


def is_interactive(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default ``sys.stderr``) is a terminal a person watches."""
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced by an object without a descriptor
        return False


def log_file_for(out: str) -> str:
    """The log file of a run writing to ``out``: ``<out>/logs/raymm.log``, always a local path.

    An ``out`` on object storage (``s3://...``) gets ``<tmp>/raymm-logs/raymm-<pid>.log`` instead:
    log handlers append line by line, which object stores cannot.
    """
    if "://" in out and not out.startswith("file://"):
        return os.path.join(tempfile.gettempdir(), "raymm-logs", f"raymm-{os.getpid()}.log")
    return os.path.join(os.path.abspath(out.removeprefix("file://")), "logs", "raymm.log")


#: Ray loggers whose warnings are advice for operators (e.g. Ray Data's issue detector asking for
#: per-operator memory reservations): kept in the log file, not shown to people on the console.
ADVISORY_LOGGERS: tuple[str, ...] = ("ray.data._internal.issue_detection",)


def _advisory_only_in_file(record: logging.LogRecord) -> bool:
    """Console filter: drop the advisory loggers' records below ERROR (the file keeps them)."""
    return record.levelno >= logging.ERROR or not record.name.startswith(ADVISORY_LOGGERS)


@dataclass
class ConsoleRouting:
    """Where Ray's output goes for this process; made by :func:`configure_logging`, undone by :meth:`close`."""

    log_file: str | None
    verbose: bool
    interactive: bool
    _file_handler: logging.Handler | None = None
    _capped: dict[int, tuple[logging.Handler, int]] = field(default_factory=dict)
    _levels: dict[str, int] = field(default_factory=dict)
    _propagate: dict[str, bool] = field(default_factory=dict)
    _terminal_fd: int | None = None
    _saved_stderr: TextIO | None = None

    def route_ray_loggers(self) -> None:
        """(Re)apply the routing to Ray's loggers; idempotent.

        Call again after importing ``ray.data``: its import replaces the ``ray.data`` logger's handlers.
        """
        if self.verbose or self._file_handler is None:
            return
        for name in (*RAY_LOGGERS, "py.warnings"):
            logger = logging.getLogger(name)
            self._levels.setdefault(name, logger.level)
            if logger.level == logging.NOTSET or logger.level > logging.INFO:
                logger.setLevel(logging.INFO)
            for handler in logger.handlers:
                if _writes_to_console(handler) and id(handler) not in self._capped:
                    self._capped[id(handler)] = (handler, handler.level)
                    handler.setLevel(max(handler.level, RAY_CONSOLE_LEVEL))
                    handler.addFilter(_advisory_only_in_file)
            # A propagating child (ray.train) reaches the file through its parent's handler.
            owns_file = not logger.propagate or name in ("ray", "py.warnings")
            if owns_file and self._file_handler not in logger.handlers:
                logger.addHandler(self._file_handler)
        warnings_logger = logging.getLogger("py.warnings")
        self._propagate.setdefault("py.warnings", warnings_logger.propagate)
        warnings_logger.propagate = False  # else the root's last-resort handler prints them
        logging.captureWarnings(True)

    def close(self) -> None:
        """Undo the routing: Ray's loggers, warnings and stderr as they were before."""
        if self._file_handler is not None:
            for name in (*RAY_LOGGERS, "py.warnings"):
                logger = logging.getLogger(name)
                logger.removeHandler(self._file_handler)
                if name in self._levels:
                    logger.setLevel(self._levels[name])
            for handler, level in self._capped.values():
                handler.setLevel(level)
                handler.removeFilter(_advisory_only_in_file)
            logging.getLogger("py.warnings").propagate = self._propagate.get("py.warnings", True)
            logging.captureWarnings(False)
            self._file_handler.close()
            self._file_handler = None
        if self._terminal_fd is not None:
            sys.stderr.flush()
            os.dup2(self._terminal_fd, 2)
            os.close(self._terminal_fd)
            self._terminal_fd = None
            if self._saved_stderr is not None:
                sys.stderr.close()
                sys.stderr, self._saved_stderr = self._saved_stderr, None
        global _current
        if _current is self:
            _current = None


_current: ConsoleRouting | None = None


def current() -> ConsoleRouting | None:
    """The routing :func:`configure_logging` set up in this process, if any."""
    return _current


def configure_logging(log_file: str | None, verbose: bool) -> ConsoleRouting:
    """Send Ray's logs, Python warnings and the driver's native stderr to ``log_file`` unless ``verbose``.

    ``log_file`` is a local path; its folder is created. ``None`` discards what would have gone there.
    With ``verbose`` nothing changes: Ray prints as it does by default. Call before ``ray.init``
    (:func:`raymm.runtime.init_ray` reads the result through :func:`current`). A second call replaces
    the first routing. Returns the routing; its ``close()`` undoes it (tests, or a process that goes on).
    """
    global _current
    if _current is not None:
        if _current.log_file == log_file and _current.verbose == verbose:
            return _current
        _current.close()
    routing = ConsoleRouting(log_file=log_file, verbose=verbose, interactive=is_interactive())
    _current = routing
    if verbose:
        return routing
    target = log_file or os.devnull
    if log_file is not None:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
    handler = logging.FileHandler(target, mode="a", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    routing._file_handler = handler
    routing.route_ray_loggers()
    _redirect_native_stderr(routing, target)
    return routing


def _writes_to_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


def _redirect_native_stderr(routing: ConsoleRouting, target: str) -> None:
    """Point descriptor 2 at ``target``; keep Python's ``sys.stderr`` on the terminal.

    Ray's C++ logger writes ERROR lines to descriptor 2 of the driver, past Python's ``logging``; Ray
    writes them to ``python-core-driver-*.log`` in its session folder as well, so nothing is lost.
    """
    try:
        os.fstat(2)
    except OSError:
        return  # no descriptor 2 (a daemon): nothing to route
    sys.stderr.flush()
    terminal_fd = os.dup(2)
    log_fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    routing._terminal_fd = terminal_fd
    try:
        python_on_fd2 = sys.stderr.fileno() == 2
    except (AttributeError, ValueError, io.UnsupportedOperation):
        python_on_fd2 = False  # sys.stderr is not a file (pytest's capture, an IDE): leave it
    if python_on_fd2:
        routing._saved_stderr = sys.stderr
        sys.stderr = io.TextIOWrapper(
            io.FileIO(os.dup(terminal_fd), "w"),
            encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
            errors="backslashreplace",
            line_buffering=True,
            write_through=True,
        )


# --- for people: stages, progress, summary ---------------------------------------------------


class Stage:
    """One numbered step of a command: ``[i/n] what ...`` when it starts, ``... done in X s`` when it ends.

    On an exception it prints ``[i/n] what: failed after X s`` and lets the exception go on.
    ``elapsed_s`` holds the duration once the block has ended.
    """

    def __init__(self, index: int, total: int, what: str, stream: TextIO | None = None) -> None:
        self.index, self.total, self.what = index, total, what
        self.stream = stream
        self.elapsed_s = 0.0
        self._start = 0.0

    def __enter__(self) -> Stage:
        self._start = time.perf_counter()
        print(f"[{self.index}/{self.total}] {self.what} ...", file=self.stream or sys.stdout, flush=True)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.elapsed_s = time.perf_counter() - self._start
        outcome = "done in" if kind is None else "failed after"
        line = f"[{self.index}/{self.total}] {self.what}: {outcome} {self.elapsed_s:.1f} s"
        print(line, file=self.stream or sys.stdout, flush=True)


class ProgressBar(Protocol[T_co]):
    """What :func:`progress` returns: iterate it, or ``update`` it by hand; ``close`` when done."""

    def __iter__(self) -> Iterator[T_co]: ...

    def update(self, n: float | None = 1) -> bool | None: ...

    def close(self) -> None: ...


def progress(
    iterable: Iterable[T] | None = None,
    *,
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    stream: TextIO | None = None,
) -> ProgressBar[T]:
    """A progress bar for people: a tqdm bar on a terminal, a few plain lines otherwise.

    Off a terminal (a log, CI, a pipe) a bar would print carriage-return frames; instead a line
    at each quarter of ``total`` and one at the end (with an unknown total: every 30 s and at the end).
    ``enabled=False`` (``--quiet``) prints nothing. ``total`` defaults to ``len(iterable)`` when it has one.
    """
    from tqdm import tqdm

    stream = stream or sys.stderr
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if not enabled or is_interactive(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, file=stream)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, stream=stream)


class LineProgress(Generic[T]):
    """The off-terminal form of :func:`progress`: at most five lines, each a complete sentence."""

    interval_s = 30.0

    def __init__(
        self, iterable: Iterable[T] | None, *, total: float | None, desc: str, unit: str, stream: TextIO
    ) -> None:
        self.iterable, self.total, self.desc, self.unit, self.stream = iterable, total, desc, unit, stream
        self.n = 0.0
        self._start = self._last = time.perf_counter()
        self._quarters_said = 0
        self._closed = False

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError(f"progress {self.desc!r} has no iterable; call update() instead")
        try:
            for element in self.iterable:
                yield element
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress[T]:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: float | None = 1) -> bool | None:
        self.n += n or 0
        now = time.perf_counter()
        if self.total:
            quarters = min(3, math.floor(4 * self.n / self.total))
            if quarters > self._quarters_said and self.n < self.total:
                self._quarters_said = quarters
                self._say(f"{self._count()} ({100 * self.n / self.total:.0f}%)")
        elif now - self._last >= self.interval_s:
            self._last = now
            self._say(f"{self._count()} so far")
        return None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._say(f"{self._count()} in {time.perf_counter() - self._start:.1f} s")

    def _count(self) -> str:
        done = f"{self.n:,.0f}"
        return f"{done}/{self.total:,.0f} {self.unit}" if self.total else f"{done} {self.unit}"

    def _say(self, text: str) -> None:
        print(f"  {self.desc}: {text}", file=self.stream, flush=True)


def summary(
    title: str, rows: Sequence[tuple[str, Any]], elapsed_s: float | None = None, stream: TextIO | None = None
) -> None:
    """Print a one-screen summary block of a command: counts and where its outputs went."""
    out = stream or sys.stdout
    width = max([len(key) for key, _ in rows] + [10])
    bar = "=" * 72
    heading = f"raymm {title}" + (f"  ({elapsed_s:.1f} s)" if elapsed_s is not None else "")
    lines = [bar, heading, "-" * 72, *(f"  {key:<{width}}  {value}" for key, value in rows), bar]
    print("\n".join(lines), file=out, flush=True)


@dataclass
class Plan:
    """What a command will do: the steps and where each writes. Printed by ``--dry-run``."""

    command: str
    steps: list[tuple[str, str]] = field(default_factory=list)

    def add(self, step: str, target: str) -> None:
        self.steps.append((step, target))

    def render(self, resolved_config: str) -> str:
        """The plan, then ``resolved_config`` (the configuration as YAML)."""
        lines = [f"plan for `raymm {self.command}` (dry run: nothing is written)"]
        lines += [f"  {i}. {step:<34} -> {target}" for i, (step, target) in enumerate(self.steps, 1)]
        lines += ["", "resolved configuration:", resolved_config]
        return "\n".join(lines)


class StageResult:
    """A stage's typed result that knows how to print its own summary (:func:`print_result`).

    Subclasses are dataclasses; they set ``title`` and override :meth:`summary_rows`, and where they
    have them ``elapsed_s``, :meth:`details`, :meth:`warnings` and :attr:`ok`.
    """

    title: str = ""

    @property
    def elapsed_s(self) -> float | None:
        """Seconds the stage took, shown in the block's heading (None: not shown)."""
        return None

    def summary_rows(self) -> list[tuple[str, Any]]:
        """The summary block's rows (an empty list prints no block)."""
        raise NotImplementedError

    def details(self) -> list[str]:
        """Lines printed after the block, on stdout."""
        return []

    def warnings(self) -> list[str]:
        """Messages for people, printed as ``raymm: warning: ...`` on stderr after the block."""
        return []

    @property
    def ok(self) -> bool:
        """False when the stage found problems (the CLI exits 1)."""
        return True


def warning(message: str) -> None:
    """Print one ``raymm: warning: ...`` line on stderr, the form of ``raymm: error: ...``.

    Not a Python warning: the console routing sends those to the log file, and these are for people.
    """
    print(f"raymm: warning: {message}", file=sys.stderr, flush=True)


def print_result(result: StageResult) -> None:
    """Print ``result``'s summary block, then its detail lines and its warnings."""
    rows = result.summary_rows()
    if rows:
        summary(result.title, rows, result.elapsed_s)
    for line in result.details():
        print(line, flush=True)
    for message in result.warnings():
        warning(message)
