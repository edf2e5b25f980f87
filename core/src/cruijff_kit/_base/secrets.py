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
