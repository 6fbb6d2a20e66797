"""ganforge: train, evaluate and sample GANs, from the classic recipes up.

Importing the package touches no GPU and no network.
"""

__version__ = "0.1.0"
