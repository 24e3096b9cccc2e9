"""Shakespeare (FedEM paper, section 5): LEAF JSON, one client per (play, role), time-ordered
80/20 split, 80-character windows, NextCharacterLSTM, FedEM learning rate 0.05."""


def get_config() -> dict:
    return dict(
        init="torch",  # the reference's PyTorch initialisation (see docs/guide/datasets.md, "Initialisation")
        dataset="shakespeare",
        model="lstm",
        n_learners=3,
        n_rounds=200,
        local_epochs=1,
        batch_size=128,
        lr=0.05,
        lr_scheduler="multi_step",
        optimizer="sgd",
    )
