"""Lightning glue: the transducer LightningModule, SpecAugment, schedules and callbacks."""

from .module import TransducerLitModule  # noqa: F401
