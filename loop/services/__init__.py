"""Writes of the loop app (selectors.py holds the reads). One module per concern:

- lineage: which export a run trained on (linked when the run row is created)
- policies: the Policy rows for checkpoints, run steps and model paths that produced judged text
- sampling: "Sample into a study" jobs: create, claim, progress, and the study they make
"""
