"""CIFAR-100 (FedEM paper, section 5): 100 clients x 600 samples by Pachinko allocation (coarse
labels Dir(0.4), fine labels Dir(10)), FedEM learning rate 0.01.

The paper trains an ImageNet-pretrained MobileNetV2; fedem_jax's default here is the CIFAR-10
CNN with 100 outputs (see docs/design.md, "Limitations")."""


def get_config() -> dict:
    return dict(
        init="torch",  # the reference's PyTorch initialisation (see docs/guide/datasets.md, "Initialisation")
        dataset="cifar100",
        model="cifar10_cnn",
        n_clients=100,
        alpha=0.4,
        split="pachinko",
        n_learners=3,
        n_rounds=200,
        local_epochs=1,
        batch_size=128,
        lr=0.01,
        lr_scheduler="multi_step",
        optimizer="sgd",
        drop_last=True,
    )
