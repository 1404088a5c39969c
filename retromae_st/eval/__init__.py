"""Evaluation of sentence embedding models: STS, SentEval transfer tasks and BEIR retrieval."""
