"""Differential privacy: accountants, central and local (DP-SGD) training, the ledger, the LiRA audit."""
