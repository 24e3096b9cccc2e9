"""Your own federated data (``--dataset npz --data_path ...``): FedEM's usual training settings."""


def get_config() -> dict:
    return dict(
        dataset="npz",
        n_learners=3,
        n_rounds=200,
        local_epochs=1,
        batch_size=128,
        lr=0.03,
        lr_scheduler="multi_step",
        optimizer="sgd",
        drop_last=False,
    )
