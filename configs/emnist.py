"""EMNIST byclass (FedEM paper, section 5): 10 % of the 814,255 images, 100 clients, per-label
Dirichlet(0.4), FEMNIST CNN, FedEM learning rate 0.05."""


def get_config() -> dict:
    return dict(
        init="torch",  # the reference's PyTorch initialisation (see docs/guide/datasets.md, "Initialisation")
        dataset="emnist",
        model="femnist_cnn",
        n_clients=100,
        alpha=0.4,
        split="dirichlet",
        data_frac=0.1,
        n_learners=3,
        n_rounds=200,
        local_epochs=1,
        batch_size=128,
        lr=0.05,
        lr_scheduler="multi_step",
        optimizer="sgd",
        drop_last=True,
    )
