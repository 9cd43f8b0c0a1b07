"""The MQTT topic scheme. Gateway ids come from the topic, which the broker's ACL binds to
the gateway's credentials (`pattern write v1/gw/%u/readings`); a payload's own claim is only
cross-checked, never trusted.

    >>> readings_topic("gw-0001")
    'v1/gw/gw-0001/readings'
    >>> parse_topic("v1/gw/gw-0001/backfill")
    Topic(gateway_id='gw-0001', kind='backfill')
"""

from __future__ import annotations

import re
from typing import Final, Literal, NamedTuple

from contracts.wire import ContractError, Reason

PREFIX: Final = "v1/gw"
TopicKind = Literal["readings", "backfill", "ack", "status"]
TOPIC_KINDS: Final[frozenset[str]] = frozenset({"readings", "backfill", "ack", "status"})
_GATEWAY_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

# What ingest subscribes to; the `$share/ingest/` form spreads load over several workers
# on an MQTT 5 broker (the embedded amqtt broker is 3.1.1 and takes the plain form).
INGEST_SUBSCRIPTIONS: Final = (f"{PREFIX}/+/readings", f"{PREFIX}/+/backfill")
SHARED_GROUP: Final = "ingest"


class Topic(NamedTuple):
    gateway_id: str
    kind: TopicKind


def _topic(gateway_id: str, kind: TopicKind) -> str:
    if not _GATEWAY_ID.match(gateway_id):
        raise ValueError(f"invalid gateway id {gateway_id!r} (letters, digits, - and _)")
    return f"{PREFIX}/{gateway_id}/{kind}"


def readings_topic(gateway_id: str) -> str:
    """Live readings, newest first in the gateway's sending order."""
    return _topic(gateway_id, "readings")


def backfill_topic(gateway_id: str) -> str:
    """Readings held back by an outage, drained at a bounded rate."""
    return _topic(gateway_id, "backfill")


def ack_topic(gateway_id: str) -> str:
    """Ingest's application acks to one gateway."""
    return _topic(gateway_id, "ack")


def status_topic(gateway_id: str) -> str:
    """The gateway's heartbeat and last will."""
    return _topic(gateway_id, "status")


def shared_subscription(topic_filter: str, group: str = SHARED_GROUP) -> str:
    """`$share/<group>/<filter>`: MQTT 5 load sharing between ingest workers."""
    return f"$share/{group}/{topic_filter}"


def parse_topic(topic: str) -> Topic:
    """Split a gateway topic; raises `ContractError(UNKNOWN_TOPIC)` for anything else."""
    parts = topic.split("/")
    if (
        len(parts) != 4
        or f"{parts[0]}/{parts[1]}" != PREFIX
        or parts[3] not in TOPIC_KINDS
        or not _GATEWAY_ID.match(parts[2])
    ):
        raise ContractError(Reason.UNKNOWN_TOPIC, f"not a meterward gateway topic: {topic!r}")
    kind: TopicKind = parts[3]  # type: ignore[assignment]  # checked against TOPIC_KINDS
    return Topic(gateway_id=parts[2], kind=kind)
