"""The batch job over Parquet: the online graph's preprocessing and model, run with Ray Data."""
