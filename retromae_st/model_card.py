"""Model cards of the folders we save: sentence-transformers' own card, with a usage snippet that loads the folder.

sentence-transformers writes ``README.md`` on every ``model.save`` and trainer checkpoint, and its trainer's card
callback already fills in the losses (with their ``citation``), the training data, the hyperparameters and the
training logs. The gaps closed here:

- the usage snippet: the stock one loads ``"sentence_transformers_model_id"`` (a placeholder) and, for a
  DupMAE folder, plain ``SentenceTransformer(path)``, which sentence-transformers 6 refuses for a module class
  outside its own package; :class:`RetroMAEModelCardData` writes one that loads this folder (or the hub id
  it is published under), through :func:`retromae_st.load_dupmae_model` for DupMAE;
- the DupMAE folder is a new model built after training (:func:`retromae_st.build_dupmae_model`), which
  would start with an empty card: :func:`carried_over_card_data` gives it the training model's card;
- a corpus read from files is streamed and has no name sentence-transformers could show (it says
  "generator"): :func:`name_training_data` names it by its files;
- the training-log table shows only the summed loss: :func:`record_loss_terms` adds each term
  (``encoder_mlm``, ``decoder_mlm``, ...), called by the losses' trainer callback.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import fields

from sentence_transformers.sentence_transformer.model_card import SentenceTransformerModelCardData

#: Card fields that describe the model object or one save, not the training: rebuilt for a new model.
NOT_CARRIED_OVER = {
    "model",
    "template_path",
    "save_dir",
    "first_save",
    "usage_examples",
    "usage_examples_display",
    "similarities",
    "widget_step",
    "eval_results_dict",  # evaluator scores of the training model's own embeddings
    "_training_start_time",  # the card would report the time until the new model is saved as training time
    "_asset_cache",
    "_cached_dict",
    "version",
}

#: The terms our losses return (and the trainer logs) that the card's training-log table shows beside the loss.
LOSS_TERMS = ("encoder_mlm", "decoder_mlm", "bow", "contrastive")

DUPMAE_LOADING_NOTE = (
    "# sentence-transformers 6 loads module classes from outside its own package only with\n"
    "# trust_remote_code=True; load_dupmae_model resolves DupMAEPooling to the installed retromae_st class\n"
    "# instead (SentenceTransformer(path, trust_remote_code=True) gives the same model).\n"
)


class RetroMAEModelCardData(SentenceTransformerModelCardData):
    """sentence-transformers' model card data, whose usage snippet loads the saved folder itself.

    The snippet names ``model_id`` when the model is published under one, else the folder the card is written
    into; a model with a :class:`retromae_st.DupMAEPooling` module is loaded with
    :func:`retromae_st.load_dupmae_model`, any other with ``SentenceTransformer(...)``. The texts and the
    printed similarities are the ones sentence-transformers computes for its own snippet.
    """

    def generate_usage_snippet(self) -> str:
        location = self.model_id or self.save_dir or "path/to/this/folder"
        if self.is_dupmae_model():
            lines = ["# pip install retromae-st", "from retromae_st import load_dupmae_model", ""]
            lines += [DUPMAE_LOADING_NOTE + f"model = load_dupmae_model({location!r})"]
        else:
            lines = ["from sentence_transformers import SentenceTransformer", ""]
            lines += [f"model = SentenceTransformer({location!r})"]
        lines += self.query_document_lines() if self.ir_model else self.sentence_lines()
        if self.similarities:  # what sentence-transformers computed for these texts when saving
            lines.append(self.similarities)
        if self.is_dupmae_model():
            lines += [
                "",
                "# Search a corpus with compact top-k document vectors: retromae_st.DupMAERetriever(model)",
            ]
        return "```python\n" + "\n".join(lines) + "\n```"

    def sentence_lines(self) -> list[str]:
        texts = (self.usage_examples or ["The weather is lovely today.", "It's so sunny outside!"])[:3]
        return [
            "sentences = [",
            *(f"    {text!r}," for text in texts),
            "]",
            "embeddings = model.encode(sentences)",
            "print(embeddings.shape)",
            f"# [{len(texts)}, {self.model.get_embedding_dimension()}]",
            "",
            "similarities = model.similarity(embeddings, embeddings)",
            "print(similarities)",
        ]

    def query_document_lines(self) -> list[str]:
        texts = self.usage_examples or ["Which planet is known as the Red Planet?", "Mars is the Red Planet."]
        return [
            f"queries = [{texts[0]!r}]",
            "documents = [",
            *(f"    {text!r}," for text in texts[1:]),
            "]",
            "query_embeddings = model.encode_query(queries)",
            "document_embeddings = model.encode_document(documents)",
            "print(query_embeddings.shape, document_embeddings.shape)",
            "",
            "similarities = model.similarity(query_embeddings, document_embeddings)",
            "print(similarities)",
        ]

    def to_dict(self) -> dict:
        self.add_module_citations()
        return super().to_dict()

    def add_module_citations(self) -> None:
        """Cites the papers of the model's own modules (e.g. :class:`retromae_st.DupMAEPooling`) that no loss cited."""
        for module in self.model:
            citation = getattr(module, "citation", None)
            if citation and not any(citation.strip() in cited for cited in self.citations.values()):
                self.citations[type(module).__name__] = citation

    def is_dupmae_model(self) -> bool:
        from retromae_st.dupmae_pooling import DupMAEPooling

        return any(isinstance(module, DupMAEPooling) for module in self.model)


def carried_over_card_data(source: SentenceTransformerModelCardData) -> RetroMAEModelCardData:
    """A card for a new model built from a trained one: ``source``'s losses, citations, datasets,
    hyperparameters and training logs (containers copied), without what belongs to ``source``'s own model."""
    card = RetroMAEModelCardData()
    for card_field in fields(SentenceTransformerModelCardData):
        if card_field.name in NOT_CARRIED_OVER:
            continue
        value = getattr(source, card_field.name)
        setattr(card, card_field.name, copy.copy(value) if isinstance(value, (list, dict)) else value)
    return card


def record_loss_terms(card: SentenceTransformerModelCardData, step: int, logs: dict) -> None:
    """Adds the logged :data:`LOSS_TERMS` to the card's training-log row of ``step`` (the row
    sentence-transformers' card callback has just written with the summed loss)."""
    if card.training_logs and card.training_logs[-1].get("Step") == step:
        card.training_logs[-1].update({name: logs[name] for name in LOSS_TERMS if name in logs})


def name_training_data(model, corpus: object) -> None:
    """Names the training data in ``model``'s card by the corpus files (or glob patterns / folders) it is read
    from; call before the trainer is built. Anything else (a ``Dataset``) keeps the name sentence-transformers
    infers for it."""
    sources = [corpus] if isinstance(corpus, (str, os.PathLike)) else corpus
    if not isinstance(sources, Sequence) or not sources:
        return
    if not all(isinstance(source, (str, os.PathLike)) for source in sources):
        return
    names = [os.path.basename(os.fspath(source).rstrip("/\\")) for source in sources]
    model.model_card_data.train_datasets = [{"name": ", ".join(names)}]
