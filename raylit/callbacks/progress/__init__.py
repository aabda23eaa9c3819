from raylit.callbacks.progress.progress_bar import ProgressBar
from raylit.callbacks.progress.rich_progress import RichProgressBar, RichProgressBarTheme
from raylit.callbacks.progress.tqdm_progress import TQDMProgressBar

__all__ = ["ProgressBar", "RichProgressBar", "RichProgressBarTheme", "TQDMProgressBar"]
