"""Deterministic builders of the course data sets; run `python data/build_data.py` (`make data`).

One module per set (`shakespeare`, `sentiment`, `characters`, `mentions`, `t2t`) plus `fileio` for
writing files reproducibly. Notebooks never import this package: they load the built files
through `deepdive.datasets`.
"""
