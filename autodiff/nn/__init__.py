"""Modules, functional forms, optimizers."""
from . import functional, init
from .conv import AvgPool2d, Conv2d, Flatten, MaxPool2d
from .conv import AdaptiveAvgPool2d, AvgPool1d, Conv1d, ConvTranspose2d, MaxPool1d
from .losses import (BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, HuberLoss, KLDivLoss, L1Loss, MSELoss,
                     NLLLoss, SmoothL1Loss)
from .layers import (GELU, Dropout, Embedding, LayerNorm, Linear, ReLU, RMSNorm, Sequential, Sigmoid, SiLU,
                     Softmax, Tanh)
from .layers import ELU, Hardswish, Hardtanh, LeakyReLU, LogSoftmax, Mish, ReLU6, Softplus
from .module import Module
from .module import ModuleDict, ModuleList, Parameter
from .norm import BatchNorm1d, BatchNorm2d, GroupNorm
from .data import DataLoader, IterableLoader
from .optim import SGD, Adagrad, Adam, AdamW, Optimizer, RMSprop
from . import utils
from .transformer import MultiheadAttention, TransformerEncoder, TransformerEncoderLayer, causal_mask
from .transformer import Transformer, TransformerDecoder, TransformerDecoderLayer
from . import parallel
