"""Reference side of tests/deploy_transformers.rs: the cards of a run read by huggingface_hub, the
hub's own client, as the hub reads them.

    python hub_cards.py MODEL_README.md DATASET_README.md OUT.json

Parses each card's YAML front matter (yaml.safe_load through ModelCard / DatasetCard), turns the
model card's `model-index` into huggingface_hub's EvalResult objects (which require the task
type, dataset type and name, and metric type and value), and writes what it read.
"""

import json
import sys

from huggingface_hub import DatasetCard, ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results


def main(model_readme: str, dataset_readme: str, out_path: str) -> None:
    model = ModelCard.load(model_readme)
    dataset = DatasetCard.load(dataset_readme)
    data = model.data.to_dict()
    name, results = model_index_to_eval_results(data["model-index"])
    report = {
        "model": data,
        "model_text_starts": model.text.lstrip()[:40],
        "model_index_name": name,
        "eval_results": [
            {
                "task_type": r.task_type,
                "dataset_type": r.dataset_type,
                "dataset_name": r.dataset_name,
                "metric_type": r.metric_type,
                "metric_name": r.metric_name,
                "metric_value": r.metric_value,
                "metric_args": r.metric_args,
            }
            for r in results
        ],
        "dataset": dataset.data.to_dict(),
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
