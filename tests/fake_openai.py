"""A real HTTP/1.1 server on 127.0.0.1 speaking the OpenAI chat-completions API, for tests and benchmarks.

Deterministic replies (the same request body always gets the same reply), chosen by the model name:

* a name containing ``user``: a simulated user answering ``{"current_answer", "thought", "response"}``.
  It counts the ``**assistant**:`` turns in the rendered chat history and ends the chat with
  ``[[TERMINATE CHAT]]`` once there are ``N`` of them, where the task text says ``stop after N``
  (default 2). A task containing ``malformed`` gets a non-JSON reply the first time each prompt comes.
* ``grader``: ``{"score": 1}`` when the reference answer occurs in the final answer, else 0.
* ``judge``: ``{"score": 1}`` when some assistant turn asks a question, else 0; CollabLLM's official
  accuracy and interactivity prompts get ``{"thought", "accuracy"}`` (1 when the ground truth occurs in
  the response) and ``{"thought", "interactivity"}`` (1 when some assistant turn asks a question).
* whatever the model name, inspect's ``model_graded_fact`` grading prompt (``[Expert]:`` and ``GRADE:``)
  gets a short reasoning ending with ``GRADE: C`` or ``GRADE: I``: the grade a question asks for with
  ``[expect C]`` / ``[expect I]`` / ``[expect P]``, else C when the expert answer occurs in the
  submission (case-insensitively), else I.
* anything else, an assistant: for a task with ``A+B`` it answers ``The answer is S.``, asks a
  clarifying question, or works it out step by step, depending on the request's ``seed`` (mod 3).

``POST /v1/responses`` (OpenAI's responses API) gets the same reply as one ``output_text`` message;
``stats.routes`` counts the requests per ``METHOD /path``. With ``record=True`` every chat-completions
request body (parsed) is kept in ``recorded``, in arrival order, faulted tries included.

Injectable latency (every request waits ``latency`` seconds) and faults: ``faults=("429", "500")``
makes the first try of a request get 429, its second 500, its third the reply (``timeout`` holds a
try for ``hang`` seconds instead); ``fault_percent`` limits the faults to that share of distinct
requests. Bounded: at most ``max_inflight`` requests are served at once (others wait), bodies over
``max_body`` bytes are refused, and idle connections close after ``idle_timeout`` seconds.

In-process: ``with FakeOpenAI(latency=0.1) as server: server.url``. As a process:
``python tests/fake_openai.py --port 0 --latency 0.1`` prints ``URL http://127.0.0.1:PORT/v1``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MARKER = "[[TERMINATE CHAT]]"
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 413: "Payload Too Large",
            429: "Too Many Requests", 500: "Internal Server Error"}


@dataclass
class Stats:
    """What the server saw."""

    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)
    inflight: int = 0
    max_inflight: int = 0
    auth: Counter[str] = field(default_factory=Counter)
    routes: Counter[str] = field(default_factory=Counter)  # "POST /v1/chat/completions": times requested

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "statuses": dict(self.statuses), "models": dict(self.models),
                "max_inflight": self.max_inflight}


# --------------------------------------------------------------------------- deterministic replies
def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content or [] if isinstance(p, dict))


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def user_reply(prompt: str, malformed: bool) -> str:
    """The simulated user's JSON reply to a rendered user prompt."""
    if malformed:
        return "Sure, here is what I think (no JSON, sorry)"
    turns = re.findall(r"^\*\*assistant\*\*: (.*)$", prompt, re.M)
    m = re.search(r"stop after (\d+)", prompt)
    stop_after = int(m.group(1)) if m else 2
    numbers = re.findall(r"-?\d+", turns[-1]) if turns else []
    answer = numbers[-1] if numbers else ""
    task = re.search(r"## The task you want help with\n(.*?)\n", prompt)
    if not turns:
        response = f"Hi, I need some help. {task.group(1) if task else ''}".strip()
    elif len(turns) >= stop_after:
        response = f"Great, that is what I needed. {MARKER}"
    else:
        response = f"Thanks. Can you refine it a bit (round {len(turns)})?"
    return json.dumps({"current_answer": answer, "thought": f"{len(turns)} assistant turns so far",
                       "response": response})


def assistant_reply(messages: list[dict[str, Any]], seed: int) -> str:
    """The assistant's reply: depends on the first A+B in the user turns and on the seed."""
    users = [_text(m.get("content")) for m in messages if m.get("role") == "user"]
    for text in users:
        m = re.search(r"(\d+)\s*\+\s*(\d+)", text)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            variant = seed % 3
            if variant == 0:
                return f"The answer is {a + b}."
            if variant == 1:
                return "Could you tell me more about what you need?"
            return f"Let me work it out step by step: {a} plus {b} makes {a + b}. So the answer is {a + b}."
    tag = int(_digest(users[-1] if users else "")[:6], 16) % 1000
    return f"Here is my reply {tag} (variant {seed % 3})."


