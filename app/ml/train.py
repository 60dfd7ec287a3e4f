"""Training runs composed of stages, keras-io style: load data, extract (or load) features,
choose a head, fine-tune, evaluate, calibrate; `auto` runs the candidates that fit the data and
keeps the one that validates best.

Pure Keras/NumPy: the service passes in the weights file (and its checksum), the feature
cache folder and the hooks that report to the database.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from app.ml import bases, builders
from app.ml.calibration import (
    MIN_CALIBRATION_IMAGES,
    Calibration,
    expected_calibration_error,
    fit_temperature,
    tempered,
)
from app.ml.config import (
    METHOD_DEFAULTS,
    Method,
    Task,
    TrainConfig,
    finetune_epochs,
    finetune_learning_rates,
    refit_affordable,
)
from app.ml.data import (
    ALL_SPLITS,
    HELD_OUT_NEGATIVES,
    TRAIN_NEGATIVES,
    SplitSource,
    balanced_class_weights,
    balanced_label_weights,
)
from app.ml.evaluate import (
    beats_chance,
    class_probabilities,
    evaluate_predictions,
    validation_score,
)
from app.ml.export import ExportError
from app.ml.features import (
    VIEWS,
    CacheMirror,
    FeatureRequest,
    array_name,
    extract_features,
    feature_cache_key,
    feature_file_name,
    load_or_compute,
    onnx_extractor,
)
from app.ml.finetune import FinetuneResult, TopData, TopTraining, finetune_top, refit_top
from app.ml.fitting import CancelledError, EpochRecord, TrainingHooks, fit, recording
from app.ml.heads import HeadData, averaged, choose_head
from app.ml.multilabel import (
    DEFAULT_THRESHOLD,
    PlattCalibration,
    best_f1_thresholds,
    evaluate_multilabel,
    fit_platt,
    multilabel_calibration_error,
    platt_scaled,
)
from app.ml.multilabel import beats_chance as beats_chance_of_labels
from app.ml.outliers import OutlierIndex

__all__ = ["CancelledError", "PretrainedSource", "TrainingOutcome", "train"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainedSource:
    """Where a pretrained run gets its base and caches its features (resolved by the caller:
    this package reads no settings and touches no storage of its own)."""

    weights_path: Path
    weights_sha256: str
    feature_cache_dir: Path
    dataset_fingerprint: str
    # Shared with workers on other machines (a bucket): features one computed, others reuse.
    feature_mirror: CacheMirror | None = None
    # Run the frozen base with ONNX Runtime for feature extraction on workers without a GPU
    # (2.7x Keras' images/s on 2 cores); Keras if the export fails.
    onnx_extraction: bool = False


@dataclass
class Candidate:
    """One model a run trained (or decided not to), as the job's result shows it."""

    method: Method
    settings: dict[str, Any]
    # accuracy (multilabel: mean_average_precision) and loss
    validation: dict[str, float] | None = None
    test: dict[str, float] | None = None
    seconds: float = 0.0
    skipped: str | None = None  # why it was not trained

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method.value,
            "settings": self.settings,
            "validation": self.validation,
            "test": self.test,
            "seconds": round(self.seconds, 2),
            **({"skipped": self.skipped} if self.skipped else {}),
        }


@dataclass
class TrainingOutcome:
    model: keras.Model  # takes raw pixels of any size; what gets saved
    method: Method  # of the model kept
    evaluation: dict[str, Any] | None
    best_epoch: int | None
    candidates: list[Candidate] = field(default_factory=list)
    reason: str = ""  # why this model was kept
    warnings: list[str] = field(default_factory=list)
    beats_chance: bool = True  # validation accuracy clearly above the majority class's rate
    details: dict[str, Any] = field(default_factory=dict)
    # The kept model's answers on validation and test (what the evaluation and calibration use).
    probabilities: dict[str, np.ndarray | None] = field(default_factory=dict)
    # The kept model's pooled features (its head's inputs) of each split, and the index of
    # its "unknown" answer made from them.
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    outliers: OutlierIndex | None = None
    # A fine-tuned model's top block before fine-tuning, which computes those features in its
    # served graph (builders.FrozenTop); None for the others.
    frozen_top: builders.FrozenTop | None = None
    # A multi-label model's threshold per label (chosen on validation); None: multiclass.
    thresholds: np.ndarray | None = None


