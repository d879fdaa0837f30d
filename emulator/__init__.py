"""The local lakehouse stack: a faithful stand-in for Zerobus, a SQL warehouse and Lakebase.

Run it with `python -m emulator`; the app reaches it only over the network.
"""
