"""Modules, functional forms, optimizers."""
from . import functional
from .layers import GELU, Linear, ReLU, Sequential, Sigmoid, Softmax, Tanh
from .module import Module
from .optim import SGD, Optimizer
