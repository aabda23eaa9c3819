from raylit.loggers.base import DummyLogger, Logger

__all__ = ["DummyLogger", "Logger"]
