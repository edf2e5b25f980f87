"""The simulator template of ``ck new plugin simulator``: a participant that answers through a Python callable."""

from __future__ import annotations

SIMULATOR = '''"""The __NAME__ simulator: a ``ck simulate`` participant that answers through a Python function.

``function`` names it, as ``file.py:name`` (relative to the spec's folder) or ``package.module:name``.
It is called with the conversation so far (a list of ``{role, content}``) and the generation
settings (``temperature``, ``max_tokens``, ``seed``; the call's own override the section's) plus
``options``, and returns the next message's text; an ``async def`` function is awaited, a plain one
runs in a worker thread. As the user, the function answers the user prompt with the JSON object
``ck simulate`` asks for (``{"current_answer", "thought", "response"}``); as the assistant, with the
reply. Replace the call in ``complete`` to reach a model of your own.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from cruijff_kit import CkError, Simulator, SimulatorConfig


class __CLASS__Config(SimulatorConfig):
    """Options of __NAME__ (unknown keys are errors)."""

    function: str = Field(..., description="The function that answers: file.py:name (relative to the spec) "
                                           "or package.module:name.")
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of every call.")


def load_function(ref: str, base_dir: Path) -> Callable[..., Any]:
    """The callable ``ref`` names (``file.py:name`` relative to ``base_dir``, or ``module:name``)."""
    where, _, name = ref.rpartition(":")
    if not where or not name:
        raise CkError(f"function `{ref}` must have the form file.py:name or package.module:name "
                      "(plugin __NAME__).", option="function")
    if where.endswith(".py"):
        path = Path(where).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise CkError(f"function `{ref}`: the file {path} does not exist (relative paths are relative to "
                          "the spec's folder; plugin __NAME__).", option="function")
        spec = importlib.util.spec_from_file_location(f"__PACKAGE___{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise CkError(f"function `{ref}`: cannot import `{where}` ({exc}); install it or name a "
                          "file.py (plugin __NAME__).", option="function") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise CkError(f"function `{ref}`: `{where}` has no function `{name}` (plugin __NAME__).", option="function")
    return fn


def echo(messages: list[dict[str, str]], **generation: Any) -> str:
    """An example assistant: answers with the last message's text."""
    return messages[-1]["content"] if messages else ""


class __CLASS__(Simulator):
    """A chat participant whose replies come from a Python function."""

    name = "__NAME__"
    description = "A participant answering through a Python function named in its section."
    Config = __CLASS__Config
    config: __CLASS__Config

    def __init__(self, config: __CLASS__Config, base_dir: Path | None = None) -> None:
        super().__init__(config, base_dir)
        self._fn: Callable[..., Any] | None = None
        self.calls = 0

    def check(self, run: Any) -> None:
        """Plan time: the function can be found."""
        load_function(self.config.function, self.base_dir)

    def open(self) -> None:
        """Load the function once, before the first call."""
        self._fn = load_function(self.config.function, self.base_dir)

    async def complete(self, messages: list[dict[str, str]], **generation: Any) -> str:
        """The function's answer to ``messages`` (settings: the section's, then the call's)."""
        if self._fn is None:
            self.open()
        assert self._fn is not None
        settings = {"temperature": self.config.temperature, "max_tokens": self.config.max_tokens}
        kwargs = {**self.config.options, **settings, **generation}
        self.calls += 1
        if inspect.iscoroutinefunction(self._fn):
            reply = await self._fn(messages, **kwargs)
        else:
            reply = await asyncio.to_thread(self._fn, messages, **kwargs)
        if not isinstance(reply, str):
            raise CkError(f"function `{self.config.function}` returned {type(reply).__name__}, not the message "
                          "text (str) (plugin __NAME__).")
        return reply

    def stats(self) -> dict[str, Any]:
        """Calls made, for the simulation's summary."""
        return {"calls": self.calls}

    def label(self) -> str:
        """``__NAME__:<function>``."""
        return f"{self.name}:{self.config.function}"
'''

SIMULATOR_TESTS = '''
MINIMAL = {"function": "__PACKAGE__.plugin:echo"}


def _answer(config: dict, messages, **generation) -> str:
    import asyncio

    plugin = __CLASS__(__CLASS__.Config.model_validate(config))
    plugin.open()
    return asyncio.run(plugin.complete(messages, **generation))


def test_answers_through_the_named_function() -> None:
    assert _answer(MINIMAL, [{"role": "user", "content": "hello"}]) == "hello"


def test_a_file_function_gets_settings_and_options(tmp_path) -> None:
    (tmp_path / "people.py").write_text(
        "async def reply(messages, **kw):\\n"
        "    return f\\"{messages[-1]['content']} t={kw['temperature']} n={kw['max_tokens']} s={kw['seed']} {kw['style']}\\"\\n")
    config = {"function": str(tmp_path / "people.py") + ":reply", "temperature": 0.5, "max_tokens": 9,
              "options": {"style": "short"}}
    assert _answer(config, [{"role": "user", "content": "hi"}], max_tokens=3, seed=7) == "hi t=0.5 n=3 s=7 short"


def test_names_a_missing_function() -> None:
    from cruijff_kit import CkError

    with pytest.raises(CkError, match="has no function `nope`"):
        _answer({"function": "__PACKAGE__.plugin:nope"}, [])
'''
