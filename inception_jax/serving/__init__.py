"""What is done with a trained run: evaluation, prediction, export and converted weights."""
