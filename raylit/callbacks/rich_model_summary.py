"""Import path of Lightning's ``callbacks.rich_model_summary``; the class lives with ModelSummary."""

from raylit.callbacks.model_summary import RichModelSummary

__all__ = ["RichModelSummary"]
