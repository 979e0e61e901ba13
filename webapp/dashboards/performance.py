"""A model version's performance and the model comparison as the dashboard shows them, cached.

Computing them reads every visible labelled case of the split with every registered version's
probability and runs ROC, DeLong and calibration per centre: about half a second at 10,000
videos, for numbers that change only when a prediction or a label does. The result is cached
per (model version, split, visible centres, registry) and keyed on a stamp of the rows it is
computed from, so a change to any of them makes the next request compute afresh, and a user
only ever reads an entry computed from exactly the centres they may see.
"""

from __future__ import annotations

import hashlib

from django.core.cache import cache
from django.db.models import Count, Max, Sum

from annotations.labels import niftp_label
from annotations.models import Pathology, User
from annotations.selectors import centres_visible_to
from webapp.dashboards import metrics, selectors
from webapp.training.models import ModelVersion, Prediction

# Entries are unreachable once a stamp moves; the expiry only frees their memory and bounds
# how long an edit committed out of order (see `data_stamp`) could stay unseen.
CACHE_SECONDS = 600


def data_stamp() -> tuple:
    """What the computed numbers depend on, in two aggregate queries.

    Predictions: their number, the newest id and the sum of probabilities. Re-scoring a
    video rewrites its row in place (update_or_create), which changes the sum; deleting a
    video deletes its predictions, which changes the number. Unlike a timestamp, the sum reads
    the committed rows themselves, so a change that commits after a later one is still seen.
    Pathology (the label of every case outside the frozen snapshots): the number, newest id and
    newest edit. Snapshot labels and splits are immutable (database triggers), so they need
    no stamp.
    """
    predictions = Prediction.objects.aggregate(n=Count("pk"), last=Max("pk"),
                                               total=Sum("probability"))
    pathology = Pathology.objects.aggregate(n=Count("pk"), last=Max("pk"),
                                            edited=Max("updated_at"))
    return (predictions["n"], predictions["last"], predictions["total"],
            pathology["n"], pathology["last"], pathology["edited"])


def cache_key(*, centre_ids: list[int], versions: list[ModelVersion], version: ModelVersion,
              split: str, stamp: tuple) -> str:
    registry = [(v.pk, v.number, v.arch, v.preset, v.threshold, v.state, v.snapshot_id)
                for v in versions]
    # NIFTP's label is a setting that decides labels of the "all" split.
    parts = (version.pk, split, sorted(centre_ids), registry, niftp_label(), stamp)
    return "dashboards:performance:" + hashlib.sha256(repr(parts).encode()).hexdigest()


def model_performance(*, user: User, versions: list[ModelVersion], version: ModelVersion,
                      split: str) -> dict:
    """{"performance": metrics.version_performance, "comparison": metrics.comparison} of
    `version` on the split's cases that `user` may see."""
    # The stamp is read before the rows: if they change in between, the entry holds newer
    # numbers under an older stamp, never older numbers under the newest one.
    stamp = data_stamp()
    centre_ids = list(centres_visible_to(user=user).values_list("pk", flat=True))
    key = cache_key(centre_ids=centre_ids, versions=versions, version=version, split=split,
                    stamp=stamp)
    data = cache.get(key)
    if data is None:
        cases, ids = selectors.labelled_cases(user=user, version=version, split=split)
        scores = selectors.prediction_scores(versions=versions, cases=cases, video_ids=ids)
        selected = scores[[v.pk for v in versions].index(version.pk)]
        data = {
            "performance": metrics.version_performance(cases, selected, version.threshold),
            "comparison": metrics.comparison(cases, versions, version, scores),
        }
        cache.set(key, data, CACHE_SECONDS)
    return data
