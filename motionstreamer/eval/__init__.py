"""Evaluation: metrics (metrics.py), protocols gt | tae | t2m | stream (protocols.py) and the `evaluate`
verb (commands.py). The evaluator model is motionstreamer.models.evaluator, its trainer
motionstreamer.train.evaluator (`train-evaluator`)."""