def seed_everything(seed: int) -> None:
    """Same seed, same run on CPU: Python, NumPy and TensorFlow RNGs, deterministic ops."""
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def train(
    config: TrainConfig,
    *,
    splits: SplitSource,
    hooks: TrainingHooks,
    pretrained: PretrainedSource | None = None,
) -> TrainingOutcome:
    """Run `config.method`; CancelledError if the job is cancelled on the way."""
    config = dataclasses.replace(config, task=splits.task)  # the data says what it is
    seed_everything(config.seed)
    epochs_reported: list[int] = []
    hooks = _counting(hooks, epochs_reported)
    if config.method is Method.SCRATCH:
        outcome = _scratch_only(config, splits=splits, hooks=hooks)
    else:
        assert pretrained is not None, "the pretrained methods need a base"
        outcome = _pretrained(config, splits=splits, hooks=hooks, pretrained=pretrained)
        if config.method is Method.AUTO:
            _consider_scratch(
                config,
                outcome,
                splits=splits,
                hooks=hooks,
                epoch_offset=max(epochs_reported, default=0),
            )
    _judge_against_chance(outcome, splits)
    if config.test_time_flip:
        # The evaluation above is of the averaged answers; what one view alone scores is
        # reported beside it, so a user sees what the flip bought.
        outcome.details["single_view_accuracy"] = _single_view_accuracy(
            outcome.model, splits, batch_size=config.batch_size
        )
        outcome.model = builders.with_test_time_flip(outcome.model)
    _calibrate(outcome, splits)
    _index_outliers(outcome, splits, config=config)
    return outcome


def _calibrate(outcome: TrainingOutcome, splits: SplitSource) -> None:
    """Stage: a temperature fitted on the kept model's validation answers becomes the saved
    model's last layer, and the evaluation is of the calibrated answers (the same classes:
    only the probabilities change), with the calibration error before and after. A refit
    model's validation answers are those of the model before its refit (the refit trained on
    validation): its temperature comes from them, and the test split checks it."""
    if splits.task is Task.MULTILABEL:
        _calibrate_labels(outcome, splits)
        return
    validation = outcome.probabilities.get("validation")
    labels = _labels(splits, "validation")
    split = _evaluation_split(splits)
    if validation is None or labels is None or split is None:
        return
    if len(labels) < MIN_CALIBRATION_IMAGES:
        return  # one temperature from a handful of images is a guess: the evaluation says none
    temperature = fit_temperature(validation, labels)
    judged = outcome.probabilities.get(split)
    assert judged is not None
    calibrated = {
        name: None if answers is None else tempered(answers, temperature)
        for name, answers in outcome.probabilities.items()
    }
    judged_after = calibrated[split]
    assert judged_after is not None
    calibration = Calibration(
        temperature=temperature,
        fitted_on=len(labels),
        split=split,
        ece_before=expected_calibration_error(judged, splits.labels(split)),
        ece_after=expected_calibration_error(judged_after, splits.labels(split)),
    )
    outcome.model = builders.with_temperature(outcome.model, temperature)
    outcome.probabilities = calibrated
    outcome.evaluation = {
        **(_evaluation(outcome.probabilities, splits) or {}),
        "calibration": calibration.describe(),
    }


def _calibrate_labels(outcome: TrainingOutcome, splits: SplitSource) -> None:
    """Stage, multi-label: each label's Platt scaling fitted on the kept model's validation
    answers becomes the saved model's last layer (where validation has MIN_CALIBRATION_IMAGES
    images), then each label's threshold is the best-F1 one on the calibrated validation
    answers, and the evaluation is of the calibrated answers at those thresholds. As for a
    temperature, a refit model's validation answers are those from before its refit."""
    validation = outcome.probabilities.get("validation")
    labels = _labels(splits, "validation")
    split = _evaluation_split(splits)
    if validation is None or labels is None or split is None:
        return
    calibration = None
    if len(labels) >= MIN_CALIBRATION_IMAGES:
        slopes, intercepts = fit_platt(validation, labels)
        judged = outcome.probabilities.get(split)
        assert judged is not None
        calibrated = {
            name: None if answers is None else platt_scaled(answers, slopes, intercepts)
            for name, answers in outcome.probabilities.items()
        }
        judged_after = calibrated[split]
        assert judged_after is not None
        calibration = PlattCalibration(
            slopes=slopes,
            intercepts=intercepts,
            classes=splits.classes,
            fitted_on=len(labels),
            split=split,
            ece_before=multilabel_calibration_error(judged, splits.labels(split)),
            ece_after=multilabel_calibration_error(judged_after, splits.labels(split)),
        )
        outcome.model = builders.with_platt(outcome.model, slopes, intercepts)
        outcome.probabilities = calibrated
    calibrated_validation = outcome.probabilities["validation"]
    assert calibrated_validation is not None
    outcome.thresholds = best_f1_thresholds(calibrated_validation, labels)
    outcome.evaluation = _evaluation(outcome.probabilities, splits, thresholds=outcome.thresholds)
    if outcome.evaluation is not None and calibration is not None:
        outcome.evaluation["calibration"] = calibration.describe()