def grader_reply(prompt: str) -> str:
    ref = re.search(r"## Reference answer\n(.*?)\n", prompt)
    final = re.search(r"## Final answer reached in the conversation\n(.*?)\n", prompt)
    ok = bool(ref and final and ref.group(1).strip() and ref.group(1).strip() in final.group(1))
    return json.dumps({"thought": "compared with the reference", "score": 1.0 if ok else 0.0})


def collabllm_judge_reply(prompt: str) -> str | None:
    """CollabLLM's official judges: ``accuracy`` 1 when the ground truth occurs in the model's response
    (the session as JSON), ``interactivity`` 1 when some assistant turn asks a question, else 0."""
    if "*accuracy*" in prompt and "Ground Truth Answer:" in prompt:
        truth = re.search(r"^Ground Truth Answer: (.*)$", prompt, re.M)
        response = prompt.split("<|The Start of The Model's Response|>")[-1].split("<|The End of The Model's")[0]
        ok = bool(truth and truth.group(1).strip() and truth.group(1).strip() in response)
        return json.dumps({"thought": "compared with the ground truth", "accuracy": 1 if ok else 0})
    if "*interactivity*" in prompt:
        asks = bool(re.search(r"^Assistant: [^\n]*\?", prompt, re.M))
        return json.dumps({"thought": "looked for clarifying questions", "interactivity": 1.0 if asks else 0.0})
    return None


def judge_reply(prompt: str) -> str:
    official = collabllm_judge_reply(prompt)
    if official is not None:
        return official
    asks = bool(re.search(r"^\*\*assistant\*\*: [^\n]*\?", prompt, re.M))
    return json.dumps({"thought": "looked for clarifying questions", "score": 1.0 if asks else 0.0})


def fact_grade_reply(prompt: str) -> str | None:
    """The reply to inspect's ``model_graded_fact`` grading prompt, or None for any other prompt."""
    if "[Expert]:" not in prompt or "GRADE:" not in prompt:
        return None
    fields = dict(re.findall(r"^\[(Question|Expert|Submission)\]: (.*?)\n\*{3,}$", prompt, re.M | re.S))
    expert = fields.get("Expert", "").strip()
    asked = re.search(r"\[expect ([CIP])\]", fields.get("Question", ""))
    if asked:
        grade, why = asked.group(1), "the question asks for this grade"
    else:
        ok = bool(expert) and expert.lower() in fields.get("Submission", "").lower()
        grade, why = ("C", "the submission states it") if ok else ("I", "the submission does not state it")
    return f"The expert answer is {expert!r}; {why}.\nGRADE: {grade}"


def reply_for(body: dict[str, Any], first: bool) -> str:
    """The deterministic reply to a chat-completions request body (``first``: first time these messages came)."""
    model = str(body.get("model", ""))
    messages = body.get("messages") or []
    last = _text(messages[-1].get("content")) if messages else ""
    graded = fact_grade_reply(last)
    if graded is not None:
        return graded
    if "user" in model:
        return user_reply(last, malformed="malformed" in last and first)
    if "grader" in model:
        return grader_reply(last)
    if "judge" in model:
        return judge_reply(last)
    return assistant_reply(messages, int(body.get("seed") or 0))


