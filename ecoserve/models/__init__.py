"""Models the daemon can serve without downloading anything: built-in demos and the digits pair.

``loader`` resolves a ``--model`` spec (``builtin:cnn``, ``module:function``, a TorchScript
file); ``builtin`` holds small deterministic models; ``digits`` the small/large pair with
shipped weights (``ecoserve/weights/``) used by the tier examples. For the tiers: ``stages``
measures a model's stages and slices it (``torch.fx``), ``cascade`` turns logits into the
cascade rule's scores, ``tensor_codec`` is the ``.npy`` form of a tensor crossing tiers.
Plain torch: imports only the core's tier vocabulary (``ecoserve.core.tiers``).
"""
