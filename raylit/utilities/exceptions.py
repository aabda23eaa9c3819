class MisconfigurationException(Exception):
    """Raised when the Trainer, a module or a callback is configured in a way that cannot work."""
