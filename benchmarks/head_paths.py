"""The MLM head's ways of picking labelled positions, CPU time of forward + backward (one MiniLM-sized head).

    OMP_NUM_THREADS=1 python benchmarks/head_paths.py

- ``two-bool-index``: the earlier code, ``labels[labelled]`` and ``hidden[labelled]`` (two host syncs
  on an accelerator);
- ``one-nonzero``: ``masked_lm_loss`` now, one ``nonzero`` and ``index_select`` (one sync);
- ``all-positions``: ``masked_lm_loss(..., all_positions=True)``, the head at every position with the
  unlabelled ones left out of the mean on the device (no sync), used for the decoder off CPU.

Encoder labels: 30% of positions (the encoder mask ratio); decoder labels: all but the first and the
last position (rows of running text with no padding). Batch 16 x 256, hidden 384, vocabulary 30,522.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import BertConfig  # noqa: E402
from transformers.models.bert.modeling_bert import BertOnlyMLMHead  # noqa: E402

from retromae_st.fused_cross_entropy import linear_cross_entropy  # noqa: E402
from retromae_st.mlm_head import masked_lm_loss  # noqa: E402


def two_bool_index(head: BertOnlyMLMHead, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    labelled = labels != -100
    predictions = head.predictions
    return linear_cross_entropy(
        predictions.transform(hidden[labelled]),
        predictions.decoder.weight,
        predictions.decoder.bias,
        labels[labelled],
    )


def main(batch_size: int = 16, length: int = 256, repeats: int = 3) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    head = BertOnlyMLMHead(BertConfig(vocab_size=30522, hidden_size=384))
    hidden = torch.randn(batch_size, length, 384, requires_grad=True)
    encoder = torch.full((batch_size, length), -100)
    masked = torch.rand(batch_size, length) < 0.3
    encoder[masked] = torch.randint(30522, (int(masked.sum()),))
    decoder = torch.randint(30522, (batch_size, length))
    decoder[:, [0, -1]] = -100
    paths = {
        "two-bool-index": lambda labels: two_bool_index(head, hidden, labels),
        "one-nonzero": lambda labels: masked_lm_loss(head, hidden, labels),
        "all-positions": lambda labels: masked_lm_loss(head, hidden, labels, all_positions=True),
    }
    for name, labels in [("encoder (30% labelled)", encoder), ("decoder (all but 2 labelled)", decoder)]:
        times, values = {path: [] for path in paths}, {}
        for _ in range(repeats):  # interleaved
            for path, function in paths.items():
                start = time.process_time()
                value = function(labels)
                value.backward()
                times[path].append(time.process_time() - start)
                values[path] = value.item()
                hidden.grad = None
                head.zero_grad(set_to_none=True)
        print(
            f"{name}: "
            + ", ".join(f"{path} {1000 * statistics.median(t):.0f} ms" for path, t in times.items())
            + f" (loss {', '.join(f'{v:.6f}' for v in values.values())})"
        )


if __name__ == "__main__":
    main()
