"""A GitOps reconciler that makes whole HPC systems mobile.

The pipeline, one module per stage:
gitsource -> load -> resolve -> affected -> synth -> engine -> plan -> render -> apply.
"""

__version__ = "0.1.0"
