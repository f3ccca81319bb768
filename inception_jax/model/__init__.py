"""The network: kernels, layers, GoogLeNet and its Table 1. Imports only the root's shared modules."""
