"""The sender's verb table: every outbox verb (kernel/vocab.py's closed ``Verb``) has its sender."""

from __future__ import annotations

from cwhook.kernel.vocab import VERBS
from cwhook.trakt.delivery import SENDERS


def test_every_verb_has_a_sender_and_nothing_else_does() -> None:
    assert sorted(SENDERS) == sorted(VERBS)
    assert all(callable(send) for send in SENDERS.values())
