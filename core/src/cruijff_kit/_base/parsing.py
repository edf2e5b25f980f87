"""Parsing YAML and JSON that a person wrote, or that someone crafted to hurt, within fixed bounds.

Every YAML or JSON file a user hands to cruijff-kit (a run spec, a profile, a schema, a dataset, a
task file) is read through :func:`parse_yaml_text` or :func:`parse_json_text`:

- a key written twice in one mapping (YAML) or object (JSON) is an error naming it and where it
  is (both lines for YAML), instead of the last one silently winning;
- nesting deeper than :data:`MAX_DEPTH` levels is an error naming the file and line, never a
  ``RecursionError`` (nor, with libyaml, a crash of the interpreter);
- YAML aliases are bounded: at most :data:`MAX_ALIASES` uses and :data:`MAX_ALIAS_NODES` values
  reached through them, so an alias bomb ("billion laughs") fails after reading a few lines; an alias
  inside the value it names (a recursive structure) is an error;
- a plain scalar YAML 1.1 reads as a base-60 number (an unquoted ``30:00`` is the integer 1800,
  ``1:30:00`` is 5400) is an error saying to quote it, so that ``time: 30:00`` can never become
  1800 minutes;
- messages quote the input only through :func:`~cruijff_kit._base.errors.clip` (at most
  ``EXCERPT_CHARS`` characters), never whole.

Syntax errors are left to the caller (``yaml.YAMLError``, ``json.JSONDecodeError``), which words them
for its format; the checks above raise :class:`SpecError` (YAML) or :class:`DataError` (JSON).

Files cruijff-kit writes itself and reads back many times (each run's resolved ``spec.yaml``) are read
with the plain C loader of :func:`cruijff_kit._base.fileio.load_yaml`: their content came through
these checks when the user wrote it.
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import re
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent, MappingEndEvent, ScalarEvent, SequenceEndEvent
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from cruijff_kit._base.errors import DataError, SpecError, clip

#: Deepest nesting of mappings/objects and lists accepted, in YAML and in JSON.
MAX_DEPTH = 100
#: Most alias uses (``*name``) in one YAML document.
MAX_ALIASES = 10_000
#: Most values (mappings, lists and scalars, counted once per use) reached through YAML aliases.
MAX_ALIAS_NODES = 100_000


# --------------------------------------------------------------------------- YAML
class _Refused(Exception):
    """A YAML document breaks one of the bounds; turned into a SpecError naming the file."""

    def __init__(self, message: str, hint: str, path: str | None = None) -> None:
        super().__init__(message)
        self.message, self.hint, self.path = message, hint, path


_NOT_SCALAR = object()
#: Tags YAML 1.1 gives plain scalars such as ``30:00`` (int 1800) and ``1:30.5`` (float 90.5).
_BASE_60_TAGS = frozenset({"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"})


class _CheckedComposer(Composer):
    """PyYAML's composer (building the node graph from parser events), bounding what it builds.

    The nodes of an anchored value are shared by its aliases, so composing (and constructing) an alias
    bomb is cheap; what explodes is every later walk over the data. The composer counts what each
    alias would add if written out, and how deep it would reach, and stops at the bounds.
    """

    def __init__(self) -> None:
        Composer.__init__(self)
        self._depth = 0  # level of the list or mapping being composed (the outermost is 1; scalars add none)
        self._reach = 0  # deepest level reached so far, aliases counted as written out
        self._count = 0  # values so far, aliases counted as written out
        self._aliases = 0
        self._via_aliases = 0
        self._done: dict[int, tuple[int, int]] = {}  # id(anchored node) -> (values, levels)
        self._path: list[str | int] = []

    def _where(self) -> str | None:
        out = ""
        for part in self._path:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        return clip(out, 120) if out else None

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None:
                self._use_alias(target, event)
            return super().compose_node(parent, index)
        event = self.peek_event()
        start = self._count
        self._count += 1
        if isinstance(event, ScalarEvent):
            node = super().compose_node(parent, index)
            self._refuse_sexagesimal(node, event)
            if event.anchor is not None:
                self._done[id(node)] = (1, 0)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(f"nests more than {MAX_DEPTH} levels deep (at line {event.start_mark.line + 1}).",
                           "Flatten the structure: no setting needs that many levels.")
        outer_reach = self._reach
        self._reach = self._depth
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if event.anchor is not None:
            self._done[id(node)] = (self._count - start, self._reach - self._depth)
        self._reach = max(outer_reach, self._reach)
        return node

    def _refuse_sexagesimal(self, node: Any, event: Any) -> None:
        """An unquoted ``30:00`` or ``1:30:00`` is refused: YAML 1.1 reads it as a base-60 number (1800,
        5400), never what a person means by it (thirty minutes, a time of day, a ratio)."""
        if node.tag not in _BASE_60_TAGS or ":" not in node.value or not event.implicit[0]:
            return
        number = self.construct_object(node)  # type: ignore[attr-defined]
        key = self._path[-1] if self._path and isinstance(self._path[-1], str) else None
        text = clip(node.value, 40)
        fix = f'{key}: "{text}"' if key else f'"{text}"'
        raise _Refused(f"the unquoted value `{text}` at line {event.start_mark.line + 1} is a base-60 number to "
                       f"YAML 1.1, which reads it as {clip(number, 40)}, not as the text written.",
                       f"Quote it: {fix} (a time like \"30:00\" is then read as sbatch reads it: 30 minutes).",
                       self._where())

    def _use_alias(self, target: Any, event: Any) -> None:
        name = clip(event.anchor, 40)
        line = event.start_mark.line + 1
        done = self._done.get(id(target))
        if done is None:
            raise _Refused(f"the alias `*{name}` at line {line} is inside the value it names (a recursive "
                           "structure).", "Write the value out instead of the alias.", self._where())
        size, levels = done
        self._aliases += 1
        self._count += size
        self._via_aliases += size
        self._reach = max(self._reach, self._depth + levels)
        if self._aliases > MAX_ALIASES or self._via_aliases > MAX_ALIAS_NODES:
            raise _Refused(f"the alias `*{name}` at line {line} takes the document past {MAX_ALIASES:,} aliases "
                           f"or {MAX_ALIAS_NODES:,} values reached through aliases (an alias bomb, \"billion "
                           "laughs\"?).", "Use fewer aliases (`*name`), or write the values out.", self._where())
        if self._reach > MAX_DEPTH:
            raise _Refused(f"the alias `*{name}` at line {line} makes the data nest more than {MAX_DEPTH} "
                           "levels deep.", "Flatten the structure: no setting needs that many levels.")

    def compose_sequence_node(self, anchor: Any) -> Any:
        start_event = self.get_event()
        tag = start_event.tag
        if tag is None or tag == "!":
            tag = self.resolve(SequenceNode, None, start_event.implicit)
        node = SequenceNode(tag, [], start_event.start_mark, None, flow_style=start_event.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
        index = 0
        while not self.check_event(SequenceEndEvent):
            self._path.append(index)
            node.value.append(self.compose_node(node, index))
            self._path.pop()
            index += 1
        node.end_mark = self.get_event().end_mark
        return node

    def compose_mapping_node(self, anchor: Any) -> Any:
        start_event = self.get_event()
        tag = start_event.tag
        if tag is None or tag == "!":
            tag = self.resolve(MappingNode, None, start_event.implicit)
        node = MappingNode(tag, [], start_event.start_mark, None, flow_style=start_event.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
        seen: dict[Any, int] = {}
        while not self.check_event(MappingEndEvent):
            item_key = self.compose_node(node, None)
            key = self._key_of(item_key)
            line = item_key.start_mark.line + 1
            if key is not _NOT_SCALAR:
                if key in seen:
                    raise _Refused(
                        f"the key `{clip(item_key.value, 80)}` appears twice in one mapping: at line "
                        f"{seen[key]} and again at line {line}.",
                        "Keep one of them (YAML would silently use only the last).", self._where())
                seen[key] = line
            self._path.append(clip(item_key.value, 80) if isinstance(item_key, ScalarNode) else "?")
            item_value = self.compose_node(node, item_key)
            self._path.pop()
            node.value.append((item_key, item_value))
        node.end_mark = self.get_event().end_mark
        return node

    def _key_of(self, node: Any) -> Any:
        """The key as the constructed mapping will hold it (``1`` and ``1.0`` are one key, as in a dict);
        :data:`_NOT_SCALAR` for keys that are not scalars."""
        if not isinstance(node, ScalarNode):
            return _NOT_SCALAR
        make = self.yaml_constructors.get(node.tag)  # type: ignore[attr-defined]
        try:
            value = make(self, node) if make is not None else (node.tag, node.value)
            hash(value)
        except Exception:  # noqa: BLE001 - an unreadable key is reported when the data is built
            value = (node.tag, node.value)
        return value


class _CheckedConstructor(SafeConstructor):
    """SafeConstructor whose value errors (a date that does not exist, an integer of 5,000 digits) name
    the line instead of escaping as a bare ValueError."""

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError, TypeError) as exc:
            raise ConstructorError(None, None, f"cannot read the value `{clip(getattr(node, 'value', ''), 40)}` "
                                   f"({clip(exc, 120)})", node.start_mark) from None


class PyCheckedLoader(Reader, Scanner, Parser, _CheckedComposer, _CheckedConstructor, Resolver):
    """The checked loader on PyYAML's pure-Python scanner and parser."""

    def __init__(self, stream: Any) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        _CheckedComposer.__init__(self)
        _CheckedConstructor.__init__(self)
        Resolver.__init__(self)