def _index_outliers(outcome: TrainingOutcome, splits: SplitSource, *, config: TrainConfig) -> None:
    """Stage: the kept model's training features become the index of its "unknown" answer,
    with a threshold from the validation images' scores, and the evaluation reports the share
    of the evaluated split's images (all of the trained classes) that it turns away. Not for a
    model wrapped for a test-time flip: its served graph has no one set of features."""
    embeddings, outcome.embeddings = outcome.embeddings, {}
    index = None
    # (a multi-label model answers "none of these" itself: no label passes its threshold)
    multiclass = splits.task is Task.MULTICLASS
    if multiclass and not config.test_time_flip and "train" in embeddings:
        index = OutlierIndex.fit(
            embeddings["train"],
            calibration=embeddings.get("validation"),
            negatives=embeddings.get(TRAIN_NEGATIVES),
        )
    if index is None:
        outcome.frozen_top = None  # no features to compute in the served graph
        return
    outcome.outliers = index
    report: dict[str, Any] = index.describe()
    if (held_out := embeddings.get(HELD_OUT_NEGATIVES)) is not None:
        # the negatives of validation and test, which the index has not seen: what share of
        # images like them it turns away
        report["held_out_negatives"] = len(held_out)
        report["held_out_negatives_rejected"] = round(index.turned_away(held_out), 4)
    split = _evaluation_split(splits)
    # (not on validation, where a set has no test split: the threshold was chosen there)
    if split == "test" and split in embeddings:
        report["split"] = split
        report["rejected"] = round(index.turned_away(embeddings[split]), 4)
    if outcome.evaluation is not None:
        outcome.evaluation = {**outcome.evaluation, "outliers": report}


def _counting(hooks: TrainingHooks, epochs: list[int]) -> TrainingHooks:
    """The same hooks, also noting each reported epoch's number (a later stage numbers its
    epochs after them)."""

    def on_epoch_end(record: EpochRecord) -> None:
        epochs.append(record.epoch)
        hooks.on_epoch_end(record)

    return TrainingHooks(
        on_epoch_end=on_epoch_end, on_progress=hooks.on_progress, should_stop=hooks.should_stop
    )


def _consider_scratch(
    config: TrainConfig,
    outcome: TrainingOutcome,
    *,
    splits: SplitSource,
    hooks: TrainingHooks,
    epoch_offset: int,
) -> None:
    """auto's last candidate: a network from random weights, only where the training set is
    large enough for it to have a chance against the pretrained base; kept if it validates
    better than the model kept so far."""
    count = len(splits.labels("train"))
    defaults = METHOD_DEFAULTS[Method.SCRATCH]
    # at the size the images were loaded at for the base: no second pass over the data
    scratch_config = dataclasses.replace(
        config, method=Method.SCRATCH, epochs=defaults.epochs, learning_rate=defaults.learning_rate
    )
    if count < config.scratch_min_images:
        outcome.candidates.append(
            Candidate(
                method=Method.SCRATCH,
                settings=_scratch_settings(scratch_config),
                skipped=f"{count} training images, fewer than {config.scratch_min_images}: a "
                "network trained from random weights needs more to match a pretrained base",
            )
        )
        return
    scratch = _scratch_only(scratch_config, splits=splits, hooks=hooks, epoch_offset=epoch_offset)
    challenger = scratch.candidates[0]
    outcome.candidates.append(challenger)
    incumbent = next(c for c in outcome.candidates if c.method is outcome.method)
    if challenger.validation is None:
        return
    if not _better(challenger, incumbent):
        outcome.reason += f"; {_comparison(incumbent, challenger)}"
        return
    outcome.model, outcome.method = scratch.model, Method.SCRATCH
    outcome.evaluation, outcome.best_epoch = scratch.evaluation, scratch.best_epoch
    outcome.probabilities, outcome.embeddings = scratch.probabilities, scratch.embeddings
    outcome.frozen_top = None
    outcome.reason = _comparison(challenger, incumbent)
    outcome.details.update(_validation_details(scratch.probabilities, splits))


def _scratch_settings(config: TrainConfig) -> dict[str, Any]:
    return {
        "image_size": config.image_size,
        "epochs": config.epochs,
        "learning_rate": config.learning_rate,
    }


def _single_view_accuracy(
    model: keras.Model, splits: SplitSource, *, batch_size: int
) -> float | None:
    split = _evaluation_split(splits)
    if split is None or splits.task is Task.MULTILABEL:
        return None  # (a multi-label model's evaluation says its mAP; no accuracy to compare)
    raw = model.predict(splits.arrays(split).images, batch_size=batch_size, verbose=0)
    predicted = class_probabilities(raw, len(splits.classes)).argmax(axis=1)
    return float(np.mean(predicted == splits.labels(split)))


# --- stages -----------------------------------------------------------------------------


def _class_weights(config: TrainConfig, splits: SplitSource) -> dict[int, float] | None:
    if not config.balance_classes or splits.task is Task.MULTILABEL:
        return None
    return balanced_class_weights(splits.labels("train"), len(splits.classes))


