"""The in-memory mail provider keeps the same contract as the real connectors."""

from __future__ import annotations

import pytest

from models.mail import MailFetchOptions
from tests.mail_contract import MailContract
from tests.memory_mail import MemoryMailProvider


class _Harness:
    user = "me@acme.example"

    def __init__(self) -> None:
        self.p = MemoryMailProvider()

    def connector(self, options: MailFetchOptions):
        return self.p.connector(self.user, options)

    def deliver(self, raw: bytes, *, sent: bool = False, labels: tuple[str, ...] = ()) -> str:
        return self.p.deliver(self.user, raw, sent=sent, labels=labels)

    def add_label(self, message_id: str, label: str) -> None:
        self.p.add_label(self.user, message_id, label)

    def remove_label(self, message_id: str, label: str) -> None:
        self.p.remove_label(self.user, message_id, label)

    def delete(self, message_id: str) -> None:
        self.p.delete(self.user, message_id)

    def expire_cursor(self) -> None:
        self.p.expire(self.user)


class TestMemoryMailContract(MailContract):
    @pytest.fixture
    def harness(self):
        return _Harness()
