"""The model zoo (:mod:`.zoo`: one entry per model, with what it needs and can do), MobileNetV2
(:mod:`.mobilenet`), the convolution forms (:mod:`.convolution`) and weights from files
(:mod:`.pretrained`, :mod:`.torch_weights`)."""

from fedem_jax.models.zoo import (
    CONV_MODELS,
    DEPTHWISE_MODELS,
    INITS,
    MODELS,
    STATEFUL_MODELS,
    TORCH_OWN_INIT,
    ModelSpec,
    build_model,
    count_params,
    default_conv_impl,
    init_stacked_params,
    input_problem,
    max_pool_2x2,
    model_state,
    torch_default_init,
)

__all__ = [
    "CONV_MODELS",
    "DEPTHWISE_MODELS",
    "INITS",
    "MODELS",
    "STATEFUL_MODELS",
    "TORCH_OWN_INIT",
    "ModelSpec",
    "build_model",
    "count_params",
    "default_conv_impl",
    "init_stacked_params",
    "input_problem",
    "max_pool_2x2",
    "model_state",
    "torch_default_init",
]
