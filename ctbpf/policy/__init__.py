"""Enforce-mode policies: parsed and checked (model), compiled into the
datapath's maps and read back (mapio), explained as nftables (nftables).
"""
