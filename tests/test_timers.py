"""``Timers`` (a heap with lazy deletion) against a plain dict of deadlines."""

from __future__ import annotations

from collections.abc import Hashable

from hypothesis import given
from hypothesis import strategies as st

from megapresence_core._timers import _ORDER, ALL, Timer, Timers

_KINDS = st.sampled_from([Timer.GRACE, Timer.FLUSH, Timer.HEARTBEAT])
_OWNERS = st.sampled_from([None, 1, 2, 3, "x"])
_TIMES = st.integers(0, 20).map(float)

_OPS = st.one_of(
    st.tuples(st.just("arm"), _KINDS, _TIMES, _OWNERS),
    st.tuples(st.just("arm_unless_armed"), _KINDS, _TIMES, _OWNERS),
    st.tuples(st.just("postpone"), _KINDS, _TIMES, _OWNERS),
    st.tuples(st.just("cancel"), _KINDS, _TIMES, _OWNERS),
    st.tuples(st.just("cancel"), _KINDS, _TIMES, st.just(ALL)),
    st.tuples(st.just("pop_due"), _KINDS, _TIMES, _OWNERS),
)


@given(st.lists(_OPS, max_size=200))
def test_timers_agree_with_a_dict_of_deadlines(
    ops: list[tuple[str, Timer, float, Hashable]],
) -> None:
    timers = Timers()
    model: dict[tuple[Timer, Hashable], float] = {}
    for op, kind, at, owner in ops:
        key = (kind, owner)
        if op == "arm":
            model[key] = at
        elif op == "arm_unless_armed":
            model.setdefault(key, at)
        elif op == "postpone" and key in model:
            model[key] = at
        elif op == "cancel":
            for gone in [k for k in model if k[0] is kind and owner in (ALL, k[1])]:
                del model[gone]
        if op == "pop_due":
            popped = timers.pop_due(at)
            due = [(t, _ORDER[k[0]]) for k, t in model.items() if t <= at]
            if popped is None:
                assert not due
            else:
                assert (model.pop(popped), _ORDER[popped[0]]) == min(due)
        elif op == "cancel":
            timers.cancel(kind, owner)
        else:
            getattr(timers, op)(kind, at, owner)
        assert timers.next_deadline() == min(model.values(), default=None)
        assert timers.owners(kind) == {k[1]: t for k, t in model.items() if k[0] is kind}


def test_a_timer_moved_many_times_keeps_the_heap_small() -> None:
    timers = Timers()
    timers.arm(Timer.GRACE, 1.0, "a")
    for step in range(1000):
        timers.arm(Timer.HEARTBEAT, float(step), "b")
    assert len(timers._heap) <= 2 * 2 + 17
    assert [timers.pop_due(5000.0), timers.pop_due(5000.0), timers.pop_due(5000.0)] == [
        (Timer.GRACE, "a"),
        (Timer.HEARTBEAT, "b"),
        None,
    ]


def test_ties_go_by_kind_then_by_arming_order() -> None:
    timers = Timers()
    for owner in (3, 1, 2):
        timers.arm(Timer.GRACE, 1.0, owner)
    timers.arm(Timer.HEARTBEAT, 1.0, 9)
    timers.arm(Timer.GRACE, 1.0, 3)  # the same deadline again: it keeps its place
    popped = [timers.pop_due(1.0) for _ in range(5)]
    assert popped == [
        (Timer.HEARTBEAT, 9),
        (Timer.GRACE, 3),
        (Timer.GRACE, 1),
        (Timer.GRACE, 2),
        None,
    ]
