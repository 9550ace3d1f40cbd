"""Commands: what a caller asks the service to do, one frozen dataclass per use case.

Named in the imperative (the events they produce are in the past tense, eventstore/events.py).
A command carries the request as parsed by web/ (the JSON object, path and query values) and
who asks; its handler (commands/handlers/) validates it, so the rules live below HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from commands.sessions import Principal
from eventstore.store import EventMeta


@dataclass(frozen=True)
class Caller:
    """Who asks: the session's user, from which address, under which trace id."""

    user_id: str
    session_id: str
    client_ip: str
    trace_id: str
    signed_in: bool = False

    @classmethod
    def of(cls, principal: Principal, client_ip: str, trace_id: str) -> Caller:
        return cls(
            principal.user_id, principal.session_id, client_ip, trace_id, principal.signed_in
        )

    @property
    def principal(self) -> Principal:
        return Principal(self.user_id, self.session_id, self.signed_in)

    def meta(self, causation_id: str | None = None) -> EventMeta:
        return EventMeta(self.trace_id, self.user_id, self.session_id, causation_id)


@dataclass(frozen=True)
class CreatePlan:
    """POST /v1/plan: plan a new lesson from a setup intent."""

    caller: Caller
    body: Mapping[str, Any]


@dataclass(frozen=True)
class ReadLesson:
    """GET /v1/lesson/{id}."""

    caller: Caller
    lesson_id: str


@dataclass(frozen=True)
class OpenStream:
    """GET /v1/lesson/{id}/stream, resuming after the event a client last saw."""

    caller: Caller
    lesson_id: str
    last_event_id: str | None  # the Last-Event-ID header, else the last_event_id query value
    cursor_field: str = "Last-Event-ID"  # which of the two it came from, for error messages


@dataclass(frozen=True)
class AbandonLesson:
    """POST /v1/lesson/{id}/abandon."""

    caller: Caller
    lesson_id: str


@dataclass(frozen=True)
class RequestMagicLink:
    """POST /v1/auth/magic-link: mail a sign-in link to an address."""

    caller: Caller
    body: Mapping[str, Any]


@dataclass(frozen=True)
class ConsumeMagicLink:
    """GET /v1/auth/consume: sign in with a link (no session needed)."""

    token: str | None
    session_token: str | None  # the clicking browser's cookie, if any
    next: str | None
    trace_id: str


@dataclass(frozen=True)
class DeleteAccount:
    """DELETE /v1/account: the caller's account, soft at once, erased 30 days later."""

    caller: Caller


@dataclass(frozen=True)
class RecordClientEvents:
    """POST /v1/event: a batch of the browser's analytics events."""

    caller: Caller
    body: Mapping[str, Any]


@dataclass(frozen=True)
class Visualize:
    """POST /v1/lesson/{id}/visualize: an SVG diagram of a beat."""

    caller: Caller
    lesson_id: str
    body: Mapping[str, Any]


@dataclass(frozen=True)
class Animate:
    """POST /v1/lesson/{id}/animate: a mini-simulation spec of a beat."""

    caller: Caller
    lesson_id: str
    body: Mapping[str, Any]


@dataclass(frozen=True)
class MakeMe:
    """POST /v1/lesson/{id}/makeme: flashcards, notes, slides, video, quiz, summary, mindmap."""

    caller: Caller
    lesson_id: str
    body: Mapping[str, Any]


@dataclass(frozen=True)
class Ask:
    """POST /v1/lesson/{id}/ask: a question mid-lesson."""

    caller: Caller
    lesson_id: str
    body: Mapping[str, Any]


@dataclass(frozen=True)
class Attempt:
    """POST /v1/lesson/{id}/attempt: an answer to a problem or test beat."""

    caller: Caller
    lesson_id: str
    body: Mapping[str, Any]


@dataclass(frozen=True)
class Adjust:
    """POST /v1/lesson/{id}/adjust: rework the rest of the lesson (or one beat)."""

    caller: Caller
    lesson_id: str
    body: Mapping[str, Any]


@dataclass(frozen=True)
class IteratePlan:
    """POST /v1/plan with a lesson_id: a new plan for a lesson that has not started."""

    caller: Caller
    body: Mapping[str, Any]


@dataclass(frozen=True)
class Whiteboard:
    """POST /v1/lesson/{id}/whiteboard: a drawing for the tutor to comment on."""

    caller: Caller
    lesson_id: str
    body: Mapping[str, Any]
