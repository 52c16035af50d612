"""Prometheus instruments of the learner: progress, online quality and freshness along the pipeline."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 35, 40, 45, 50, 60, 120, 300)

STEPS = Counter("xdm_learner_steps_total", "Optimiser steps", ["arm"])
SAMPLES = Counter("xdm_learner_samples_total", "Samples trained on", ["arm"])
SKIPPED = Counter("xdm_learner_skipped_steps_total", "Steps skipped for a non-finite loss", ["arm"])
DUPLICATES = Counter("xdm_learner_duplicate_samples_total", "Samples skipped: already trained on (re-emitted)",
                     ["arm"])
DEAD_LETTERS = Counter("xdm_learner_dead_letters_total", "Samples sent to the dead-letter topic", ["arm"])
LOSS = Gauge("xdm_learner_loss", "Loss of the latest step", ["arm"])
HR50 = Gauge("xdm_learner_progressive_hr50", "Progressive-validation HR@50, running mean", ["arm"])
MRR50 = Gauge("xdm_learner_progressive_mrr50", "Progressive-validation MRR@50, running mean", ["arm"])
VERSION = Gauge("xdm_learner_published_version", "Latest published model version", ["arm"])
ITEMS = Gauge("xdm_learner_vocabulary_items", "Live item rows", ["arm"])
EVENT_TO_SAMPLE = Histogram("xdm_event_to_sample_seconds", "Broker time of the completing event to sample emission",
                            ["arm"], buckets=LAG_BUCKETS)
SAMPLE_TO_TRAINED = Histogram("xdm_sample_to_trained_seconds", "Sample emission to the step that trained on it",
                              ["arm"], buckets=LAG_BUCKETS)
TRAINED_TO_PUBLISHED = Histogram("xdm_trained_to_published_seconds",
                                 "Oldest unpublished step to its version being searchable in Milvus",
                                 ["arm"], buckets=LAG_BUCKETS)
PUBLISH_SECONDS = Histogram("xdm_publish_seconds", "Duration of one publish", ["arm"], buckets=LAG_BUCKETS)
PUBLISH_FAILURES = Counter("xdm_learner_publish_failures_total",
                           "Publishes that announced nothing: reason error (raised) or deadline (abandoned)",
                           ["arm", "reason"])
