"""BABILong metrics: exact match per sample, micro and macro F1 for classification, logged examples."""
import logging

import torch

logger = logging.getLogger(__name__)

EXAMPLE_TAIL_TOKENS = 12  # shown examples end with this many input tokens: the question (and GEN)


def f1_scores(predictions: torch.Tensor, labels: torch.Tensor, n_classes: int) -> dict:
    """Micro and macro F1 (%) of single-label predictions (N,) against labels (N,)."""
    hits = predictions == labels
    true_positive = torch.bincount(labels[hits], minlength=n_classes).float()  # (C,)
    false_positive = torch.bincount(predictions[~hits], minlength=n_classes).float()
    false_negative = torch.bincount(labels[~hits], minlength=n_classes).float()
    denominator = 2 * true_positive + false_positive + false_negative
    per_class = torch.where(denominator > 0, 2 * true_positive / denominator.clamp(min=1), torch.ones(n_classes))
    micro = 2 * true_positive.sum() / (2 * true_positive.sum() + false_positive.sum() + false_negative.sum())
    present = (true_positive + false_negative) > 0  # macro F1 over the classes that occur
    return {"f1_micro": 100 * micro.item(), "f1_macro": 100 * per_class[present].mean().item()}


class BabilongMetrics:
    """Metric hooks of the Trainer: exact match per sample, and examples to log during validation.

    Args:
        model: the wrapped model (its `training` flag tells validation from training batches).
        model_type: 'encoder' (class predictions) or 'decoder' (generated text).
        tokenizer: decodes generations and example questions.
        labels: the task's answer vocabulary.
        n_examples: validation examples to log per validation.
    """

    def __init__(self, model, model_type: str, tokenizer, labels, n_examples: int):
        self.model, self.model_type, self.tokenizer = model, model_type, tokenizer
        self.labels, self.n_examples = labels, n_examples

    def keep(self, batch: dict, output) -> dict:
        """Per-sample predictions and targets (as label indices or text) and, in validation, example lines."""
        if self.model_type == "encoder":
            predictions, targets = output["logits"].argmax(dim=-1), batch["labels"]
            kept = {"predictions": predictions, "labels": targets}
            shown = [(self.labels[t], self.labels[p]) for t, p in zip(targets.tolist(), predictions.tolist())]
            context_ids, context_mask = batch["input_ids"], batch["attention_mask"]
        else:
            if "generation_outputs" not in output:  # training batches: no generation, no exact match
                return {}
            texts = self.tokenizer.batch_decode(output["generation_outputs"], skip_special_tokens=True)
            answers = [text.strip().lower() for text in texts]
            targets = [target.strip().lower() for target in batch["target_text"]]
            kept = {"exact": torch.tensor([a == t for a, t in zip(answers, targets)])}
            shown = list(zip(targets, answers))
            context_ids, context_mask = batch["input_ids_generate"], batch["attention_mask_generate"]
        if self.n_examples and not self.model.training:
            kept["examples"] = [f"...{self._tail(ids, mask)} | target: {target} | predicted: {predicted}"
                                for ids, mask, (target, predicted) in zip(context_ids, context_mask, shown)]
        return kept

    def _tail(self, input_ids, attention_mask) -> str:
        return self.tokenizer.decode(input_ids[attention_mask.bool()][-EXAMPLE_TAIL_TOKENS:])

    def compute(self, data: dict) -> dict:
        """exact_match (%) and n_samples; f1_micro/f1_macro for classification; logs the first examples."""
        for line in data.get("examples", [])[:self.n_examples]:
            logger.info(f"example: {line}")
        if "predictions" in data:
            predictions, labels = data["predictions"], data["labels"]
            exact = predictions == labels
            metrics = f1_scores(predictions, labels, len(self.labels))
        elif "exact" in data:
            exact, metrics = data["exact"], {}
        else:
            return {}
        return {"exact_match": 100 * exact.float().mean().item(), **metrics, "n_samples": len(exact)}
