"""Errors that the CLI turns into one clear line and a nonzero exit."""


class LitGenError(Exception):
    """Base class: a user-facing problem whose message alone explains it."""


class DataNotFoundError(LitGenError, FileNotFoundError):
    """A dataset's files are missing; the message names what was expected where."""


class CheckpointError(LitGenError):
    """A checkpoint is missing, corrupt, truncated, or belongs to another model."""


class WeightsNotFoundError(LitGenError, FileNotFoundError):
    """Feature-extractor weights (e.g. FID Inception) could not be resolved."""
