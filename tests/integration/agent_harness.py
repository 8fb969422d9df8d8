"""Helpers for agent tests against a real broker: a counting collector, an agent running in
a thread, and a receiver standing in for the fleet server's ingest.

``Receiver`` records every device message by ``(boot_id, seq)``. When the server's ingest
lands, replace it with the ingest writing to PostgreSQL and read the same facts back
from the database (``samples_in_order`` and ``dropped_totals`` are what the tests use).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import AgentConfig, parse_config
from agent.daemon import AgentDaemon
from protocol import ProtocolDecodeError, Sample, Telemetry, decode
from tests.conftest import DEFAULT_MOSQUITTO_CONFIG
from tests.conftest import RUN_AS_ME as RUN_AS_ME  # re-exported for the agent tests

PERSISTENT_BROKER = DEFAULT_MOSQUITTO_CONFIG
"""Mosquitto keeping sessions across its own restart, as a production broker does, so
the receiver's persistent session does not miss what is sent while it reconnects (the
harness default: the production durability block, autosave every second)."""


class CountingCollector:
    """Numbers every sample (``custom["n"]``) and remembers which numbers it produced."""

    def __init__(self) -> None:
        self.taken: list[int] = []
        self._lock = threading.Lock()

    def collect(self, ts: float) -> Sample:
        """The next numbered sample."""
        with self._lock:
            n = len(self.taken)
            self.taken.append(n)
        return Sample(ts=ts, cpu_pct=1.0, custom={"n": float(n)})

    @property
    def count(self) -> int:
        """How many samples were taken so far."""
        with self._lock:
            return len(self.taken)


def agent_config(broker_url: str, state_dir: Path, **overrides: Any) -> AgentConfig:
    """A fast-sampling agent config for tests."""
    data: dict[str, Any] = {
        "device_id": "pi-test-1",
        "broker": broker_url,
        "state_dir": str(state_dir),
        "sample_interval_s": 0.05,
        "publish_interval_s": 0.25,
        "keepalive": 5,
        **overrides,
    }
    return parse_config(data)


class RunningAgent:
    """An :class:`AgentDaemon` serving in a background thread."""

    def __init__(self, config: AgentConfig, collector: Any = None, **kwargs: Any) -> None:
        self.daemon = AgentDaemon(config, collector=collector, reconnect_max_s=0.5, **kwargs)
        self.thread = threading.Thread(target=self.daemon.run, name="agent", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """SIGTERM-equivalent: clean shutdown; fails the test if it hangs."""
        self.daemon.request_stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "agent did not stop within 30 s"


@dataclass
class Receiver:
    """A persistent-session MQTT 5 subscriber to every device topic."""

    host: str
    port: int
    messages: list[Any] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="test-receiver", protocol=mqtt.MQTTv5
        )
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.3)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        self.client.connect(self.host, self.port, keepalive=5, clean_start=False, properties=props)
        self.client.loop_start()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        client.subscribe("fleet/v1/+/+", qos=1)
        self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            decoded = decode(message.topic, bytes(message.payload))
        except ProtocolDecodeError as exc:
            with self._lock:
                self.rejected.append(str(exc))
            return
        with self._lock:
            self.messages.append(decoded)

    def close(self) -> None:
        """Stop the network thread."""
        self.client.loop_stop()
        self.client.disconnect()

    def snapshot(self) -> list[Any]:
        """Messages received so far, in arrival order."""
        with self._lock:
            return list(self.messages)

    def of(self, kind: type) -> list[Any]:
        """Received messages of one type, in arrival order."""
        return [m for m in self.snapshot() if isinstance(m, kind)]

    def telemetry_deduplicated(self) -> list[Telemetry]:
        """Telemetry after deduplication on ``(boot_id, seq)``, ordered by seq."""
        unique: dict[tuple[str, int], Telemetry] = {}
        for m in self.of(Telemetry):
            unique.setdefault((m.boot_id, m.seq), m)
        return sorted(unique.values(), key=lambda m: m.seq)

    def samples_in_order(self) -> list[int]:
        """The sample numbers as the server would store them (deduplicated, by seq)."""
        return [int(s.custom["n"]) for m in self.telemetry_deduplicated() for s in m.samples]

    def dropped_totals(self) -> Iterator[int]:
        """Every ``dropped_total`` reported."""
        return (m.dropped_total for m in self.of(Telemetry))
