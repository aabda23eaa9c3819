"""Small helpers that Lightning users import from ``lightning.pytorch.utilities``."""

from raylit.utilities.combined_loader import CombinedLoader
from raylit.utilities.exceptions import MisconfigurationException
from raylit.utilities.parsing import AttributeDict, is_picklable
from raylit.utilities.rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn
from raylit.utilities.seed import isolate_rng, seed_everything

__all__ = [
    "AttributeDict",
    "CombinedLoader",
    "MisconfigurationException",
    "is_picklable",
    "isolate_rng",
    "rank_zero_info",
    "rank_zero_only",
    "rank_zero_warn",
    "seed_everything",
]
