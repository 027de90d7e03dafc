"""The worker: supervisor, pools, consumer loop and the life of one task.

Only the CLI imports this package; producers never load worker code.
"""
