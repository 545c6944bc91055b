"""Error types whose messages name the offending key/file and the expected value."""


class ReproError(Exception):
    """Base class: a user-facing error with a message that says what to fix."""


class ConfigError(ReproError):
    """A params.yaml key, profile, table or method id is unknown or has the wrong type."""


class DataError(ReproError):
    """Raw data is missing, corrupt, or fails checksum verification."""


class ResultConflictError(ReproError):
    """A finished result exists with a different config hash; it is never silently overwritten."""
