"""Modules, functional forms, optimizers."""
from . import functional
from .conv import AvgPool2d, Conv2d, Flatten, MaxPool2d
from .losses import (BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, HuberLoss, KLDivLoss, L1Loss, MSELoss,
                     NLLLoss, SmoothL1Loss)
from .layers import (GELU, Dropout, Embedding, LayerNorm, Linear, ReLU, RMSNorm, Sequential, Sigmoid, SiLU,
                     Softmax, Tanh)
from .module import Module
from .data import DataLoader
from .optim import SGD, Adagrad, Adam, AdamW, Optimizer, RMSprop
from . import utils
from .transformer import MultiheadAttention, TransformerEncoder, TransformerEncoderLayer, causal_mask
