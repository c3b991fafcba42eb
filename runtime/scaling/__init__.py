"""Local scale-to-zero: ``kpa`` (the Knative-style autoscaling policy), ``pool`` (one
model's replicas and how it scales), ``queue`` (its requests waiting for a replica),
``tiers`` (which replicas a placement starts and drains, pure), ``supervisor`` (every
model's pool and the loop that scales them), ``replica`` (one worker process, its
readiness and how it is launched), ``forkserver`` (warm forks of a preloaded worker)
and ``source`` (what the gateway needs from whatever hands out replicas)."""
