"""Writes of the training app (the selectors module holds the reads). One module per concern:

- runs: lifecycle (launch, claim, cancel, finish, sweep, retry, resume) and API keys
- ingest: what a running run reports (metrics, logs, checkpoints), in one statement per batch
- datasets: launch-time checks of dataset files; limits sized from the data ("Train on this")
- supervisor: the Celery worker's side: start the engine subprocess and watch it
"""
