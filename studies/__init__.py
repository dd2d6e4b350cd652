"""Studies: analyses that train many variants of the model (studies/dvc.yaml)."""
