"""Quiet logs: known third-party noise kept out of stage logs and ``ck`` output, counted in one line.

One list, :data:`NOISE`, names the messages that third-party libraries print on every start and
that say nothing about the user's run (an optional compiled kernel that is not built for this
machine, a deprecation inside a library that the library itself triggers). Each entry says which
library emits it and why it is harmless. The list is applied in three places:

- **Python warnings and log records** of the process (:func:`quiet`, installed by ``ck stage`` at
  the start of a stage and by ``ck`` for every command): a noise warning or log record is not shown;
  its text goes to a side file instead.
- **The stage's log stream** (:class:`LineFilter`, in the log filter process of ``ck stage``): lines
  written by C/C++ code, by subprocesses and by libraries that print straight to the streams.
  Only whole lines are hidden; every other byte is written unchanged.
- **CLI output**: ``ck`` installs :func:`quiet` around every command, with its ``sys.stdout`` and
  ``sys.stderr`` behind a :class:`QuietStream` (lines Python code prints, such as inspect-ai's banner).

What is hidden is kept, in full, in a side file (``logs/<stage>.noise.log`` for a stage) and counted
in one line at the end: ``ck: hid N known third-party messages (full text: FILE)``. Real warnings
(anything not in the list), errors and tracebacks are never hidden: a line inside a traceback is kept
even when it matches the list, and a log record carrying a traceback is kept. ``CK_SHOW_NOISE=1``
(or ``ck --show-noise``) shows everything.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

#: Set to ``1`` to show every third-party message (nothing is hidden, no count line).
SHOW_NOISE_ENV = "CK_SHOW_NOISE"


@dataclass(frozen=True)
class Noise:
    """One known third-party message: ``pattern`` is searched in its first line (a Python warning as
    ``warnings`` formats it, a log record's message, or a line of the stream)."""

    name: str
    #: the library that emits it
    source: str
    #: a regular expression
    pattern: str
    #: loggers that emit it as a log record (a filter is added to each)
    loggers: tuple[str, ...] = ()
    #: lines that directly follow the first one and belong to the same message
    more: str | None = None
    #: at most this many following lines (``more``)
    max_more: int = 0
    #: the message is a block that ends with an empty line (it is held until then)
    until_blank: bool = False


#: The source line that ``warnings`` prints under a warning (``  warnings.warn(``).
_WARNING_SOURCE = r"^  \S"

#: The known third-party noise (patterns are regular expressions, compiled on first use). Add an entry
#: only for a message that appears on every run whatever the user's spec, and that the user cannot act on.
NOISE: tuple[Noise, ...] = (
    # torchao loads its optional compiled kernels (`_C*.so`, built for other CUDA/Python versions
    # than this machine's) at import and logs a warning for each that does not load; the pure-Python
    # paths cruijff-kit uses do not need them.
    Noise("torchao-kernels", "torchao", r"Failed to load \S*torchao/_C[^\s/]*\.so: ", loggers=("torchao",)),
    # torch warns that torchao registers its Enum classes with pytree's register_constant(); torch
    # itself now handles them, and torchao (not cruijff-kit) makes the call at import.
    Noise("torch-pytree-enum", "torch (called by torchao)",
          r"is an Enum subclass and is now natively supported by torch\.compile as an opaque value "
          r"type\. Calling register_constant\(\) on Enum subclasses is deprecated",
          loggers=("torch.utils._pytree",)),
    # bitsandbytes looks for an optional CPU 4-bit kernel in the `kernels` package at import; without
    # it the built-in kernel is used (4-bit models still work).
    Noise("bitsandbytes-cpu-kernel", "bitsandbytes", r"Failed to load CPU gemm_4bit_forward from kernels-community: ",
          loggers=("bitsandbytes.backends.cpu.ops", "bitsandbytes")),
    # transformers deprecated `is_gradient_checkpointing`; peft and trl still read it while wrapping
    # the model. Nothing in a spec calls it; the renamed property does the same.
    Noise("transformers-gradient-checkpointing", "transformers (called by peft/trl)",
          r"FutureWarning: `is_gradient_checkpointing` is deprecated and will be removed in v\d+",
          more=_WARNING_SOURCE, max_more=1),
    # torch deprecated `torch.set_vital` (telemetry); torchdata's StatefulDataLoader (torchtune) still
    # calls it on every loader. It does nothing now.
    Noise("torch-set-vital", "torch (called by torchdata)", r"Warning: 'set_vital' is deprecated, please do not call",
          more=_WARNING_SOURCE, max_more=1),
    # inspect-ai prints a banner naming its version and the hooks that are enabled (cruijff-kit's own
    # progress hook) when an eval starts; the version is recorded in the run's environment record.
    Noise("inspect-hooks-banner", "inspect-ai", r"^inspect_ai v\d[\w.+-]*\s*$", until_blank=True),
    # The Rust tokenizers library warns when a process forks after using its thread pool (data loader
    # workers, evaluation subprocesses); it then turns its parallelism off in the child, which is safe.
    Noise("tokenizers-fork", "huggingface tokenizers",
          r"^huggingface/tokenizers: The current process just got forked, after parallelism has already been "
          r"used\. Disabling parallelism to avoid deadlocks",
          more=r"^(To disable this warning, you can either:|\t- Avoid using `tokenizers` before the fork"
               r"|\t- Explicitly set the environment variable TOKENIZERS_PARALLELISM)", max_more=3),
)

#: A block (``until_blank``) longer than this is not the known message: it is shown.
MAX_BLOCK_LINES = 40


def show_noise() -> bool:
    """Whether every message is shown (``CK_SHOW_NOISE=1``)."""
    return os.environ.get(SHOW_NOISE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=64)
def rx(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled, once (on first use: ``ck``'s start does not pay for the list)."""
    return re.compile(pattern)


def match(line: str) -> Noise | None:
    """The entry of :data:`NOISE` whose pattern is in ``line`` (one line of text), if any."""
    for noise in NOISE:
        if rx(noise.pattern).search(line):
            return noise
    return None


def count_line(count: int, path: Path | str) -> str:
    """The line that says how many messages were hidden and where their full text is."""
    word = "message" if count == 1 else "messages"
    return f"ck: hid {count} known third-party {word} (full text: {path})"


# --------------------------------------------------------------------------- the side file
#: Starts each hidden message in a side file (the count line counts these).
RECORD_START = "--- ck: hidden "
#: The side file of a ``ck stage`` whose output goes through its log filter: the filter hides stream
#: lines into it, the stage's processes their warnings and log records, and the filter counts them all.
NOISE_FILE_ENV = "CK_NOISE_FILE"
#: The size of that side file when the stage began (given to the log filter): it counts what is after.
NOISE_START_ENV = "CK_NOISE_START"


@dataclass
class NoiseSink:
    """Where hidden messages go: appended to ``path`` (created on the first one, secret values
    scrubbed), each after a line ``--- ck: hidden NAME from SOURCE (WHERE)``, and counted."""

    path: Path
    count: int = 0
    #: while a stage's log filter runs in this process (``CK_NOISE_FILE`` set), use its side file
    #: instead; the filter counts those messages, so :attr:`count` does not
    follow_stage: bool = False
    _patterns: Any = field(default=None, repr=False)

    def hide(self, text: str, noise: Noise, where: str) -> bool:
        """Keep ``text`` (one whole message) in the side file and count it; False when the file
        cannot be written (then the caller shows the message: nothing is lost)."""
        from cruijff_kit._base.secrets import _patterns, _scrub_text, secret_values

        stage_file = os.environ.get(NOISE_FILE_ENV) if self.follow_stage else None
        path = Path(stage_file) if stage_file else self.path
        if self._patterns is None:
            self._patterns = _patterns(secret_values())
        if not text.endswith("\n"):
            text += "\n"
        record = f"{RECORD_START}{noise.name} from {noise.source} ({where})\n{text}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8", errors="surrogateescape") as fh:
                fh.write(_scrub_text(record, self._patterns) if self._patterns else record)
        except OSError:  # a full disk or a read-only folder
            return False
        if not stage_file:
            self.count += 1
        return True


def count_records(path: Path | str, offset: int = 0) -> int:
    """How many hidden messages ``path`` holds after byte ``offset``."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return sum(1 for line in fh if line.startswith(RECORD_START.encode()))
    except OSError:
        return 0


def file_size(path: Path | str) -> int:
    """The size of ``path`` in bytes; 0 when it does not exist."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def side_file_of(log: Path | str) -> Path:
    """The side file of a log: ``logs/<stage>.err`` -> ``logs/<stage>.noise.log``."""
    log = Path(log)
    return log.with_name((log.stem if log.suffix in (".err", ".out") else log.name) + ".noise.log")


def file_of_descriptor(fd: int) -> Path | None:
    """The regular file open on ``fd`` (a log a scheduler gave), or None (a pipe, a terminal, unknown)."""
    import stat

    try:
        st = os.fstat(fd)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    candidates = []
    try:
        candidates.append(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        pass
    try:
        import fcntl

        getpath = getattr(fcntl, "F_GETPATH", None)  # macOS
        if getpath is not None:
            candidates.append(fcntl.fcntl(fd, getpath, bytes(1024)).split(b"\0", 1)[0].decode())
    except (OSError, ValueError):
        pass
    for name in candidates:
        try:
            other = os.stat(name)
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            return Path(name)
    return None


# --------------------------------------------------------------------------- in-process (warnings, logging)
_SINKS: list[NoiseSink] = []


def _quiet_showwarning(original: Any) -> Any:
    """``warnings.showwarning`` while :func:`quiet` is on: a known noise warning goes to the sink, any
    other to ``original`` (the function it replaces)."""
    def showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    file: TextIO | None = None, line: str | None = None) -> None:
        if _SINKS and not show_noise():
            text = warnings.formatwarning(message, category, filename, lineno, line)
            noise = match(text.split("\n", 1)[0])
            if noise is not None and _SINKS[-1].hide(text, noise, "warning"):
                return
        original(message, category, filename, lineno, file, line)

    showwarning.ck_quiet = True  # type: ignore[attr-defined]
    return showwarning


def _record_filter(record: logging.LogRecord) -> bool:
    """A logger filter: False (not emitted) for a known noise record without a traceback."""
    if not _SINKS or show_noise() or record.exc_info or record.stack_info:
        return True
    try:
        text = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string: logging reports it itself
        return True
    noise = match(text.split("\n", 1)[0])
    if noise is None:
        return True
    return not _SINKS[-1].hide(f"{record.levelname} {record.name}: {text}", noise, "log record")


def _install() -> None:
    """Route warnings and the listed loggers through the noise filters (once; again if replaced)."""
    if not getattr(warnings.showwarning, "ck_quiet", False):
        warnings.showwarning = _quiet_showwarning(warnings.showwarning)
    for name in sorted({n for noise in NOISE for n in noise.loggers} | {"py.warnings"}):
        logger = logging.getLogger(name)
        if _record_filter not in logger.filters:
            logger.addFilter(_record_filter)


@contextmanager
def quiet(path: Path | str, *, follow_stage: bool = False, streams: bool = False) -> Iterator[NoiseSink]:
    """Hide known noise warnings and log records of this process while in the block, keeping them
    in ``path``; yields the sink (its ``count``). Entered before the libraries are imported, so their
    import-time messages are caught too. Nested blocks: the innermost one gets the messages.
    ``follow_stage``: see :attr:`NoiseSink.follow_stage` (``ck`` itself, which may become a stage).
    ``streams``: also the noise lines Python code prints on ``sys.stdout``/``sys.stderr``
    (:class:`QuietStream`, put back at the end)."""
    sink = NoiseSink(Path(path), follow_stage=follow_stage)
    _install()
    _SINKS.append(sink)
    swapped: list[tuple[str, QuietStream]] = []
    if streams:
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if stream is not None and not isinstance(stream, QuietStream):
                proxy = QuietStream(stream, name)
                setattr(sys, name, proxy)
                swapped.append((name, proxy))
    try:
        yield sink
    finally:
        _SINKS.remove(sink)
        for name, proxy in swapped:
            held = proxy.release()
            if held:
                proxy.stream.write(held)
            if getattr(sys, name) is proxy:
                setattr(sys, name, proxy.stream)


def cli_noise_file() -> Path:
    """The side file of a ``ck`` command's hidden messages (outside any run folder)."""
    folder = Path(tempfile.gettempdir()) / f"ck-noise-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    return folder / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"


# --------------------------------------------------------------------------- the log stream (lines)
#: Starts a Python traceback (plain or as rich draws it), or a crash report: nothing is hidden from
#: here to its end.
_TRACEBACK = (r"^(Traceback \(most recent call last\):|\u256d\u2500+ Traceback \(most recent call last\)"
              r"|Exception in thread |Fatal Python error: )")
#: A terminal's colour and cursor codes (rich colours what it prints on a terminal): not matched.
_ANSI = r"\x1b\[[0-9;?]*[ -/]*[@-~]"


@functools.lru_cache(maxsize=1)
def _any_noise() -> re.Pattern[str]:
    """One pattern that finds, in many lines at once, every place where a line of :data:`NOISE` or a
    traceback could start (it may find more: those lines are then judged one by one)."""
    parts = [_TRACEBACK, *(noise.pattern for noise in NOISE)]
    return re.compile("|".join(f"(?:{part})" for part in parts), re.MULTILINE)


def _may_hold_noise(buf: bytes, start: int, end: int) -> bool:
    """Whether the whole lines ``buf[start:end]`` may hold a noise line or a traceback's start.

    Lines with a terminal code or a carriage return are always judged one by one (the line filter
    strips those before matching); otherwise one search over all of them says it."""
    if buf.find(b"\x1b", start, end) >= 0 or buf.find(b"\r", start, end) >= 0:
        return True
    return _any_noise().search(buf[start:end].decode("utf-8", "replace")) is not None


class LineFilter:
    """Hides known noise lines in a byte stream that arrives as whole lines (and partial ones).

    :meth:`feed` takes bytes that end at a line end (``\\n`` or ``\\r``) or a partial line written out
    early; it returns what to write now, and each hidden message (whole) goes to :attr:`hidden` with
    its entry. Only whole ``\\n`` lines are judged; a partial line, a progress redraw (``\\r``) and the
    rest of a line whose start was already written pass unchanged. Nothing inside a traceback is
    hidden: from ``Traceback (most recent call last):`` through the exception line up to the next
    empty line. A block (``until_blank``) is held until its empty line; one that does not end so is
    written as it is.
    """

    def __init__(self) -> None:
        self.hidden: list[tuple[Noise, bytes]] = []
        self._buf = b""
        self._midline = False  # the start of the current line was written already
        self._traceback = 0  # 0: no; 1: in its frames; 2: after the exception line, up to an empty line
        self._more: tuple[Noise, int] | None = None  # the hidden message that may go on, lines left
        self._block: list[bytes] = []  # a held block (``until_blank``)
        self._block_noise: Noise | None = None

    def feed(self, data: bytes) -> bytes:
        """Take ``data``; return the bytes to write now."""
        out: list[bytes] = []
        buf = self._buf + data
        start = 0
        if self._midline:  # the rest of a line already partly written
            nl = buf.find(b"\n")
            if nl >= 0:
                self._midline, self._more = False, None
                out.append(self._release() + buf[:nl + 1])
                start = nl + 1
        end = buf.rfind(b"\n") + 1  # whole lines end here
        if end > start and self._idle() and not _may_hold_noise(buf, start, end):
            out.append(buf[start:end])  # no line here can be noise or start a traceback: as it is
            start = end
        while start < end:
            nl = buf.index(b"\n", start)
            out.append(self._line(buf[start:nl + 1]))
            start = nl + 1
        self._buf = b""
        if start < len(buf):  # a progress redraw or a partial line written out early: it passes as it is
            out.append(self._release() + buf[start:])
            self._midline, self._more = True, None
        return b"".join(out)

    def _idle(self) -> bool:
        """Whether no message is being followed (no block held, no traceback, no continuation)."""
        return not self._block and not self._traceback and self._more is None

    def flush(self) -> bytes:
        """What is still held (a block that did not end): written as it is, nothing hidden."""
        rest, self._buf = self._buf, b""
        return self._release() + rest

    def _release(self) -> bytes:
        held, self._block, self._block_noise = b"".join(self._block), [], None
        return held

    def _line(self, line: bytes) -> bytes:
        text = rx(_ANSI).sub("", line.decode("utf-8", "replace")).rstrip("\r\n")
        if self._block:
            if rx(_TRACEBACK).match(text):
                return self._release() + self._line(line)
            self._block.append(line)
            if not text.strip():  # the block's end: it was the known message
                noise = self._block_noise
                assert noise is not None
                self.hidden.append((noise, self._release()))
                return b""
            return self._release() if len(self._block) > MAX_BLOCK_LINES else b""
        if rx(_TRACEBACK).match(text):
            self._traceback, self._more = 1, None
            return line
        if self._traceback:
            if self._traceback == 1 and text and not text[0].isspace():
                self._traceback = 2  # the exception line
            elif self._traceback == 2 and not text.strip():
                self._traceback = 0
            return line
        if self._more is not None:
            noise, left = self._more
            self._more = None
            if noise.more is not None and rx(noise.more).search(text):
                self.hidden[-1] = (noise, self.hidden[-1][1] + line)
                self._more = (noise, left - 1) if left > 1 else None
                return b""
        noise = match(text)
        if noise is None:
            return line
        if noise.until_blank:
            self._block, self._block_noise = [line], noise
            return b""
        self.hidden.append((noise, line))
        if noise.max_more:
            self._more = (noise, noise.max_more)
        return b""


class QuietStream:
    """``sys.stdout`` or ``sys.stderr`` while ``ck`` runs (:func:`quiet` with ``streams``): known noise
    lines that Python code prints (inspect-ai's banner) go to the sink, through a :class:`LineFilter`.
    Text passes unchanged otherwise, a partial line (a prompt, a progress bar) at once; everything
    but ``write`` is the stream's own."""

    def __init__(self, stream: TextIO, where: str) -> None:
        import threading

        self.stream = stream
        self._where = where
        self._lines = LineFilter()
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        """Write ``text`` less the known noise lines; returns ``len(text)``."""
        if not _SINKS or show_noise():
            self.stream.write(self.release() + text)
            return len(text)
        with self._lock:
            out = self._lines.feed(text.encode("utf-8", "surrogatepass"))
            hidden, self._lines.hidden = self._lines.hidden, []
        for noise, raw in hidden:
            if not _SINKS[-1].hide(raw.decode("utf-8", "surrogatepass"), noise, self._where):
                out = raw + out  # the side file cannot be written: shown, not lost
        if out:
            self.stream.write(out.decode("utf-8", "surrogatepass"))
        return len(text)

    def writelines(self, lines: Any) -> None:
        """Write each of ``lines``."""
        for line in lines:
            self.write(line)

    def release(self) -> str:
        """What is held (the start of a block that has not ended), taken out to be written."""
        with self._lock:
            return self._lines.flush().decode("utf-8", "surrogatepass")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class QuietScrubber:
    """The log filter's per-stream step (see :func:`cruijff_kit._base.secrets.filter_log_streams`):
    secret values scrubbed first, then known noise lines moved to the side file. The stream that
    ``counts`` (stderr) ends with the count line of everything hidden into the side file since the
    filter started, by this process and by the stage's own processes (their warnings and log records)."""

    def __init__(self, env: dict[str, str] | None, sink: NoiseSink, where: str, offset: int | None) -> None:
        from cruijff_kit._base.secrets import StreamScrubber

        self._scrubber = StreamScrubber(env)
        self._lines = LineFilter()
        self._sink = sink
        self._where = where
        self._offset = offset  # where the side file ended when the filter started; None: no count line

    @property
    def pending(self) -> bool:
        """Whether a partial line waits to be written."""
        return self._scrubber.pending

    def feed(self, data: bytes) -> bytes:
        """Take ``data``; return the bytes to write now."""
        return self._keep(self._lines.feed(self._scrubber.feed(data)))

    def flush(self, final: bool = False) -> bytes:
        """The partial line; at the ``final`` flush, what is held and (on the counting stream) the count line."""
        out = self._lines.feed(self._scrubber.flush(final))
        if not final:
            return self._keep(out)
        out = self._keep(out) + self._lines.flush()
        if self._offset is not None:
            count = count_records(self._sink.path, self._offset)
            if count:
                out += (count_line(count, self._sink.path) + "\n").encode()
        return out

    def _keep(self, out: bytes) -> bytes:
        """Write the hidden messages to the side file; one that cannot be written is shown instead."""
        lost = b""
        for noise, text in self._lines.hidden:
            if not self._sink.hide(text.decode("utf-8", "surrogateescape"), noise, self._where):
                lost += text
        self._lines.hidden.clear()
        return lost + out


def quiet_log_filter_main(argv: list[str] | None = None) -> None:
    """Entry of ``ck stage``'s log filter process: :func:`cruijff_kit._base.secrets.log_filter_main`,
    each stream also through a :class:`LineFilter` into the side file :data:`NOISE_FILE_ENV` names
    (when it is set and :func:`show_noise` is off)."""
    from cruijff_kit._base.secrets import log_filter_main

    args = sys.argv[1:] if argv is None else argv
    path = os.environ.get(NOISE_FILE_ENV)
    if not path or show_noise():
        log_filter_main(args)
        return
    sink = NoiseSink(Path(path))
    try:
        start = int(os.environ.get(NOISE_START_ENV) or os.path.getsize(path))
    except (OSError, ValueError):
        start = 0
    outs = [int(a.split(":")[1]) for a in args[3:]]
    counter = 2 if 2 in outs else max(outs, default=2)

    def scrubber(fd: int) -> QuietScrubber:
        return QuietScrubber(None, sink, {1: "stdout", 2: "stderr"}.get(fd, f"fd {fd}"),
                             start if fd == counter else None)

    log_filter_main(args, make_scrubber=scrubber)
