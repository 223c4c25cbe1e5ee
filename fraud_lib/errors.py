"""Exceptions raised by fraud_lib; each message says what was wrong and how to fix it."""

from __future__ import annotations


class FraudError(Exception):
    """Base class: an expected failure with a message meant for the user."""


class ConfigError(FraudError):
    """A setting or option has an invalid value."""


class DataError(FraudError):
    """Input data does not match the schema (missing column, NaN, bad label, empty file...)."""

    def __init__(self, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.fields = fields or {}


class DatabaseError(FraudError):
    """The database could not be reached or started."""


class RegistryError(FraudError):
    """The MLflow registry is missing something the caller asked for."""


class NoChampionError(RegistryError):
    """No model version holds the ``champion`` alias yet."""


class PromotionConflict(RegistryError):
    """The champion alias moved between evaluation and promotion (compare-and-set failed)."""
