"""ctbpf: Linux connection tracking on the NIC path."""

__version__ = "0.1.0"
