"""Reconnect backoff: grows, is capped, is jittered, resets; all seen through the retry timer."""

from __future__ import annotations

import pytest

from megapresence_core import HubLinkConfig, Log, Presence, PresenceConfig, Tick
from megapresence_core._timers import Backoff
from megapresence_core.actions import ConnectHub
from megapresence_core.events import (
    HubConnected,
    HubFrameReceived,
    HubLinkStarted,
    HubLost,
)

from .helpers import registered_frame


def delays_after_failures(seed: int, failures: int, **config: float) -> list[float]:
    link = HubLinkConfig(bridge_id="b", instance_id="i", jitter_seed=seed, **config)
    presence = Presence(PresenceConfig(hub_link=link))
    now = 0.0
    presence.handle(HubLinkStarted(now=now))
    delays = []
    for _ in range(failures):
        presence.handle(HubLost(now=now, code=None, reason="refused"))
        retry_at = presence.next_deadline()  # the retry timer, the only one while backing off
        assert retry_at is not None
        delays.append(retry_at - now)
        now = retry_at
        assert presence.handle(Tick(now=now)) == [ConnectHub()]  # the reconnect attempt
    return delays


def test_ceilings_grow_geometrically_up_to_the_cap() -> None:
    backoff = Backoff(initial=0.5, maximum=30.0, multiplier=2.0, seed=1)
    ceilings = []
    for _ in range(10):
        ceilings.append(backoff.ceiling)
        backoff.next_delay()
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


def test_delays_stay_under_their_ceiling_and_are_jittered() -> None:
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    runs = [delays_after_failures(seed, 8) for seed in range(30)]
    for delays in runs:
        assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    # Full jitter: different seeds draw different delays for the same attempt...
    assert len({run[6] for run in runs}) == 30
    # ...spread over the window, and growing with the attempt on average.
    means = [sum(run[k] for run in runs) / len(runs) for k in range(8)]
    assert means[0] < means[2] < means[4] < means[6]
    assert max(run[7] for run in runs) > 20


def test_same_seed_same_delays() -> None:
    assert delays_after_failures(7, 6) == delays_after_failures(7, 6)


def test_backoff_resets_after_a_successful_registration() -> None:
    link = HubLinkConfig(bridge_id="b", instance_id="i", backoff_initial=1, backoff_max=64)
    presence = Presence(PresenceConfig(hub_link=link))
    now = 0.0
    presence.handle(HubLinkStarted(now=now))
    for _ in range(6):
        presence.handle(HubLost(now=now, code=None))
        now += 100
        presence.handle(Tick(now=now))
    presence.handle(HubConnected(now=now))
    presence.handle(HubFrameReceived(data=registered_frame(), now=now))
    [lost] = presence.handle(HubLost(now=now, code=1006))
    assert isinstance(lost, Log)
    assert lost.fields["retry_in"] <= 1.0  # type: ignore[operator]  # back to the initial ceiling
    assert presence.next_deadline() == pytest.approx(now + lost.fields["retry_in"])  # type: ignore[operator]


def test_the_exponent_stops_growing_at_the_cap() -> None:
    backoff = Backoff(initial=1.0, maximum=2.0, multiplier=10.0, seed=0)
    for _ in range(5000):  # would overflow a float if the exponent kept growing
        assert backoff.next_delay() <= 2.0
