"""Local scale-to-zero: ``kpa`` (the Knative-style autoscaling policy), ``supervisor``
(each model's pool of replicas and the loop that scales it), ``replica`` (one worker
process and how it is spawned) and ``forkserver`` (warm forks of a preloaded worker)."""
