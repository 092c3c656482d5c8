"""Test doubles: a fake backend you can script, for tests of code that uses cotmod.

>>> from cotmod.testing import FakeBackend, decision
>>> fake = FakeBackend()
>>> fake.enqueue(decision({"hate_speech": []}))   # a valid "safe" answer
>>> len(fake.history)
0
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._client import ChatRequest, ChatResult
from ._tokens import count_tokens
from ._verdict import Usage

__all__ = ["FakeBackend", "decision"]

Response = str | Mapping[str, Any] | BaseException | ChatResult | Callable[[ChatRequest], Any]


def decision(
    cited: Mapping[str, Sequence[str]],
    *,
    confidence: float = 0.9,
    reasoning: Sequence[str] = ("The content was checked against each rule.",),
    exceptions: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """A well-formed model answer: ``cited`` maps policy id -> violated rule ids ([] = safe)."""
    exceptions = exceptions or {}
    return {
        "reasoning": list(reasoning),
        "decisions": {
            pid: {
                "rationale": "cites " + (", ".join(rules) if rules else "no rule"),
                "rule_ids": list(rules),
                "exception_ids": list(exceptions.get(pid, [])),
                "violates": bool(rules),
                "confidence": confidence,
                "escalation_ids": [],
            }
            for pid, rules in cited.items()
        },
    }


class FakeBackend:
    """A scripted backend: ``enqueue`` answers, then inspect ``history`` of requests.

    An answer is a string (returned as the completion), a mapping (JSON-encoded), a
    :class:`ChatResult`, an exception (raised) or a callable ``request -> answer``. When the queue
    is empty, ``default`` (if given) answers; otherwise the call fails loudly.
    """

    def __init__(
        self,
        responses: Sequence[Response] = (),
        *,
        default: Response | None = None,
        model_name: str = "fake-model",
        delay: float = 0.0,
    ) -> None:
        self.model_name = model_name
        self._queue: deque[Response] = deque(responses)
        self.default = default
        self.delay = delay
        self.history: list[ChatRequest] = []
        self.closed = False

    def enqueue(self, *responses: Response) -> None:
        self._queue.extend(responses)

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def complete(self, request: ChatRequest) -> ChatResult:
        self.history.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self._queue:
            answer: Any = self._queue.popleft()
        elif self.default is not None:
            answer = self.default
        else:
            raise AssertionError("FakeBackend: no response enqueued for this request")
        if callable(answer) and not isinstance(answer, BaseException):
            answer = answer(request)
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, ChatResult):
            return answer
        text = answer if isinstance(answer, str) else json.dumps(answer)
        prompt = sum(count_tokens(m["content"]) for m in request.messages)
        completion = count_tokens(text)
        return ChatResult(
            text=text,
            finish_reason="stop",
            usage=Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion),
            model=self.model_name,
        )

    async def aclose(self) -> None:
        self.closed = True
