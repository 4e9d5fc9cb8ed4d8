"""The training engine (Lightning): module, data module, callbacks and the `pretrain` entry point."""
