"""Keep secrets out of everything the project writes (run folders, scripts, logs, spec snapshots).

A variable is a secret by its name (:func:`is_secret_name`): split on ``_``, one of its parts is a
credential word (``KEY``, ``TOKEN``, ``SECRET``, ``PASS``, ``PASSWD``, ``PASSWORD``, ``CREDENTIAL``,
``AUTH``... see :data:`SECRET_WORDS`), or it is a well-known one (:data:`KNOWN_SECRETS`). Whole parts,
not substrings: ``KEYBOARD``, ``MONKEY`` and ``TOKENIZERS_PARALLELISM`` are not secrets. Names that only
say where a secret lives (a last part ``PATH``, ``FILE``, ``DIR``, ``SOCK``), tokenizer and count
settings (``MAX_TOKENS``, ``PAD_TOKEN``) and the names in :data:`NOT_SECRET_NAMES` are not secrets.

Values (:func:`secret_values`): 8 characters or more are scrubbed wherever they occur; 4 to 7
characters (with a letter) only as a whole word; shorter values and ``true``/``false``-like words
cannot be told apart from ordinary text and are left alone.

A secret value inside a local path to a file or folder that exists (``/scratch/hunter22/runs``) is
kept: the folder's name is visible to anyone who can list its parent, and rewriting it would break
every file that names the path. Files the project reads back (a run's resolved ``spec.yaml``, job
scripts) are never rewritten at all: :func:`refuse_secret_values` refuses them instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cruijff_kit._base.errors import SpecError

#: Environment variables that always count as secrets (whatever the name rule says).
KNOWN_SECRETS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "OPENAI_API_KEY", "RUNPOD_API_KEY",
                 "ANTHROPIC_API_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
                 "GITHUB_TOKEN", "GH_TOKEN", "AZURE_CLIENT_SECRET", "DATABASE_URL", "PGPASSWORD",
                 "MYSQL_PWD", "NETRC_PASSWORD")
#: Parts of a name (split on ``_``) that make it a secret.
SECRET_WORDS = frozenset({
    "KEY", "KEYS", "APIKEY", "ACCESSKEY", "SECRETKEY", "PRIVATEKEY", "TOKEN", "TOKENS", "AUTHTOKEN",
    "ACCESSTOKEN", "SECRET", "SECRETS", "PASS", "PASSWD", "PASSWORD", "PASSWORDS", "PASSPHRASE",
    "CREDENTIAL", "CREDENTIALS", "CREDS", "AUTH",
})
#: Names that match the rule but are known not to hold a secret (one list, here).
NOT_SECRET_NAMES = frozenset({
    "HF_TOKEN_PATH", "SSH_AUTH_SOCK", "PASSWORD_STORE_DIR", "PASSWORD_STORE_KEY", "GPG_AGENT_INFO",
    "KEYTIMEOUT", "GOOGLE_APPLICATION_CREDENTIALS", "AWS_SHARED_CREDENTIALS_FILE", "HF_HUB_DISABLE_IMPLICIT_TOKEN",
    "GIT_ASKPASS", "SSH_ASKPASS", "SUDO_ASKPASS", "SSH_ASKPASS_REQUIRE", "KRB5CCNAME", "XAUTHORITY",
    "TOKENIZERS_PARALLELISM", "PASSWORD_STORE_CLIP_TIME", "PASSWORD_STORE_GENERATED_LENGTH",
})
#: A last part that names where a secret is kept (or the variable holding it), not the secret.
_WHERE_PARTS = frozenset({"PATH", "FILE", "DIR", "SOCK", "SOCKET", "ENDPOINT", "HOST", "PORT", "ENV", "VAR",
                          "NAME", "NAMES", "REF", "REFS"})
#: Parts before ``TOKEN(S)`` that make it a tokenizer or count setting (``MAX_TOKENS``, ``PAD_TOKEN``).
_TOKENIZER_PARTS = frozenset({"MAX", "MIN", "NUM", "NEW", "TOTAL", "PAD", "EOS", "BOS", "UNK", "SEP", "CLS",
                              "MASK", "SPECIAL", "STOP", "START", "END", "EXTRA", "ADDITIONAL", "CHAT"})
#: Values too ordinary to scrub (they would garble every file), whatever the variable.
_ORDINARY = frozenset({"true", "false", "none", "null", "yes", "no", "on", "off", "auto", "default"})
#: Values at least this long are scrubbed wherever they occur; shorter ones only as whole words.
SUBSTRING_MIN = 8
#: Values shorter than this are never scrubbed.
VALUE_MIN = 4
#: A local absolute (or ``~``) path inside text; never a URL's path (``https://host/x``).
_PATH_TOKEN = re.compile(r"(?<![\w.~/-])~?/(?!/)[\w.\-+@%~/]*")


def is_secret_name(name: str) -> bool:
    """True when an environment variable of this name must never be written out."""
    name = name.upper()
    if name in KNOWN_SECRETS:
        return True
    if name in NOT_SECRET_NAMES:
        return False
    parts = [p for p in name.split("_") if p]
    if not parts or parts[-1] in _WHERE_PARTS:
        return False
    for i, part in enumerate(parts):
        if part not in SECRET_WORDS:
            continue
        if part in ("TOKEN", "TOKENS") and i > 0 and parts[i - 1] in _TOKENIZER_PARTS:
            continue
        return True
    return False


def _scrubbable(value: str) -> bool:
    return len(value) >= VALUE_MIN and value.strip().lower() not in _ORDINARY and \
        (len(value) >= SUBSTRING_MIN or any(c.isalpha() for c in value))


def secret_values(env: dict[str, str] | None = None) -> dict[str, str]:
    """Map secret value -> variable name for the secrets set in ``env`` (default: os.environ)."""
    source: Mapping[str, str] = os.environ if env is None else env
    found: dict[str, str] = {}
    for name, value in sorted(source.items()):
        if value and is_secret_name(name) and _scrubbable(value):
            found.setdefault(value, name)
    return found


def _patterns(values: dict[str, str]) -> list[tuple[re.Pattern[str], str]]:
    out = []
    for value in sorted(values, key=len, reverse=True):
        text = re.escape(value)
        if len(value) < SUBSTRING_MIN:
            text = rf"(?<![A-Za-z0-9]){text}(?![A-Za-z0-9])"
        out.append((re.compile(text), values[value]))
    return out


def _in_existing_path(text: str, start: int, end: int, base: Path | None) -> bool:
    """Whether ``text[start:end]`` lies in a local path whose folder or file holding it exists."""
    spans = [(m.start(), m.end()) for m in _PATH_TOKEN.finditer(text)]
    if base is not None and text and not any(c.isspace() for c in text) and "://" not in text:
        spans.append((0, len(text)))  # a whole value that is a path, maybe relative to ``base``
    for lo, hi in spans:
        if lo <= start and end <= hi:
            cut = text.find("/", end, hi)
            p = Path(text[lo:cut if cut >= 0 else hi]).expanduser()
            if not p.is_absolute():
                if base is None:
                    continue
                p = base / p
            try:
                if p.exists():
                    return True
            except OSError:
                continue
    return False


def _scrub_text(text: str, patterns: list[tuple[re.Pattern[str], str]], base: Path | None = None) -> str:
    for pattern, name in patterns:
        if pattern.search(text) is None:
            continue
        text = pattern.sub(lambda m, t=text, n=name: m.group(0) if _in_existing_path(t, m.start(), m.end(), base)
                           else f"<{n}>", text)
    return text


def scrub(obj: Any, env: dict[str, str] | None = None) -> Any:
    """Return ``obj`` (str, list, dict, nested) with every secret value replaced by ``<NAME>``.

    An occurrence inside the local path of an existing file or folder is kept (see the module's text).
    """
    patterns = _patterns(secret_values(env))
    if not patterns:
        return obj

    def fix(x: Any) -> Any:
        if isinstance(x, str):
            return _scrub_text(x, patterns)
        if isinstance(x, dict):
            return {k: fix(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return type(x)(fix(v) for v in x)
        return x

    return fix(obj)


def _leaves(obj: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(obj, str):
        yield where, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{where}.{k}" if where else str(k))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _leaves(v, f"{where}.{i}" if where else str(i))


def secrets_in(obj: Any, env: dict[str, str] | None = None, base: Path | None = None) -> list[tuple[str, str]]:
    """``(path, variable)`` for each string in ``obj`` that holds a secret's value (outside existing paths).

    ``path`` is the dotted place in ``obj`` (``eval.0.model_args.api_key``; empty for a plain string).
    Values that are paths relative to ``base`` count as paths.
    """
    patterns = _patterns(secret_values(env))
    found: list[tuple[str, str]] = []
    if not patterns:
        return found
    for where, text in _leaves(obj, ""):
        for pattern, name in patterns:
            if any(not _in_existing_path(text, m.start(), m.end(), base) for m in pattern.finditer(text)):
                found.append((where, name))
                break
    return found


def refuse_secret_values(obj: Any, *, file: str, what: str = "value", base: Path | None = None,
                         env: dict[str, str] | None = None) -> Any:
    """Return ``obj`` unchanged, or raise a :class:`SpecError` when a secret's value is in it.

    For files the project reads back (a run's ``spec.yaml``, a job script), where replacing the value
    would break the run. The message names the file, the place and the variable, never the value.
    """
    found = secrets_in(obj, env, base)
    if not found:
        return obj
    where, name = found[0]
    raise SpecError(
        f"this {what} would hold the value of the secret environment variable ${name}, and cruijff-kit never "
        "writes a secret into a file.", file=file, path=where or None,
        hint=f"If the value is a credential, do not write it: name the environment variable instead (jobs and "
             f"pods get ${name} from the environment). If it only happens to equal the value of ${name} (a "
             f"short password that is also a word or a name), change {name} or unset it for this command: "
             f"`env -u {name} ck ...`.")


#: ``export NAME=value`` / ``NAME=value cmd`` / ``setenv NAME value`` in one shell line.
_ASSIGN = re.compile(r"(?:^|[\s;&|(])(?:(?:export|readonly|declare\s+-x)\s+)?([A-Za-z_][A-Za-z0-9_]*)=(\S*)"
                     r"|(?:^|[\s;&|(])setenv\s+([A-Za-z_][A-Za-z0-9_]*)\s+(\S*)")
#: ``--api-key=value``, ``--token value`` in a list of command-line arguments.
_OPTION = re.compile(r"^-{1,2}([A-Za-z][A-Za-z0-9_-]*)(?:=(.*))?$")
#: ``scheme://user:password@host``.
_URL_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]+:([^/\s@]+)@")


def _literal(value: str) -> bool:
    """A value written out, not a reference to a variable (``$X``, ``${X}``, ``{{ RUNPOD_SECRET_x }}``)."""
    value = value.strip().strip("'\"")
    return bool(value) and not value.startswith(("$", "{{", "%(")) and "$(" not in value


def literal_secret(text: str, *, next_word: str | None = None) -> str | None:
    """What makes one line or argument a literal credential, or None.

    A shell line that sets a secret-named variable to a literal (``export HF_TOKEN=hf_...``), an
    option named like a secret with a literal value (``--api-key=abc``; ``next_word`` is the
    argument after it), or a URL with a password in it (``https://user:pw@host``).
    """
    for m in _ASSIGN.finditer(text):
        name, value = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        if is_secret_name(name) and _literal(value):
            return f"sets {name} to a literal value"
    opt = _OPTION.match(text.strip())
    if opt and is_secret_name(opt.group(1).replace("-", "_")):
        value = opt.group(2) if opt.group(2) is not None else \
            (next_word if next_word and not next_word.startswith("-") else None)
        if value is not None and _literal(value):
            return f"passes a literal value to {text.strip().split('=', 1)[0]}"
    m = _URL_PASSWORD.search(text)
    if m and _literal(m.group(1)):
        return "holds a URL with a password in it"
    return None


def refuse_literal_secrets(obj: Any, *, file: str, where: str = "", env: dict[str, str] | None = None) -> None:
    """Raise a :class:`SpecError` when a profile or spec value holds a literal credential.

    Each string is checked with :func:`literal_secret` (list items also with the item after them, for
    ``--token VALUE``) and for the values of secret environment variables (:func:`secrets_in`). The
    message names the file and the place and says to name the environment variable instead.
    """
    def walk(x: Any, at: str) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{at}.{k}" if at else str(k))
        elif isinstance(x, list | tuple):
            for i, v in enumerate(x):
                nxt = x[i + 1] if i + 1 < len(x) and isinstance(x[i + 1], str) else None
                if isinstance(v, str):
                    check(v, f"{at}.{i}" if at else str(i), nxt)
                else:
                    walk(v, f"{at}.{i}" if at else str(i))
        elif isinstance(x, str):
            check(x, at, None)

    def check(text: str, at: str, nxt: str | None) -> None:
        why = literal_secret(text, next_word=nxt)
        if why:
            raise SpecError(f"this value {why}, which would be written into job scripts, records or requests.",
                            file=file, path=at or None,
                            hint="Keep credentials in environment variables and name the environment variable "
                                 "instead (`export HF_TOKEN=$HF_TOKEN`, `--token=$MY_TOKEN`); set it in your "
                                 "shell before `ck run`.")

    walk(obj, where)
    found = secrets_in(obj, env)
    if found:
        at, name = found[0]
        at = f"{where}.{at}" if where and at else (at or where)
        raise SpecError(f"this value holds the value of the secret environment variable ${name}.", file=file,
                        path=at or None, hint=f"Do not write its value: name the environment variable instead "
                        f"(`${name}`); if the match is a coincidence, change {name} or unset it for this command.")


# --------------------------------------------------------------------------- streams (a stage's own output)
#: A partial line (no ``\n`` or ``\r`` yet) is written out after this many seconds without its end.
PARTIAL_AFTER = 0.2
#: A partial line longer than this is written out at once (less a possible start of a secret).
MAX_PARTIAL = 65536


def stream_values(env: dict[str, str] | None = None) -> dict[str, str]:
    """:func:`secret_values`, plus each line (of 8 characters or more) of a value that spans lines (a
    PEM key): a stream is scrubbed line by line, so a value cut by a line break is matched by its lines."""
    values = secret_values(env)
    for value, name in list(values.items()):
        for line in re.split(r"[\r\n]+", value):
            line = line.strip()
            if len(line) >= SUBSTRING_MIN and line != value and _scrubbable(line):
                values.setdefault(line, name)
    return values


def _cut_char(data: bytes) -> int:
    """How many bytes at the end of ``data`` start a UTF-8 character that is not complete yet (0 to 3)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # a lead byte (or ASCII)
            need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
            return back if need > back else 0
    return 0


class StreamScrubber:
    """Scrubs secret values (by :func:`scrub`'s rules) out of a byte stream that arrives in pieces cut
    anywhere: whole lines (ending in ``\\n`` or ``\\r``, so progress bars still redraw) are written at once;
    a partial line only when :meth:`flush` is asked, less any end of it that could be the start of a
    secret (that waits for the rest). Bytes that are not UTF-8 pass unchanged."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        values = stream_values(env)
        self._patterns = _patterns(values)
        self._values = sorted(values, key=len, reverse=True)
        self._starts = [v for v in self._values if "\n" not in v and "\r" not in v]  # a line cannot hold the others
        self._names = values
        self._buf = b""

    @property
    def pending(self) -> bool:
        """Whether a partial line waits to be written."""
        return bool(self._buf)

    def feed(self, data: bytes) -> bytes:
        """Take ``data``; return the scrubbed bytes that can be written now (whole lines)."""
        self._buf += data
        cut = max(self._buf.rfind(b"\n"), self._buf.rfind(b"\r")) + 1
        if len(self._buf) - cut > MAX_PARTIAL:
            return self._take(cut) + self.flush()
        return self._take(cut)

    def flush(self, final: bool = False) -> bytes:
        """The partial line, scrubbed; unless ``final``, an end that could start a secret is kept back."""
        if final:
            return self._take(len(self._buf))
        keep = _cut_char(self._buf)
        text = self._buf[:len(self._buf) - keep].decode("utf-8", "surrogateescape")
        held = self._held(text)
        return self._take(len(self._buf) - keep - len(held.encode("utf-8", "surrogateescape")))

    def _held(self, text: str) -> str:
        """The longest end of ``text`` that is the start of a secret value (a whole short one included:
        whether it is a word depends on the next character)."""
        best = 0
        for value in self._starts:
            top = len(value) if len(value) < SUBSTRING_MIN else len(value) - 1
            best = max([best, *(k for k in range(best + 1, min(top, len(text)) + 1) if text.endswith(value[:k]))])
        return text[len(text) - best:]

    def _take(self, n: int) -> bytes:
        out, self._buf = self._buf[:n], self._buf[n:]
        if not out or not self._patterns:
            return out
        try:
            text = out.decode("utf-8", "surrogateescape")
            return _scrub_text(text, self._patterns).encode("utf-8", "surrogateescape")
        except Exception:  # never let a stage's output through unscrubbed: plain replacement instead
            for value in self._values:
                out = out.replace(value.encode("utf-8", "surrogateescape"), f"<{self._names[value]}>".encode())
            return out


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``; a full disk or a closed log loses this piece, never the filter."""
    while data:
        try:
            data = data[os.write(fd, data):]
        except InterruptedError:
            continue
        except OSError:
            return


def filter_log_streams(pairs: list[tuple[int, int]], *, parent: int, control: int, group: bool,
                       env: dict[str, str] | None = None, make_scrubber: Any = None) -> None:
    """The log filter of ``ck stage``: copy each ``(read_fd, write_fd)`` pipe to its log through a
    :class:`StreamScrubber` until every writer has closed it.

    ``parent`` is the ``ck stage`` process. A byte on ``control`` means it is ending normally. When it
    is gone without that (SIGKILL, a crash), and ``group`` (it led its process group), the processes
    left in its group (workers, launchers) get SIGTERM, and SIGKILL 10 s later, so none lives on
    unnoticed; a note saying so is written to the last log. SIGTERM/SIGINT/SIGHUP are ignored here, so
    the last lines a stopped stage prints still reach its log; the filter ends at most 15 s after the
    stage when something it started keeps the pipes open. ``make_scrubber(write_fd)``, when given, makes
    each stream's scrubber instead of :class:`StreamScrubber` (same ``feed``/``flush``/``pending``).
    """
    import select
    import signal
    import time

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    scrubbers = {r: (w, make_scrubber(w) if make_scrubber else StreamScrubber(env)) for r, w in pairs}
    waiting: dict[int, float] = {}  # read fd -> since when its partial line waits
    watched = [*scrubbers, control]
    clean, gone_at, stopping = False, 0.0, ""
    while scrubbers:
        for fd in select.select(watched, [], [], PARTIAL_AFTER / 2)[0]:
            data = os.read(fd, 65536)
            if fd == control:
                clean = clean or bool(data)
                if not data:
                    watched.remove(control)
                continue
            out, scrubber = scrubbers[fd]
            _write_all(out, scrubber.feed(data) if data else scrubber.flush(final=True))
            if not data:  # every writer closed it
                del scrubbers[fd]
                watched.remove(fd)
            if scrubber.pending and data:
                waiting.setdefault(fd, time.monotonic())
            else:
                waiting.pop(fd, None)
        now = time.monotonic()
        for fd, start in list(waiting.items()):
            if now - start >= PARTIAL_AFTER:
                out, scrubber = scrubbers[fd]
                _write_all(out, scrubber.flush())
                if scrubber.pending:  # the start of a secret, kept back: try again later
                    waiting[fd] = now
                else:
                    waiting.pop(fd)
        if not gone_at and os.getppid() != parent:
            gone_at = now
            if group and not clean:
                _write_all(pairs[-1][1], f"[ck] the `ck stage` process {parent} ended without finishing (killed?); "
                                         f"stopping the processes it started (process group {parent}).\n".encode())
                stopping = "term" if _signal_group(parent, signal.SIGTERM) else ""
        if stopping == "term" and now - gone_at >= 10:
            _signal_group(parent, signal.SIGKILL)
            stopping = "kill"
        if gone_at and now - gone_at >= 15:
            break
    for out, scrubber in scrubbers.values():
        _write_all(out, scrubber.flush(final=True))


def _signal_group(pgid: int, sig: int) -> int:
    """Send ``sig`` to process group ``pgid``; 1 when it had members, 0 when it is empty."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return 0
    return 1


def log_filter_main(argv: list[str] | None = None, make_scrubber: Any = None) -> None:
    """Entry of the log filter process: ``PARENT CONTROL GROUP READ:WRITE [READ:WRITE]`` (see
    :func:`filter_log_streams`)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    pairs = [(int(r), int(w)) for r, w in (a.split(":") for a in args[3:])]
    filter_log_streams(pairs, parent=int(args[0]), control=int(args[1]), group=args[2] == "1",
                       make_scrubber=make_scrubber)
