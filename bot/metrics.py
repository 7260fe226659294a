"""Prometheus metrics of one process, in a registry of its own (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.inbound = Counter(
            "rightsdesk_inbound_messages",
            "Inbound webhook calls and updates by channel and result",
            ["channel", "result"],
            registry=self.registry,
        )
        self.outbound = Counter(
            "rightsdesk_outbound_messages",
            "Outbox delivery attempts by channel and result",
            ["channel", "result"],
            registry=self.registry,
        )
        self.webhook_latency = Histogram(
            "rightsdesk_webhook_seconds",
            "Time to answer a webhook",
            ["channel"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15),
            registry=self.registry,
        )
        self.outbox_depth = Gauge(
            "rightsdesk_outbox_depth",
            "Outbound messages waiting to be sent",
            registry=self.registry,
        )
        self.inbox_depth = Gauge(
            "rightsdesk_inbox_depth",
            "Inbound messages waiting to be processed",
            registry=self.registry,
        )
        self.inbox_parked = Gauge(
            "rightsdesk_inbox_parked",
            "Inbound messages parked after repeated processing failures",
            registry=self.registry,
        )

    def count_outbound(self, channel: str, result: str) -> None:
        self.outbound.labels(channel=channel, result=result).inc()
