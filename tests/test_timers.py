"""``Timers``: the earliest deadline and the order of ties, kept by a heap with lazy deletion."""

from __future__ import annotations

from megapresence_core.lifecycle import ALL, Timer, Timers


def drain(timers: Timers, now: float) -> list[tuple[Timer, object]]:
    popped = []
    while (key := timers.pop_due(now)) is not None:
        popped.append(key)
    return popped


def test_ties_go_by_kind_then_by_when_the_timer_was_first_armed() -> None:
    timers = Timers()
    timers.arm(Timer.GRACE, 5.0, "b")
    timers.arm(Timer.GRACE, 5.0, "a")
    timers.arm(Timer.CONNECT, 5.0)  # an earlier kind wins a tie
    timers.arm(Timer.GRACE, 1.0, "c")
    timers.arm(Timer.GRACE, 5.0, "c")  # moved: keeps its place among ties
    timers.arm(Timer.GRACE, 9.0, "b")
    timers.arm(Timer.GRACE, 5.0, "b")  # moved away and back: still first armed
    timers.cancel(Timer.GRACE, "a")
    timers.arm(Timer.GRACE, 5.0, "a")  # cancelled then armed: now the last
    assert timers.next_deadline() == 5.0
    assert timers.pop_due(4.9) is None
    assert drain(timers, 5.0) == [
        (Timer.CONNECT, None),
        (Timer.GRACE, "b"),
        (Timer.GRACE, "c"),
        (Timer.GRACE, "a"),
    ]
    assert timers.next_deadline() is None


def test_cancelled_and_moved_deadlines_never_fire() -> None:
    timers = Timers()
    for owner in range(10):
        timers.arm(Timer.GRACE, float(owner), owner)
    timers.arm(Timer.FLUSH, 0.5, "x")
    timers.cancel(Timer.GRACE, 0)
    timers.postpone(Timer.GRACE, 20.0, 1)
    timers.postpone(Timer.GRACE, 0.0, "never armed")  # stays unarmed
    timers.arm_unless_armed(Timer.GRACE, 0.0, 2)  # armed already: unchanged
    timers.arm_unless_armed(Timer.HEARTBEAT, 30.0)  # not armed: armed now
    timers.cancel(Timer.FLUSH, ALL)
    assert timers.next_deadline() == 2.0
    assert drain(timers, 9.0) == [(Timer.GRACE, n) for n in range(2, 10)]
    assert timers.owners(Timer.GRACE) == {1: 20.0}
    assert drain(timers, 100.0) == [(Timer.GRACE, 1), (Timer.HEARTBEAT, None)]


def test_the_heap_stays_within_twice_the_armed_timers() -> None:
    timers = Timers()
    timers.arm(Timer.GRACE, 0.0, "kept")
    for step in range(1, 10_000):  # a keepalive moved on every message, say
        timers.arm(Timer.SILENCE, float(step), "moved")
    assert len(timers._heap) <= 2 * 2 + 64
    assert drain(timers, 10_000.0) == [(Timer.GRACE, "kept"), (Timer.SILENCE, "moved")]


def test_a_storm_of_grace_timers_expires_in_deadline_order() -> None:
    timers = Timers()
    for n in range(10_000):
        timers.arm(Timer.GRACE, 5.0 + (n * 7919 % 10_000) / 1000, n)
        assert timers.next_deadline() == 5.0
    popped = drain(timers, 100.0)
    deadlines = [5.0 + (owner * 7919 % 10_000) / 1000 for _, owner in popped]  # type: ignore[operator]
    assert deadlines == sorted(deadlines)
    assert len(popped) == 10_000
