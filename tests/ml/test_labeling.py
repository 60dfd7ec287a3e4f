"""app.ml.labeling on data whose answers are known: separable groups of points, one of them
small, some labels flipped."""

from __future__ import annotations

import numpy as np
import pytest

from app.ml import labeling
from app.ml.labeling import Strategy


def _groups(
    sizes: list[int], *, dimensions: int = 24, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Points around one centre per group (far apart), labeled by group."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6.0, size=(len(sizes), dimensions))
    points = np.concatenate(
        [
            centre + rng.normal(size=(size, dimensions))
            for centre, size in zip(centres, sizes, strict=True)
        ]
    )
    labels = np.concatenate([np.full(size, index) for index, size in enumerate(sizes)])
    return points, labels


def test_softmax_regression_learns_separable_groups_and_weighs_classes_equally() -> None:
    x, y = _groups([200, 20, 60])
    model = labeling.SoftmaxRegression.fit(x, y, class_count=3)
    assert (model.probabilities(x).argmax(axis=1) == y).mean() > 0.99
    probabilities = model.probabilities(x)
    assert np.allclose(probabilities.sum(axis=1), 1.0)


def test_out_of_fold_answers_come_from_models_that_did_not_see_the_image() -> None:
    """An image far from its class, alone: a model that saw it could learn it; one that did not
    gives it its neighbours' class."""
    x, y = _groups([40, 40])
    x[0] = x[y == 1].mean(axis=0)  # class 0's first point sits in class 1's group
    found = labeling.out_of_fold_probabilities(x, y, class_count=2, seed=1)
    assert found.probabilities[0].argmax() == 1
    assert found.l2 in labeling.L2_GRID and found.folds == 5
    assert (found.probabilities.argmax(axis=1)[1:] == y[1:]).mean() > 0.95


def test_label_issues_find_flipped_labels() -> None:
    x, y = _groups([80, 80, 80], seed=2)
    rng = np.random.default_rng(3)
    flipped = rng.choice(len(y), size=24, replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, 3, size=len(flipped))) % 3
    found = labeling.out_of_fold_probabilities(x, noisy, class_count=3, seed=3)
    issues = labeling.label_issues(found.probabilities, noisy)
    flagged = {issue.index for issue in issues}
    assert len(flagged & set(flipped.tolist())) >= 0.8 * len(flipped)  # recall
    assert len(flagged & set(flipped.tolist())) >= 0.8 * len(flagged)  # precision
    for issue in issues:  # the suggestion is the true class, the given one the flipped
        if issue.index in set(flipped.tolist()):
            assert issue.suggested == y[issue.index] and issue.given == noisy[issue.index]
    confidences = [issue.self_confidence for issue in issues]
    assert confidences == sorted(confidences)


def test_cold_start_picks_typical_images_of_every_group_random_does_not() -> None:
    """Five groups; one labeled image in each of two: the cold-start picks land in the three
    uncovered groups, near their centres, where random picks often repeat a group."""
    x, y = _groups([200, 200, 200, 200, 200], seed=4)
    labeled = np.array([0, 200])  # one image of groups 0 and 1
    pool = np.setdiff1d(np.arange(len(y)), labeled)
    assert labeling.cold_start(y[labeled], 5)
    picks = labeling.suggest(
        x[labeled], y[labeled], x[pool], class_count=5, count=3, seed=0, strategy=Strategy.TYPICAL
    )
    assert {int(y[pool[p.index]]) for p in picks} == {2, 3, 4}
    assert all(p.strategy is Strategy.TYPICAL for p in picks)
    for pick in picks:  # typical: nearer its group's centre than the group's average member
        group = y == y[pool[pick.index]]
        centre = x[group].mean(axis=0)
        distances = np.linalg.norm(x[group] - centre, axis=1)
        assert np.linalg.norm(x[pool[pick.index]] - centre) < np.median(distances)
    hits = [
        len(
            {int(y[pool[p.index]]) for p in labeling.random_picks(len(pool), count=3, seed=s)}
            & {2, 3, 4}
        )
        for s in range(50)
    ]
    assert np.mean(hits) < 2.5  # random covers fewer of the new groups


def test_uncertain_picks_are_the_unsure_images_spread_over_groups() -> None:
    x, y = _groups([100, 100], seed=5)
    # images halfway between the two groups are the unsure ones
    between = np.stack([(x[i] + x[100 + i]) / 2 for i in range(10)])
    pool = np.concatenate([x[20:100], x[120:200], between])
    labeled_x = np.concatenate([x[:20], x[100:120]])
    labeled_y = np.concatenate([y[:20], y[100:120]])
    assert not labeling.cold_start(labeled_y, 2)
    picks = labeling.suggest(labeled_x, labeled_y, pool, class_count=2, count=5, seed=0)
    assert all(p.strategy is Strategy.UNCERTAIN for p in picks)
    assert sum(p.index >= 160 for p in picks) >= 4  # the in-between images
    margins = [p.score for p in picks]
    assert margins == sorted(margins)
    assert len({p.index for p in picks}) == 5


@pytest.mark.parametrize("count", [0, 1, 500])
def test_suggest_never_asks_for_more_than_there_is(count: int) -> None:
    x, y = _groups([15, 15], seed=6)
    picks = labeling.suggest(x[:20], y[:20], x[20:], class_count=2, count=count, seed=0)
    assert len(picks) == min(count, 10) and len({p.index for p in picks}) == len(picks)
