"""Evaluation: metrics (metrics.py), protocols gt | tae | t2m | stream (protocols.py), the evaluator's
trainer (train_evaluator.py) and the `evaluate` / `train-evaluator` verbs (commands.py). The evaluator
model itself is motionstreamer.models.evaluator."""
