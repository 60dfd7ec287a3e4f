"""The review queue: predictions a model was unsure of, kept for people to label.

A model name may have a `review_threshold` (`thresholds`). A prediction (any protocol: they
all go through `inference.predict_images`) whose top probability is below it is kept for the
owner of the key that asked (`capture`): the image file (once per owner, named by its sha256:
`images`), every class's score, the model version and the time. Each owner's queue (`queue`)
is bounded in items and in bytes; past either limit the oldest items go, unlabeled ones
first. Labeled items become images of the next version of a dataset (`handoff`, then
`datasets.add_version`), and then leave the queue.
"""

from app.services.review.capture import capture_uncertain, keep_uncertain
from app.services.review.handoff import LabeledSelection, consume, labeled_items
from app.services.review.images import image_key, image_media_type, queue_lock, read_image
from app.services.review.queue import (
    QueueCounts,
    counts,
    delete_items,
    discard_item,
    get_item,
    label_item,
    list_items,
    queue_totals,
    remove_unused_images,
)
from app.services.review.thresholds import THRESHOLDS, get_model_name, set_threshold

__all__ = [
    "THRESHOLDS",
    "LabeledSelection",
    "QueueCounts",
    "capture_uncertain",
    "consume",
    "counts",
    "delete_items",
    "discard_item",
    "get_item",
    "get_model_name",
    "image_key",
    "image_media_type",
    "keep_uncertain",
    "label_item",
    "labeled_items",
    "list_items",
    "queue_lock",
    "queue_totals",
    "read_image",
    "remove_unused_images",
    "set_threshold",
]
