"""TDM's schedule as fractions of the experience's epochs."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from avalanche_sparcl.settings import MIN_UPDATE_EVERY
from avalanche_sparcl.sparse.schedule import ExperienceSchedule, MaskUpdateKind, mask_updates


def test_paper_setting_updates_every_5_epochs_until_45():
    updates = mask_updates(50, update_every=0.1, freeze_at=0.9)
    assert [u.position for u in updates] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert [u.kind for u in updates] == [MaskUpdateKind.SHRINK] + [MaskUpdateKind.MUTATE] * 7


def test_short_experience_updates_inside_epochs():
    updates = mask_updates(5, update_every=0.1, freeze_at=0.9)
    assert [u.position for u in updates] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]


def test_freeze_at_one_allows_updates_until_the_last_fraction():
    assert [u.position for u in mask_updates(10, 0.25, 1.0)] == [2.5, 5.0, 7.5]


@given(n_epochs=st.integers(1, 200), update_every=st.floats(0.01, 1), freeze_at=st.floats(0.01, 1))
def test_updates_lie_before_the_freeze_and_start_with_one_shrink(n_epochs, update_every, freeze_at):
    updates = mask_updates(n_epochs, update_every, freeze_at)
    assert all(0 < u.position < freeze_at * n_epochs + 1e-6 for u in updates)
    assert [u.kind for u in updates[:1]] in ([], [MaskUpdateKind.SHRINK])
    assert all(u.kind is MaskUpdateKind.MUTATE for u in updates[1:])


def test_cursor_fires_each_update_once_at_the_first_iteration_reaching_it():
    schedule = ExperienceSchedule(mask_updates(5, 0.1, 0.9))
    fired = []
    for epoch in range(5):
        for iteration in range(4):
            kind = schedule.due(epoch, iteration, 4)
            if kind:
                fired.append((epoch, iteration, kind.value))
    assert fired == [
        (0, 2, "shrink"),
        (1, 0, "mutate"),
        (1, 2, "mutate"),
        (2, 0, "mutate"),
        (2, 2, "mutate"),
        (3, 0, "mutate"),
        (3, 2, "mutate"),
        (4, 0, "mutate"),
    ]


@pytest.mark.parametrize(
    ("iterations_per_epoch", "expected"),
    [(1, ["shrink", "mutate", "mutate", "mutate"]), (2, ["shrink"] + ["mutate"] * 7)],
)
def test_updates_on_one_iteration_are_merged(iterations_per_epoch, expected):
    schedule = ExperienceSchedule(mask_updates(5, 0.1, 0.9))
    fired = [
        schedule.due(epoch, iteration, iterations_per_epoch)
        for epoch in range(5)
        for iteration in range(iterations_per_epoch)
    ]
    assert [kind.value for kind in fired if kind] == expected


@pytest.mark.parametrize("n_epochs", [1, 2, 50, 5000])
def test_the_smallest_update_every_gives_at_most_1000_updates_whatever_the_epochs(n_epochs):
    assert MIN_UPDATE_EVERY == 0.001
    assert len(mask_updates(n_epochs, MIN_UPDATE_EVERY, 1.0)) == 999


@pytest.mark.parametrize("update_every", [0.000001, 0.0005, 1.5])
def test_update_every_outside_its_range_is_refused(update_every):
    with pytest.raises(ValueError) as raised:
        mask_updates(2, update_every, 1.0)
    assert str(raised.value) == f"update_every must be in [0.001, 1], got {update_every!r}"