try:
    from yaml.cyaml import CParser
except ImportError:  # PyYAML built without libyaml
    CParser = None

if CParser is not None:
    class _CCheckedLoader(_CheckedComposer, CParser, _CheckedConstructor, Resolver):  # type: ignore[misc,valid-type]
        """The checked loader on libyaml's scanner and parser (events in C, nodes composed here)."""

        def __init__(self, stream: Any) -> None:
            CParser.__init__(self, stream)
            _CheckedComposer.__init__(self)
            _CheckedConstructor.__init__(self)
            Resolver.__init__(self)

    CheckedLoader: type = _CCheckedLoader
else:
    CheckedLoader = PyCheckedLoader


def parse_yaml_text(text: str, *, file: str | None = None, loader: type | None = None) -> Any:
    """One YAML document, as ``yaml.safe_load`` reads it, within the bounds of this module.

    A duplicate key, nesting beyond :data:`MAX_DEPTH`, an alias bomb or an unquoted base-60 number raises
    :class:`SpecError` naming ``file``, the line(s) and the fix; a syntax error raises ``yaml.YAMLError`` as
    ``safe_load`` does.
    """
    try:
        return yaml.load(text, Loader=loader or CheckedLoader)  # noqa: S506 - a safe loader
    except _Refused as exc:
        raise SpecError(exc.message, file=file, path=exc.path, hint=exc.hint) from None


