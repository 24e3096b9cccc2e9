"""A reference-style FedEM round in PyTorch: the baseline fedem_jax is compared against.

Written from ``FEDEM_SPEC.md`` (not from the reference's code) to compute the way the reference
does: Python loops over clients and learners, one ``torch.nn.Module`` and one ``torch.optim.SGD``
per (client, learner) with momentum kept across rounds, and a ``DataLoader`` per client whose
dataset turns each image into a PIL image and applies ToTensor + Normalize per sample.

Needs ``torch`` (``pip install -e '.[bench]'``); torchvision is not needed: the two per-sample
transforms are written out below with the same arithmetic.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

CIFAR10_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
CIFAR10_STD = torch.tensor([0.2023, 0.1994, 0.2010]).view(3, 1, 1)


class ImageDataset(Dataset):
    """uint8 HWC images; per sample: PIL image -> ToTensor -> Normalize, as the reference."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = Image.fromarray(self.images[index])
        tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        tensor = (tensor - CIFAR10_MEAN) / CIFAR10_STD
        return tensor, int(self.labels[index]), index


class TabularDataset(Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, index):
        return torch.tensor(self.x[index]), torch.tensor(float(self.y[index])), index


class TorchCIFAR10CNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 5)
        self.conv2 = nn.Conv2d(32, 64, 5)
        self.fc1 = nn.Linear(64 * 5 * 5, 2048)
        self.fc2 = nn.Linear(2048, num_classes)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class TorchLinear(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, 1)

    def forward(self, x):
        return self.fc(x)[:, 0]


class ReferenceStyleFedEM:
    """Centralized FedEM with the reference's execution structure (loops in Python)."""

    def __init__(
        self,
        make_model,
        client_datasets,
        binary: bool,
        n_learners=3,
        lr=0.03,
        batch_size=128,
        drop_last=False,
        momentum=0.9,
        weight_decay=5e-4,
        seed=0,
        batch_order=None,
    ):
        """``batch_order``: ``(round, client, epoch) -> permutation of the client's samples`` to
        train on in that order (e.g. :func:`fedem_jax_batch_order`, fedem_jax's own), instead of
        each client's shuffling ``DataLoader``: both sides then see the same batches."""
        torch.manual_seed(seed)
        self.binary = binary
        self.batch_order, self.round, self.batch_size = batch_order, 0, batch_size
        self.drop_last = drop_last
        self.global_learners = [make_model() for _ in range(n_learners)]
        self.clients = []
        for dataset in client_datasets:
            learners = [make_model() for _ in range(n_learners)]
            optimizers = [
                torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
                for m in learners
            ]
            self.clients.append(
                {
                    "learners": learners,
                    "optimizers": optimizers,
                    "pi": torch.full((n_learners,), 1.0 / n_learners),
                    # The reference drops a partial last batch only when the client has more than one.
                    "train": DataLoader(
                        dataset,
                        batch_size=batch_size,
                        shuffle=True,
                        drop_last=drop_last and len(dataset) > batch_size,
                    ),  # fmt: skip
                    "eval": DataLoader(dataset, batch_size=batch_size, shuffle=False),
                    "n": len(dataset),
                }
            )
        total = sum(c["n"] for c in self.clients)
        self.weights = [c["n"] / total for c in self.clients]

    def _loss(self, outputs, targets):
        if self.binary:
            return nn.functional.binary_cross_entropy_with_logits(outputs, targets, reduction="none")
        return nn.functional.cross_entropy(outputs, targets, reduction="none")

    def evaluate(self, test_datasets) -> float:
        """Test accuracy over all clients (``sum correct / sum n``) of each client's mixture
        ``sum_m pi_m softmax(global learner m)``, as fedem_jax evaluates."""
        correct = total = 0
        with torch.no_grad():
            for client, dataset in zip(self.clients, test_datasets, strict=True):
                for learner in self.global_learners:
                    learner.eval()
                for x, y, _ in DataLoader(dataset, batch_size=256):
                    outputs = [learner(x) for learner in self.global_learners]
                    if self.binary:
                        p1 = sum(w * torch.sigmoid(o) for w, o in zip(client["pi"], outputs, strict=True))
                        predicted = (p1 > 0.5).float()
                    else:
                        probs = sum(
                            w * torch.softmax(o, -1) for w, o in zip(client["pi"], outputs, strict=True)
                        )
                        predicted = probs.argmax(-1)
                    correct += int((predicted == y).sum())
                    total += len(y)
        return correct / total

    def _train_batches(self, client: dict, c: int):
        """One local epoch's batches: the client's shuffling loader, or the order given."""
        if self.batch_order is None:
            return client["train"]
        order = [int(i) for i in self.batch_order(self.round, c, 0)]
        dataset = client["eval"].dataset
        drop = self.drop_last and len(dataset) > self.batch_size
        return DataLoader(dataset, batch_size=self.batch_size, sampler=order, drop_last=drop)

    def run_round(self):
        for c, client in enumerate(self.clients):
            for local, global_model in zip(client["learners"], self.global_learners, strict=True):
                local.load_state_dict(global_model.state_dict())
            # E-step with the broadcast parameters, eval mode.
            losses = torch.zeros(len(client["learners"]), client["n"])
            with torch.no_grad():
                for m, learner in enumerate(client["learners"]):
                    learner.eval()
                    for x, y, index in client["eval"]:
                        losses[m, index] = self._loss(learner(x), y)
            q = torch.softmax(torch.log(client["pi"])[:, None] - losses, dim=0)
            client["pi"] = q.mean(dim=1)
            # M-step: one local epoch per learner on the weighted loss.
            for m, (learner, optimizer) in enumerate(
                zip(client["learners"], client["optimizers"], strict=True)
            ):
                learner.train()
                for x, y, index in self._train_batches(client, c):
                    optimizer.zero_grad()
                    loss = (q[m, index] * self._loss(learner(x), y)).sum() / len(y)
                    loss.backward()
                    optimizer.step()
        # Server: sample-weighted average over all clients, learner by learner.
        with torch.no_grad():
            for m, global_model in enumerate(self.global_learners):
                for name, param in global_model.state_dict().items():
                    param.copy_(
                        sum(
                            w * c["learners"][m].state_dict()[name]
                            for w, c in zip(self.weights, self.clients, strict=True)
                        )
                    )
        self.round += 1


def fedem_jax_batch_order(seed: int, counts, batch_size: int):
    """fedem_jax's epoch order of each client (FedEM's derivation: round key
    ``fold_in(fold_in(PRNGKey(seed), 1), round)``, client ``c`` shuffles with
    ``fold_in(fold_in(round_key, 1), c)``, epoch ``e`` with ``fold_in(., e)``, over the clients'
    common slot count), as ``(round, client, epoch) -> permutation`` for ``batch_order``."""
    import jax

    from fedem_jax.core.shuffle import epoch_order

    counts = [int(n) for n in counts]
    n_slots = -(-max(counts) // batch_size) * batch_size

    def order(round_index: int, client: int, epoch: int) -> np.ndarray:
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), 1), round_index)
        key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, 1), client), epoch)
        return np.asarray(epoch_order(key, n_slots, counts[client]))[: counts[client]]

    return order
