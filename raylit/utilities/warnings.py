"""Warning categories users filter on (Lightning's ``utilities.warnings``)."""


class PossibleUserWarning(UserWarning):
    """A warning about a setting or pattern that is probably, but not certainly, a mistake."""
