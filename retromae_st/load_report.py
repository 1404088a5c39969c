"""Keeping transformers' load report for what matters when a masked-LM checkpoint becomes an encoder.

Loading a ``*ForMaskedLM`` checkpoint (our ``masked_lm/`` export, ``Shitao/RetroMAE``, ``bert-base-uncased``)
into the bare encoder class (``BertModel``, ...) that a sentence-transformers ``Transformer`` uses makes
transformers print a "LOAD REPORT": the MLM head's weights are UNEXPECTED (the encoder class has no head)
and the pooler is MISSING (masked-LM checkpoints have none; CLS pooling reads the final ``[CLS]`` hidden state,
never the pooler). Both are expected, and a user cannot tell them from a real problem. During
:func:`expected_masked_lm_differences` transformers' own filter (``_keys_to_ignore_on_load_unexpected`` /
``_missing``, regexes) also drops exactly those keys, so any other key (a missing encoder weight, an unknown
tensor) is still reported as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

#: MLM-head weights of the supported families' ``*ForMaskedLM`` layouts (BERT ``cls.*``; RoBERTa / XLM-R
#: ``lm_head.*``; ModernBERT ``head.*`` and ``decoder.*``), unused by the encoder class.
MLM_HEAD_KEYS = (r"^cls\.", r"^lm_head\.", r"^head\.", r"^decoder\.")
#: The encoder class's pooler, which masked-LM checkpoints do not have and CLS pooling does not use.
POOLER_KEYS = (r"^pooler\.",)


@contextmanager
def expected_masked_lm_differences() -> Iterator[None]:
    """Within the block, models loaded by transformers leave the MLM head and the pooler out of the report.

    Extends ``PreTrainedModel``'s class-level ignore patterns, which each model copies when it is built (a
    model class that sets its own patterns keeps them), and restores them afterwards; process-wide while it
    lasts, so models loaded concurrently in other threads are filtered alike.
    """
    from transformers import PreTrainedModel

    saved = (
        PreTrainedModel._keys_to_ignore_on_load_unexpected,
        PreTrainedModel._keys_to_ignore_on_load_missing,
    )
    PreTrainedModel._keys_to_ignore_on_load_unexpected = [*(saved[0] or []), *MLM_HEAD_KEYS]
    PreTrainedModel._keys_to_ignore_on_load_missing = [*(saved[1] or []), *POOLER_KEYS]
    try:
        yield
    finally:
        (
            PreTrainedModel._keys_to_ignore_on_load_unexpected,
            PreTrainedModel._keys_to_ignore_on_load_missing,
        ) = saved
