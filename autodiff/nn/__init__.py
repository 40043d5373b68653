"""Modules, functional forms, optimizers."""
from . import functional
from .conv import AvgPool2d, Conv2d, Flatten, MaxPool2d
from .layers import (GELU, Dropout, Embedding, LayerNorm, Linear, ReLU, RMSNorm, Sequential, Sigmoid,
                     SiLU, Softmax, Tanh)
from .module import Module
from .optim import SGD, Optimizer
from .transformer import MultiheadAttention, TransformerEncoder, TransformerEncoderLayer, causal_mask