# --------------------------------------------------------------------------- the server
class FakeOpenAI:
    """The server; start()/stop() or use as a context manager. ``url`` ends with ``/v1``."""

    def __init__(self, *, latency: float = 0.0, faults: tuple[str, ...] | list[str] = (), fault_percent: int = 100,
                 hang: float = 5.0, max_inflight: int = 256, max_body: int = 4 << 20, idle_timeout: float = 30.0,
                 api_key: str | None = None, port: int = 0, record: bool = False) -> None:
        self.latency, self.faults, self.fault_percent = latency, tuple(faults), fault_percent
        self.hang, self.max_body, self.idle_timeout, self.api_key = hang, max_body, idle_timeout, api_key
        self.max_inflight = max_inflight
        self.port = port
        self.record = record
        self.recorded: list[dict[str, Any]] = []
        self.stats = Stats()
        self._attempts: Counter[str] = Counter()
        self._messages_seen: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._sem: asyncio.Semaphore | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- lifecycle
    def start(self) -> FakeOpenAI:
        self._thread = threading.Thread(target=self._serve_forever, name="fake-openai", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake OpenAI server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve_forever(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._sem = asyncio.Semaphore(self.max_inflight)
        self._server = loop.run_until_complete(asyncio.start_server(self._connection, "127.0.0.1", self.port))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    # -- HTTP
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout):  # no task per request, unlike wait_for
                        head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length") or 0)
                if length > self.max_body:
                    await self._send(writer, 413, {"error": {"message": "body too large"}}, close=True)
                    return
                body = await reader.readexactly(length) if length else b""
                status, payload, extra = await self._handle(method, path.split("?")[0], headers, body)
                await self._send(writer, status, payload, extra=extra)
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def _send(self, writer: asyncio.StreamWriter, status: int, payload: Any, *, close: bool = False,
                    extra: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}", "Content-Type: application/json",
                f"Content-Length: {len(data)}", f"Connection: {'close' if close else 'keep-alive'}"]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        await writer.drain()

    async def _handle(self, method: str, path: str, headers: dict[str, str],
                      body: bytes) -> tuple[int, Any, dict[str, str] | None]:
        if method == "GET" and path.endswith("/models"):
            return 200, {"object": "list", "data": [{"id": "fake", "object": "model", "created": 0,
                                                     "owned_by": "fake"}]}, None
        self.stats.routes[f"{method} {path}"] += 1
        if method == "GET" and path == "/stats":
            return 200, self.stats.as_dict(), None
        if method == "POST" and path.endswith("/responses"):
            return self._responses(body)
        if method != "POST" or not path.endswith("/chat/completions"):
            return 404, {"error": {"message": f"no route {method} {path}", "type": "not_found"}}, None
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, {"error": {"message": "invalid api key", "type": "invalid_request_error",
                                   "code": "invalid_api_key"}}, None
        try:
            req = json.loads(body)
        except json.JSONDecodeError:
            return 400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}}, None
        if self.record:
            self.recorded.append(req)
        assert self._sem is not None
        async with self._sem:
            st = self.stats
            st.requests += 1
            st.models[str(req.get("model"))] += 1
            st.auth[headers.get("authorization", "")] += 1
            st.inflight += 1
            st.max_inflight = max(st.max_inflight, st.inflight)
            try:
                key = _digest(req)
                attempt = self._attempts[key]
                self._attempts[key] += 1
                faulty = int(key[:8], 16) % 100 < self.fault_percent
                if self.latency:
                    await asyncio.sleep(self.latency)
                if faulty and attempt < len(self.faults):
                    fault = self.faults[attempt]
                    if fault == "timeout":
                        await asyncio.sleep(self.hang)
                    elif fault == "429":
                        st.statuses[429] += 1
                        return 429, {"error": {"message": "rate limited", "type": "rate_limit_exceeded",
                                               "code": "rate_limit_exceeded"}}, {"retry-after-ms": "5"}
                    else:
                        st.statuses[500] += 1
                        return 500, {"error": {"message": "internal error", "type": "server_error"}}, None
                seen = _digest(req.get("messages"))
                text = reply_for(req, first=seen not in self._messages_seen)
                self._messages_seen.add(seen)
                st.statuses[200] += 1
                return 200, {
                    "id": "chatcmpl-" + key[:24], "object": "chat.completion", "created": int(time.time()),
                    "model": req.get("model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop", "logprobs": None}],
                    "usage": {"prompt_tokens": len(body) // 4, "completion_tokens": len(text) // 4,
                              "total_tokens": (len(body) + len(text)) // 4},
                }, None
            finally:
                st.inflight -= 1

    def _responses(self, body: bytes) -> tuple[int, Any, dict[str, str] | None]:
        """A minimal OpenAI responses-API reply (``POST /v1/responses``): the reply that the same messages
        get from chat completions, as one ``output_text`` message. No faults or latency."""
        try:
            req = json.loads(body)
        except json.JSONDecodeError:
            return 400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}}, None
        items = req.get("input")
        items = [{"role": "user", "content": items}] if isinstance(items, str) else items or []
        messages = [{"role": i.get("role"), "content": i.get("content")} for i in items
                    if isinstance(i, dict) and i.get("role")]
        text = reply_for({"model": req.get("model"), "messages": messages}, first=True)
        self.stats.requests += 1
        self.stats.models[str(req.get("model"))] += 1
        self.stats.statuses[200] += 1
        key = _digest(req)
        return 200, {
            "id": "resp_" + key[:24], "object": "response", "created_at": int(time.time()), "model": req.get("model"),
            "status": "completed", "error": None, "incomplete_details": None, "instructions": None, "metadata": {},
            "output": [{"type": "message", "id": "msg_" + key[:24], "role": "assistant", "status": "completed",
                        "content": [{"type": "output_text", "text": text, "annotations": []}]}],
            "parallel_tool_calls": False, "temperature": None, "top_p": None, "tool_choice": "auto", "tools": [],
            "text": {"format": {"type": "text"}},
            "usage": {"input_tokens": len(body) // 4, "output_tokens": len(text) // 4,
                      "total_tokens": (len(body) + len(text)) // 4, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}},
        }, None


def main(argv: list[str] | None = None) -> None:
    """Serve until killed (or until stdin closes, with --until-stdin-closes)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--faults", default="", help="comma-separated: 429,500,timeout")
    ap.add_argument("--fault-percent", type=int, default=100)
    ap.add_argument("--max-inflight", type=int, default=256)
    args = ap.parse_args(argv)
    server = FakeOpenAI(latency=args.latency, faults=[f for f in args.faults.split(",") if f],
                        fault_percent=args.fault_percent, max_inflight=args.max_inflight, port=args.port).start()
    print(f"URL {server.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
