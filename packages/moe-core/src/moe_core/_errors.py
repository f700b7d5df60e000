"""Errors moe-core raises. Each names the file, tensor or field at fault."""


class MoEError(Exception):
    """Base class of every error moe raises for a bad model, checkpoint or setting."""


class CheckpointError(MoEError):
    """A shard is missing, truncated or does not match the model (names the file and tensor)."""


class UnsupportedModelError(MoEError):
    """The model has no expert banks, or a layout or quantization mode moe cannot offload."""


class BudgetError(MoEError):
    """The memory budget or capacity cannot hold what one step needs (says the minimum)."""
