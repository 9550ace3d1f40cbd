"""Sending mail: Amazon SES in production, a local outbox everywhere else.

The only mail the service sends is the sign-in link. It never goes to a log line: a link is
a credential for fifteen minutes. With a sender and a region configured
(OMNITUTOR_MAIL_FROM, OMNITUTOR_MAIL_REGION or AWS_REGION) it goes out through SES with the
official SDK (boto3); otherwise each message is a JSON file under OMNITUTOR_HOME/outbox,
which `omnitutor auth outbox` prints.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from eventstore.ids import new_id
from eventstore.settings import Settings


@dataclass(frozen=True)
class Message:
    to: str
    subject: str
    text: str
    link: str  # the one link the message carries (the outbox shows it on its own line)


class Mailer(Protocol):
    name: str

    async def send(self, message: Message) -> None: ...


class SesMailer:
    """Amazon SES (the v1 SendEmail API) through boto3, called off the event loop."""

    name = "ses"

    def __init__(self, sender: str, region: str) -> None:
        import boto3  # imported here: a process with no SES configured never loads it

        self.sender = sender
        self._client: Any = boto3.client("ses", region_name=region)

    async def send(self, message: Message) -> None:
        await asyncio.to_thread(
            self._client.send_email,
            Source=self.sender,
            Destination={"ToAddresses": [message.to]},
            Message={
                "Subject": {"Data": message.subject, "Charset": "UTF-8"},
                "Body": {"Text": {"Data": message.text, "Charset": "UTF-8"}},
            },
        )


class OutboxMailer:
    """One JSON file per message under `directory` (mode 0600: the links are credentials)."""

    name = "outbox"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def send(self, message: Message) -> None:
        await asyncio.to_thread(self._write, message)

    def _write(self, message: Message) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        record = {
            "id": new_id(),
            "sent_at": datetime.now(UTC).isoformat(),
            "to": message.to,
            "subject": message.subject,
            "text": message.text,
            "link": message.link,
        }
        path = self.directory / f"{record['id']}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(record, option=orjson.OPT_INDENT_2))


def outbox_dir(settings: Settings) -> Path:
    return settings.home / "outbox"


def open_mailer(settings: Settings) -> Mailer:
    if settings.mail_from and settings.mail_region:
        return SesMailer(settings.mail_from, settings.mail_region)
    return OutboxMailer(outbox_dir(settings))


def read_outbox(directory: Path, limit: int = 10) -> list[dict[str, Any]]:
    """The latest `limit` messages of the outbox, newest first (file names are ULIDs)."""
    if not directory.is_dir():
        return []
    paths = sorted(directory.glob("*.json"), reverse=True)[:limit]
    return [orjson.loads(p.read_bytes()) for p in paths]
