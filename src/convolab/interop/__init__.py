"""Bridges between convolab and other array libraries.

``convolab.interop.torch`` runs a PyTorch model's 2D convolutions through convolab
(`convolab.interop.torch.use`, `~convolab.interop.torch.patch`); ``convolab.interop.models``
loads the real pretrained network and photographs the end-to-end checks use. Neither is
imported here, so ``import convolab`` never imports PyTorch.
"""
