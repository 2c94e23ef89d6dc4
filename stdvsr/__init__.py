"""stdvsr: Space-Time Distillation of video super-resolution networks (Xiao et al., CVPR 2021).

Stages live in their own modules (``stdvsr.data``, ``stdvsr.degradations``, ``stdvsr.metrics``, …);
the ``stdvsr`` command (``stdvsr.cli``) is a thin shell over them.
"""

__version__ = "0.1.0"
