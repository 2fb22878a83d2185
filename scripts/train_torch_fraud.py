"""Train a PyTorch fraud model the way a team would, and save it for `serve-app export`.

    python scripts/train_torch_fraud.py [--repository model_repository] [--out ship]

Trains an MLP (64-32, ReLU) with Adam on fresh synthetic transactions, through the fraud model's
own preprocessor (the latest version's preprocessor.json), and writes:
  <out>/fraud.pt          the model, scripted (TorchScript): features [batch, width] -> probability [batch]
  <out>/example.parquet   raw transactions for export's parity check (and the new version's reference)
The first step of the "Ship a new model" walkthrough (docs/guides/models.md). Seeded: the same file every run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from serve_app.demo import LABEL, MODEL_NAME, synthetic_transactions
from serve_app.repository import ModelRepository


class FraudMLP(torch.nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(width, 64),
            torch.nn.ReLU(),
            torch.nn.Linear(64, 32),
            torch.nn.ReLU(),
            torch.nn.Linear(32, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.layers(features)).squeeze(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", default="model_repository")
    parser.add_argument("--out", default="ship")
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    repo = ModelRepository(args.repository)
    preprocessor = repo.version(MODEL_NAME, repo.available_versions(MODEL_NAME)[-1]).preprocessor
    train, validation = synthetic_transactions(args.rows, seed=21), synthetic_transactions(20_000, seed=22)
    x = torch.from_numpy(preprocessor.transform_frame(train))
    y = torch.from_numpy(train[LABEL].to_numpy().astype(np.float32))
    model = FraudMLP(x.shape[1])
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-5)
    for _ in range(args.epochs):
        for batch in torch.randperm(len(x)).split(256):
            optimiser.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        scores = model(torch.from_numpy(preprocessor.transform_frame(validation))).numpy()
    from sklearn.metrics import roc_auc_score

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.jit.script(model).save(str(out / "fraud.pt"))
    synthetic_transactions(2_000, seed=23).drop(columns=[LABEL]).to_parquet(out / "example.parquet", index=False)
    auc = roc_auc_score(validation[LABEL], scores)
    print(f"validation AUC {auc:.4f}; wrote {out / 'fraud.pt'} and {out / 'example.parquet'}")


if __name__ == "__main__":
    main()