def _label_weights(
    config: TrainConfig, splits: SplitSource
) -> tuple[np.ndarray, np.ndarray] | None:
    """A multi-label run's balance: per label, in its loss (builders.training_loss)."""
    if not config.balance_classes or splits.task is Task.MULTICLASS:
        return None
    return balanced_label_weights(splits.labels("train"))


def _has(splits: SplitSource, split: str) -> bool:
    return split in splits.names and len(splits.labels(split)) > 0


def _evaluation_split(splits: SplitSource) -> str | None:
    """The test split if there is one, else validation."""
    return next((name for name in ("test", "validation") if _has(splits, name)), None)


def load_features(
    config: TrainConfig,
    splits: SplitSource,
    base: keras.Model,
    spec: bases.BaseSpec,
    *,
    pretrained: PretrainedSource,
    hooks: TrainingHooks,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Stage: the base's outputs for every split, from the cache or computed (then cached).
    Train images are also seen mirrored when flips are on; validation and test mirrored
    when the model will average its answers over both."""
    flip = config.augmentation is not None and config.augmentation.horizontal_flip
    views: dict[str, tuple[str, ...]] = {}
    for split in splits.names:
        mirrored = flip if split == "train" else config.test_time_flip
        views[split] = ("original", "mirrored") if mirrored else ("original",)
    request = FeatureRequest(views=views, top_inputs=True)
    key = feature_cache_key(
        dataset_fingerprint=pretrained.dataset_fingerprint,
        base_model=spec.key.value,
        weights_sha256=pretrained.weights_sha256,
        image_size=config.image_size,
        request=request,
    )
    extractor = builders.feature_extractor(
        base, spec, image_size=config.image_size, with_top_inputs=True
    )
    runtime = ["keras"]

    def compute() -> dict[str, np.ndarray]:
        chosen: Any = extractor
        if pretrained.onnx_extraction and not _has_gpu():
            try:
                chosen = onnx_extractor(
                    extractor,
                    cache_dir=pretrained.feature_cache_dir,
                    image_size=config.image_size,
                    key=extractor_key(spec=spec, pretrained=pretrained, size=config.image_size),
                    mirror=pretrained.feature_mirror,
                )
                runtime[0] = "onnxruntime"
            except ExportError as exc:
                logger.warning("feature extraction runs in Keras: %s", exc)
        return extract_features(chosen, splits, request, hooks=hooks)

    started = time.perf_counter()
    name = feature_file_name(dataset_fingerprint=pretrained.dataset_fingerprint, key=key)
    features, hit = load_or_compute(
        pretrained.feature_cache_dir / name, compute, mirror=pretrained.feature_mirror
    )
    return features, {
        "feature_cache_hit": hit,
        "feature_cache_key": key,
        "feature_seconds": round(time.perf_counter() - started, 3),
        "feature_runtime": None if hit else runtime[0],
        "weights": pretrained.weights_path.name,
    }


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def extractor_key(*, spec: bases.BaseSpec, pretrained: PretrainedSource, size: int) -> str:
    """What makes an exported feature extractor: the base, its weights, the input size and
    the Keras version (the outputs are always the pooled features and the top inputs)."""
    text = f"{spec.key.value}|{pretrained.weights_sha256}|{size}|keras-{keras.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _views(features: dict[str, np.ndarray], split: str, output: str) -> list[np.ndarray]:
    return [
        features[name] for view in VIEWS if (name := array_name(split, view, output)) in features
    ]


def _evaluation_views(features: dict[str, np.ndarray], splits: SplitSource, output: str) -> Any:
    """Validation and test as lists of views (`output`: "pooled" for the head, "top" for
    fine-tuning), with their labels."""
    return {
        "validation": _views(features, "validation", output),
        "validation_y": splits.labels("validation") if _has(splits, "validation") else None,
        "test": _views(features, "test", output),
        "test_y": splits.labels("test") if _has(splits, "test") else None,
    }


def _head_data(features: dict[str, np.ndarray], splits: SplitSource) -> HeadData:
    """The head trains on every view of every training image in each epoch (cheap)."""
    train_views = _views(features, "train", "pooled")
    return HeadData(
        train_x=np.concatenate(train_views),
        train_y=np.concatenate([splits.labels("train")] * len(train_views)),
        **_evaluation_views(features, splits, "pooled"),
    )


def _top_data(features: dict[str, np.ndarray], splits: SplitSource) -> TopData:
    return TopData(
        train=_views(features, "train", "top"),
        train_y=splits.labels("train"),
        **_evaluation_views(features, splits, "top"),
    )


# What candidates are compared by on validation (beside the loss), per task.
SCORE_NAMES = {Task.MULTICLASS: "accuracy", Task.MULTILABEL: "mean_average_precision"}


def _scores(
    probabilities: np.ndarray | None, labels: np.ndarray | None, task: Task
) -> dict[str, float] | None:
    if probabilities is None or labels is None or not len(labels):
        return None
    loss, score = validation_score(probabilities, labels, task=task)
    return {SCORE_NAMES[task]: score, "loss": loss}


def _evaluation(
    probabilities: dict[str, np.ndarray | None],
    splits: SplitSource,
    *,
    thresholds: np.ndarray | None = None,
) -> dict[str, Any] | None:
    """The evaluation of the answers on the test split (else validation); a multi-label
    model's at `thresholds` (DEFAULT_THRESHOLD until the calibration stage chooses them)."""
    split = _evaluation_split(splits)
    chosen = probabilities.get(split) if split else None
    if split is None or chosen is None:
        return None
    labels = splits.labels(split)
    if splits.task is Task.MULTILABEL:
        if thresholds is None:
            thresholds = np.full(len(splits.classes), DEFAULT_THRESHOLD)
        return {**evaluate_multilabel(labels, chosen, thresholds, splits.classes), "split": split}
    return {**evaluate_predictions(labels, chosen, splits.classes), "split": split}


@dataclass
class _Kept:
    """The model a pretrained run keeps so far, and what it scored."""

    method: Method
    reason: str
    probabilities: dict[str, np.ndarray | None]  # validation and test
    best_epoch: int | None
    finetuned: tuple[float, int] | None = None  # the learning rate and epochs kept


@dataclass
class PretrainedRun:
    """What the stages of a pretrained run share: its config and data, the frozen base (with
    its top block as it stands), the features, and the head. Stages run in order: `start`
    (features), `fit_head`, `finetune`, `refit`, `outcome`."""

    config: TrainConfig
    splits: SplitSource
    hooks: TrainingHooks
    spec: bases.BaseSpec
    base: keras.Model
    features: dict[str, np.ndarray]
    feature_details: dict[str, Any]
    class_weight: dict[int, float] | None
    label_weights: tuple[np.ndarray, np.ndarray] | None = None
    head: keras.Model | None = None
    head_epochs_reported: int = 0
    # The base's and the head's weights fine-tuning (and its refit) start from.
    start_weights: tuple[list[np.ndarray], list[np.ndarray]] | None = None

    @classmethod
    def start(
        cls,
        config: TrainConfig,
        *,
        splits: SplitSource,
        hooks: TrainingHooks,
        pretrained: PretrainedSource,
    ) -> PretrainedRun:
        """Stage: the frozen base and its features of every split (cached)."""
        if not _has(splits, "validation"):
            raise ValueError("the pretrained methods need a validation split to choose by")
        spec = bases.BASES[bases.BaseName(config.base_model)]
        base = builders.frozen_base(
            spec, image_size=config.image_size, weights=pretrained.weights_path
        )
        features, details = load_features(
            config, splits, base, spec, pretrained=pretrained, hooks=hooks
        )
        return cls(
            config=config,
            splits=splits,
            hooks=hooks,
            spec=spec,
            base=base,
            features=features,
            feature_details=details,
            class_weight=_class_weights(config, splits),
            label_weights=_label_weights(config, splits),
        )

    @property
    def class_count(self) -> int:
        return len(self.splits.classes)

    @functools.cached_property
    def head_data(self) -> HeadData:
        return _head_data(self.features, self.splits)

    @functools.cached_property
    def top_data(self) -> TopData:
        return _top_data(self.features, self.splits)

    @property
    def only_head(self) -> bool:
        return self.config.method is Method.BOTTLENECK

    def fit_head(self) -> tuple[Candidate, _Kept]:
        """Stage: the head on pooled features (the bottleneck model), chosen on validation
        among the kinds the config allows."""
        config, data = self.config, self.head_data
        started = time.perf_counter()
        trial, trials = choose_head(
            data,
            kind=config.head,
            class_count=self.class_count,
            label_smoothing=config.label_smoothing,
            dropout=config.dropout,
            seed=config.seed,
            hooks=self.hooks,
            class_weight=self.class_weight,
            task=self.splits.task,
            label_weights=self.label_weights,
            epochs=config.epochs
            if self.only_head and config.epochs is not None
            else config.head_epochs,
            learning_rate=(config.learning_rate if self.only_head else None)
            or config.head_learning_rate,
        )
        self.head = trial.model
        self.head_epochs_reported = len(trial.epochs)
        validation = averaged(self.head, data.validation)
        test = averaged(self.head, data.test) if data.test else None
        bottleneck = Candidate(
            method=Method.BOTTLENECK,
            settings={
                **trial.spec.describe(),
                "image_size": config.image_size,
                "base_model": self.spec.key.value,
                "heads_tried": [
                    dict(t.spec.describe(), validation_loss=round(t.validation_loss, 4))
                    for t in trials
                ],
            },
            validation=_scores(validation, data.validation_y, self.splits.task),
            test=_scores(test, data.test_y, self.splits.task),
            seconds=self.feature_details["feature_seconds"] + time.perf_counter() - started,
        )
        # Copied: if the bottleneck model is kept, it must be the head as it was.
        self.start_weights = (
            [w.copy() for w in self.base.get_weights()],
            [w.copy() for w in self.head.get_weights()],
        )
        kept = _Kept(
            method=Method.BOTTLENECK,
            reason="bottleneck was asked for",
            probabilities={"validation": validation, "test": test},
            best_epoch=trial.best_epoch,
        )
        return bottleneck, kept

    def restart(self) -> None:
        """The base and the head back at the start of fine-tuning (the bottleneck model)."""
        assert self.head is not None and self.start_weights is not None
        self.base.set_weights(self.start_weights[0])
        self.head.set_weights(self.start_weights[1])

    def finetune(self, bottleneck: Candidate, kept: _Kept) -> tuple[Candidate | None, _Kept]:
        """Stage: fine-tune the base's top block from the head, at each learning rate the
        job tries; kept if asked for (finetune) or if it validates better (auto)."""
        config = self.config
        if self.only_head or config.epochs == 0:
            return None, kept
        started = time.perf_counter()
        rate, epochs, tuned, rates_tried = self._tries()
        data = self.head_data
        finetune = Candidate(
            method=Method.FINETUNE,
            settings={
                "from": bottleneck.settings["head"],
                "unfrozen_from": self.spec.finetune_from,
                "epochs": epochs,
                "learning_rate": rate,
                "learning_rates_tried": rates_tried,
                "label_smoothing": config.label_smoothing,
                "improved_on_its_start": tuned.improved,
            },
            validation=_scores(tuned.validation_probabilities, data.validation_y, self.splits.task),
            test=_scores(tuned.test_probabilities, data.test_y, self.splits.task),
            seconds=time.perf_counter() - started,
        )
        if config.method is not Method.FINETUNE and not _better(finetune, bottleneck):
            self.restart()
            return finetune, dataclasses.replace(kept, reason=_comparison(bottleneck, finetune))
        reason = (
            "finetune was asked for"
            if config.method is Method.FINETUNE
            else _comparison(finetune, bottleneck)
        )
        probabilities = {
            "validation": tuned.validation_probabilities,
            "test": tuned.test_probabilities,
        }
        return finetune, _Kept(
            method=Method.FINETUNE,
            reason=reason,
            probabilities=probabilities,
            best_epoch=tuned.best_epoch or kept.best_epoch,
            finetuned=(rate, epochs),
        )

    def _tries(self) -> tuple[float, int, FinetuneResult, list[dict[str, float]]]:
        """Fine-tune at each learning rate the job tries, each from the same start, keeping
        the one that validates best (accuracy, then loss): its weights are left in the base
        and the head, its epochs reported. Returns the learning rate and epochs kept, the
        result and every try's scores."""
        assert self.head is not None
        data = self.top_data
        epochs = finetune_epochs(self.config.epochs, images=len(data.train_y))
        rates = finetune_learning_rates(
            self.config.learning_rate, images=len(data.train_y), epochs=epochs
        )
        best: tuple[float, FinetuneResult, list[np.ndarray], list[np.ndarray]] | None = None
        best_records: list[EpochRecord] = []
        tried = []
        for rate in rates:
            self.restart()
            records: list[EpochRecord] = []
            tuned = finetune_top(
                self.base,
                self.spec,
                self.head,
                data,
                self.top_training(epochs=epochs, learning_rate=rate),
                hooks=recording(self.hooks, records),
                epoch_offset=self.head_epochs_reported,
            )
            tried.append(
                {
                    "learning_rate": rate,
                    f"validation_{SCORE_NAMES[self.splits.task]}": tuned.validation_score,
                    "validation_loss": round(tuned.validation_loss, 4),
                }
            )
            score = _rank(tuned.validation_score, tuned.validation_loss)
            if best is None or score > _rank(best[1].validation_score, best[1].validation_loss):
                best = (rate, tuned, self.base.get_weights(), self.head.get_weights())
                best_records = records
        assert best is not None
        rate, tuned, base_weights, head_weights = best
        self.base.set_weights(base_weights)
        self.head.set_weights(head_weights)
        for record in best_records:
            self.hooks.on_epoch_end(record)
        return rate, epochs, tuned, tried

    def refit(self, finetune: Candidate | None, kept: _Kept) -> _Kept:
        """Stage: validation has chosen the fine-tuned model; now it learns from the
        validation images too, from the same start, where a test split remains to judge it
        and the data is small enough. Its test score is the evaluation; the candidates keep
        the scores of the models as validated. A bottleneck model is kept as validated (a
        refit head tested no better: docs/BENCHMARKS.md, "Fine-tuning choices")."""
        config, splits = self.config, self.splits
        if kept.finetuned is None or finetune is None or not config.refit_on_validation:
            return kept
        rate, epochs = kept.finetuned
        images = len(splits.labels("train")) + len(splits.labels("validation"))
        if not _has(splits, "test") or not refit_affordable(images=images, epochs=epochs):
            return kept
        assert self.head is not None
        self.restart()
        started = time.perf_counter()
        data = self.top_data
        # no validation curve to show: its epochs stay out of the job's curve
        test = refit_top(
            self.base,
            self.spec,
            self.head,
            data,
            self.top_training(epochs=epochs, learning_rate=rate),
            hooks=recording(self.hooks, []),
        )
        summary = {
            "images": len(data.train_y) + len(data.validation_y),
            "epochs": epochs,
            "learning_rate": rate,
            "seconds": round(time.perf_counter() - started, 2),
            "test": _scores(test, _labels(splits, "test"), splits.task),
        }
        finetune.settings["refit"] = summary
        reason = kept.reason + (
            "; then trained again on the training and validation images together "
            f"({summary['images']} images, {epochs} epoch{'' if epochs == 1 else 's'})"
        )
        return dataclasses.replace(
            kept, reason=reason, probabilities={**kept.probabilities, "test": test}
        )

    def top_training(self, *, epochs: int, learning_rate: float) -> TopTraining:
        config = self.config
        return TopTraining(
            class_count=self.class_count,
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=config.batch_size,
            label_smoothing=config.label_smoothing,
            seed=config.seed,
            class_weight=self.class_weight,
            task=self.splits.task,
            label_weights=self.label_weights,
        )

    def outcome(self, candidates: list[Candidate], kept: _Kept) -> TrainingOutcome:
        """Stage: the kept model as one Keras model taking raw pixels, and its evaluation."""
        assert self.head is not None
        model = builders.build_pretrained_model(
            self.base, self.head, self.spec, image_size=self.config.image_size
        )
        return TrainingOutcome(
            model=model,
            method=kept.method,
            evaluation=_evaluation(kept.probabilities, self.splits),
            best_epoch=kept.best_epoch,
            candidates=candidates,
            reason=kept.reason,
            probabilities=kept.probabilities,
            embeddings=self._embeddings(),
            frozen_top=None
            if kept.finetuned is None or self.start_weights is None
            else builders.FrozenTop.of(self.base, self.spec, weights=self.start_weights[0]),
            details={
                **self.feature_details,
                **_validation_details(kept.probabilities, self.splits),
            },
        )

    def _embeddings(self) -> dict[str, np.ndarray]:
        """Each split's pooled features of the frozen base, as cached: what the unknown
        answer compares, for a fine-tuned model too (builders.FrozenTop says why)."""
        if self.config.test_time_flip:
            return {}  # no unknown answer for a flip-averaged model (_index_outliers)
        return {
            split: self.features[name]
            for split in ALL_SPLITS
            if (name := array_name(split, VIEWS[0], "pooled")) in self.features
        }


def _pretrained(
    config: TrainConfig,
    *,
    splits: SplitSource,
    hooks: TrainingHooks,
    pretrained: PretrainedSource,
) -> TrainingOutcome:
    """bottleneck, finetune and auto: features -> head -> (fine-tune -> refit) -> the better."""
    run = PretrainedRun.start(config, splits=splits, hooks=hooks, pretrained=pretrained)
    bottleneck, kept = run.fit_head()
    finetune, kept = run.finetune(bottleneck, kept)
    kept = run.refit(finetune, kept)
    candidates = [bottleneck] if finetune is None else [bottleneck, finetune]
    return run.outcome(candidates, kept)


def _validation_details(
    probabilities: dict[str, np.ndarray | None], splits: SplitSource
) -> dict[str, float | None]:
    """The kept model's validation accuracy (multilabel: its mAP), for the job's result."""
    scores = _scores(probabilities.get("validation"), _labels(splits, "validation"), splits.task)
    name = SCORE_NAMES[splits.task]
    return {f"validation_{name}": None if scores is None else scores[name]}


def _rank(score: float, loss: float) -> tuple[float, float]:
    """How models are compared on validation, candidates and fine-tuning tries alike: the
    higher score (accuracy; multilabel: mAP) wins; on an equal score, the lower loss."""
    return score, -loss


def _score_name(scores: dict[str, float]) -> str:
    return next(name for name in SCORE_NAMES.values() if name in scores)


def _better(challenger: Candidate, incumbent: Candidate) -> bool:
    assert challenger.validation is not None and incumbent.validation is not None
    a, b = challenger.validation, incumbent.validation
    name = _score_name(a)
    return _rank(a[name], a["loss"]) > _rank(b[name], b["loss"])


def _comparison(kept: Candidate, other: Candidate) -> str:
    assert kept.validation is not None and other.validation is not None
    a, b = kept.validation, other.validation
    name = _score_name(a)
    shown = "mAP" if name == SCORE_NAMES[Task.MULTILABEL] else name
    return (
        f"{kept.method.value} validates better than {other.method.value}: {shown} "
        f"{a[name]:.3f} vs {b[name]:.3f}, loss {a['loss']:.3f} vs {b['loss']:.3f}"
    )


def _scratch_only(
    config: TrainConfig, *, splits: SplitSource, hooks: TrainingHooks, epoch_offset: int = 0
) -> TrainingOutcome:
    """scratch: the small convnet from random weights, with augmentation."""
    started = time.perf_counter()
    class_count = len(splits.classes)
    model = builders.build_scratch_model(config, class_count=class_count)
    trainer = builders.with_augmentation(
        model, config.augmentation, image_size=config.image_size, seed=config.seed
    )
    train_split = splits.arrays("train")
    # Cosine decay to zero over the run: large steps early, fine ones at the end, which
    # settles the noisy validation curve of a small network on a small dataset.
    epochs = config.epochs or 0  # always set for scratch (its default: 30)
    steps = epochs * math.ceil(len(train_split) / config.batch_size)
    trainer.compile(
        optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(config.learning_rate, max(steps, 1))
        ),
        loss=builders.loss_for(class_count)
        if splits.task is Task.MULTICLASS
        else builders.training_loss(
            Task.MULTILABEL, label_smoothing=0.0, label_weights=_label_weights(config, splits)
        ),
        metrics=builders.epoch_metrics(splits.task),
    )
    validation = None
    if _has(splits, "validation"):
        arrays = splits.arrays("validation")
        validation = (arrays.images, arrays.labels)
    result = fit(
        trainer,
        train_split.images,
        train_split.labels,
        validation,
        epochs=epochs,
        batch_size=config.batch_size,
        stage="train",
        epoch_offset=epoch_offset,
        hooks=hooks,
        patience=config.early_stopping_patience,
        class_weight=_class_weights(config, splits),
    )
    probabilities: dict[str, np.ndarray | None] = {}
    embeddings: dict[str, np.ndarray] = {}
    # with test_time_flip the saved model averages each image with its mirror: judge that one
    predictor = builders.with_test_time_flip(model) if config.test_time_flip else model
    embedder = None if config.test_time_flip else builders.with_embedding(model)
    for split in ALL_SPLITS:
        if not _has(splits, split):
            continue
        images = splits.arrays(split).images
        if embedder is not None:
            raw, features = embedder.predict(images, batch_size=config.batch_size, verbose=0)
            embeddings[split] = np.asarray(features, dtype=np.float32)
        elif split in ("validation", "test"):
            raw = predictor.predict(images, batch_size=config.batch_size, verbose=0)
        if split in ("validation", "test"):
            probabilities[split] = class_probabilities(raw, class_count)
    candidate = Candidate(
        method=Method.SCRATCH,
        settings=_scratch_settings(config),
        validation=_scores(
            probabilities.get("validation"), _labels(splits, "validation"), splits.task
        ),
        test=_scores(probabilities.get("test"), _labels(splits, "test"), splits.task),
        seconds=time.perf_counter() - started,
    )
    return TrainingOutcome(
        model=model,
        method=Method.SCRATCH,
        evaluation=_evaluation(probabilities, splits),
        best_epoch=result.best_epoch,
        candidates=[candidate],
        reason="scratch was asked for",
        details=_validation_details(probabilities, splits),
        probabilities=probabilities,
        embeddings=embeddings,
    )


