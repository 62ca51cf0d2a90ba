"""User-facing errors.

Every failure a user can cause (a bad file, an impossible budget, a missing dataset) raises a
``TrustlabError`` whose message says what is wrong and what to do. The CLI prints that message
on one line and exits with code 2; library callers can catch the specific subclass.
"""


class TrustlabError(Exception):
    """Base class: the message is shown to the user as it is."""

    exit_code = 2


class DataError(TrustlabError):
    """A dataset is missing, truncated, corrupt or laid out differently than expected."""


class ConfigError(TrustlabError):
    """A configuration value, option or input file is invalid."""


class RunError(TrustlabError):
    """A run folder is missing, incomplete or of another kind than expected."""
