"""CIFAR-10 (FedEM paper, section 5): 80 clients, label groups {3,3,4} with Dirichlet(0.4)."""


def get_config() -> dict:
    return dict(
        init="torch",  # the reference's PyTorch initialisation (see docs/guide/datasets.md, "Initialisation")
        dataset="cifar10",
        model="cifar10_cnn",
        n_clients=80,
        alpha=0.4,
        split="label_groups",
        n_learners=3,
        n_rounds=200,
        local_epochs=1,
        batch_size=128,
        lr=0.03,
        lr_scheduler="multi_step",
        optimizer="sgd",
        drop_last=True,
    )