def _labels(splits: SplitSource, split: str) -> np.ndarray | None:
    return splits.labels(split) if _has(splits, split) else None


def _judge_against_chance(outcome: TrainingOutcome, splits: SplitSource) -> None:
    """No silent junk: a model whose validation accuracy is not clearly above always answering
    the most common class (multilabel: whose mAP is not clearly above a ranking by chance) is
    flagged (the service saves it but does not activate it)."""
    name = SCORE_NAMES[splits.task]
    score = outcome.details.get(f"validation_{name}")
    labels = _labels(splits, "validation")
    if score is None or labels is None:
        return
    if splits.task is Task.MULTILABEL:
        if beats_chance_of_labels(score, labels):
            return
        chance = f"a ranking by chance gives about {float(labels.mean(axis=0).mean()):.2f}"
    else:
        if beats_chance(score, labels, len(splits.classes)):
            return
        chance = f"the most common class alone gives {np.bincount(labels).max() / len(labels):.2f}"
    outcome.beats_chance = False
    count = len(splits.labels("train"))
    hint = (
        "use bottleneck or auto"
        if outcome.method is Method.SCRATCH
        else "check the labels, or add images"
    )
    shown = "mAP" if splits.task is Task.MULTILABEL else "accuracy"
    outcome.warnings.append(
        f"{outcome.method.value} on {count} training images stayed at chance (validation "
        f"{shown} {score:.2f}, {chance}): saved but not activated; {hint}"
    )
