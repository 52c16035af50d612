"""xdm-recall: a streaming online-learning recall system implementing XDM (a.k.a. SRU2B)."""

__version__ = "0.1.0"
