"""The core every layer stands on: the protocol between hub and children, and small helpers.

Nothing here imports the rest of the project (a test holds it to that).
"""
