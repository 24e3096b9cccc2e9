"""Synthetic mixture of 3 linear tasks (FedEM paper, section 5 / appendix): 300 clients, d=150.

The paper gives no learning rate for this dataset; 0.1 was the best of {0.03, 0.1, 0.3} for
FedEM in docs/performance.md, "Choosing the synthetic learning rate" (FedAvg scored the same at 0.03 and 0.1).
"""


def get_config() -> dict:
    return dict(
        dataset="synthetic",
        model="linear",
        n_clients=300,
        dim=150,
        synthetic_components=3,
        alpha=0.4,
        noise_std=0.1,
        n_test_per_client=5000,
        n_learners=3,
        n_rounds=200,
        local_epochs=1,
        batch_size=128,
        lr=0.1,
        lr_scheduler="multi_step",
        optimizer="sgd",
        drop_last=False,
    )
