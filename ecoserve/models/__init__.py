"""Models the daemon can serve without downloading anything: built-in demos and the digits pair.

``loader`` resolves a ``--model`` spec (``builtin:cnn``, ``module:function``, a TorchScript
file); ``builtin`` holds small deterministic models; ``digits`` the small/large pair with
shipped weights (``ecoserve/weights/``) used by the tier examples. Plain torch: imports no
other part of ecoserve.
"""
