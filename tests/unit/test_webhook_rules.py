"""The pure webhook rules: signature, replay window, backoff with jitter."""

from __future__ import annotations

import random

from fleet_server.domain.webhooks import RetryPolicy, sign, succeeded, verify

T = 1_790_000_000


def test_signature_covers_timestamp_and_body() -> None:
    sig = sign("whsec_a", T, b'{"x":1}')
    assert sig.startswith("sha256=")
    assert len(sig) == len("sha256=") + 64
    assert verify("whsec_a", str(T), sig, b'{"x":1}', now=T + 299)
    assert not verify("whsec_a", str(T + 1), sig, b'{"x":1}', now=T)  # timestamp changed
    assert not verify("whsec_a", str(T), sig, b'{"x":2}', now=T)
    assert not verify("whsec_a", str(T), sig, b'{"x":1}', now=T + 301)  # replayed too late
    assert not verify("whsec_a", str(T), sig, b'{"x":1}', now=T - 301)  # from the future
    assert not verify("whsec_a", "not-a-number", sig, b'{"x":1}', now=T)


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(base_delay_s=10, max_delay_s=100)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (12, 100)]:
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), attempt
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not fixed


def test_only_2xx_is_a_delivery() -> None:
    assert succeeded(200)
    assert succeeded(204)
    assert not succeeded(301)
    assert not succeeded(500)
    assert not succeeded(None)
