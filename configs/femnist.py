"""FEMNIST (FedEM paper, section 5): LEAF JSON, one client per writer, 15 % of the writers kept,
FEMNIST CNN, FedEM learning rate 0.03."""


def get_config() -> dict:
    return dict(
        init="torch",  # the reference's PyTorch initialisation (see docs/guide/datasets.md, "Initialisation")
        dataset="femnist",
        model="femnist_cnn",
        data_frac=0.15,
        n_learners=3,
        n_rounds=200,
        local_epochs=1,
        batch_size=128,
        lr=0.03,
        lr_scheduler="multi_step",
        optimizer="sgd",
        drop_last=True,
    )
