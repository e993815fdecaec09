"""Training of Medusa heads: a ZIM article reader and the self-distillation driver.

Needs the ``train`` extra (``pip install 'turboquant[train]'``: libzim, tqdm).
"""

from .mtp_trainer import evaluate_mtp, train_mtp
from .zim import TokenStream, ZimArticles, html_to_text

__all__ = ["train_mtp", "evaluate_mtp", "ZimArticles", "TokenStream", "html_to_text"]