def yaml_problem(exc: yaml.YAMLError, text: str | None = None) -> str:
    """`` near line L, column C: PROBLEM`` of a YAML syntax error, the problem clipped.

    A character YAML does not accept (a control character) is reported by its position in the
    text (a character index for PyYAML's reader, a UTF-8 byte offset for libyaml's): given ``text``,
    that position is named as a line and column too."""
    mark = getattr(exc, "problem_mark", None)
    where = f" near line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc)
    if isinstance(exc, yaml.reader.ReaderError):
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        problem = f"unacceptable character #x{char:04x}: {exc.reason}"
        if isinstance(text, str):
            before = (text[:exc.position] if exc.encoding == "unicode"
                      else text.encode("utf-8")[:exc.position].decode("utf-8", "replace"))
            line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
            where = f" near line {line}, column {column}"
    return f"{where}: {clip(problem)}"


# --------------------------------------------------------------------------- JSON
class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return out


#: One decoder for every call (``json.loads`` with a hook would build a new one each time).
_DECODER = json.JSONDecoder(object_pairs_hook=_unique)
_CONTAINERS = (dict, list)


def _too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True when ``value`` nests lists and dicts more than ``limit`` levels deep (no recursion)."""
    if type(value) not in _CONTAINERS:
        return False
    stack = [(value, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        current, depth = pop()
        for child in (current.values() if type(current) is dict else current):
            if type(child) in _CONTAINERS:
                if depth >= limit:
                    return True
                push((child, depth + 1))
    return False


def _may_nest_deep(text: str) -> bool:
    """False when ``text`` has too few brackets to nest deeper than :data:`MAX_DEPTH` (a cheap count that
    spares the walk for each line of a JSON-lines file)."""
    return text.count("[") + text.count("{") > MAX_DEPTH


_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|[\[\]{}]')


def _deep_spot(text: str, limit: int = MAX_DEPTH) -> tuple[int, int] | None:
    """(line, column) where ``text`` first nests deeper than ``limit`` (error path only)."""
    depth = 0
    for m in _TOKEN.finditer(text):
        ch = m.group()
        if ch in "[{":
            depth += 1
            if depth > limit:
                start = m.start()
                return text.count("\n", 0, start) + 1, start - (text.rfind("\n", 0, start) + 1) + 1
        elif ch in "]}":
            depth -= 1
    return None


class _Found(Exception):
    pass


def _duplicate_line(text: str) -> int | None:
    """The line where the object holding a duplicate key starts (error path: a pure-Python re-parse)."""
    decoder = json.JSONDecoder()

    def parse_object(s_and_end: tuple[str, int], strict: bool, scan_once: Any, object_hook: Any,
                     object_pairs_hook: Any, memo: Any = None) -> tuple[Any, int]:
        s, start = s_and_end
        pairs, end = json.decoder.JSONObject(s_and_end, strict, scan_once, None, list, memo)
        if len({k for k, _ in pairs}) != len(pairs):
            raise _Found(s.count("\n", 0, start) + 1)
        return dict(pairs), end

    decoder.parse_object = parse_object  # type: ignore[assignment]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    try:
        decoder.decode(text)
    except _Found as found:
        return int(found.args[0])
    except (ValueError, RecursionError):
        return None
    return None


def parse_json_text(text: str | bytes, *, file: str | None = None, line: int | None = None) -> Any:
    """One JSON value, as ``json.loads`` reads it, without duplicate keys or deep nesting.

    A key twice in one object, nesting beyond :data:`MAX_DEPTH` or a number Python cannot read raises
    :class:`DataError` naming ``file`` and the line (``line`` when the text is one line of a JSON-lines
    file); a syntax error raises ``json.JSONDecodeError`` as ``json.loads`` does.
    """
    where = file or "JSON"
    if isinstance(text, bytes | bytearray):
        text = text.decode(json.detect_encoding(text), "surrogatepass")  # as json.loads does
    try:
        value = _DECODER.decode(text)
    except _DuplicateKey as dup:
        if line is not None:
            at = f" (line {line})"
        else:
            start = _duplicate_line(text)
            at = f" (in the object that starts at line {start})" if start is not None else ""
        raise DataError(f"{where}: the key {clip(json.dumps(dup.key), 80)} appears twice in one object{at}. "
                        "Keep one of them (a JSON reader would silently use only the last).") from None
    except RecursionError:
        deep = True
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # an integer of more digits than Python converts
        at = f" (line {line})" if line is not None else ""
        raise DataError(f"{where}: holds a value that cannot be read{at}: {clip(exc, 120)} Write such a "
                        "value as a string.") from None
    else:
        deep = _may_nest_deep(text) and _too_deep(value)
    if deep:
        spot = _deep_spot(text)
        if line is not None:
            at = f" (line {line}{f', column {spot[1]}' if spot else ''})"
        else:
            at = f" (line {spot[0]}, column {spot[1]})" if spot else ""
        raise DataError(f"{where}: nests more than {MAX_DEPTH} levels deep{at}. Flatten the data: lists and "
                        f"objects may nest at most {MAX_DEPTH} levels.") from None
    return value
