"""fraudloop's logic: data, features, training, evaluation, registry, promotion, drift, storage,
retraining cycle."""

__version__ = "0.1.0"
