"""The project's one validator is the controller's (iiwa_deploy.schema: typed dataclasses,
Range, finiteness, file and key in every message); the training side imports it from here."""

from iiwa_deploy.schema import (
    TRAINING_PHRASING,
    ConfigError,
    Discount,
    NonNegativeFloat,
    NonNegativeInt,
    Phrasing,
    PositiveFloat,
    PositiveInt,
    Range,
    Seed,
    UnitInterval,
    check,
    from_mapping,
    to_mapping,
)

__all__ = [
    "TRAINING_PHRASING",
    "ConfigError",
    "Discount",
    "NonNegativeFloat",
    "NonNegativeInt",
    "Phrasing",
    "PositiveFloat",
    "PositiveInt",
    "Range",
    "Seed",
    "UnitInterval",
    "check",
    "from_mapping",
    "to_mapping",
]
