"""Where each model runs: ``inventory`` (the hardware), ``profiles`` (measured costs),
``profiler`` (measuring them), ``policy`` (choosing a placement), ``gpu_packing`` and
``manager`` (re-planning as the hardware and load change)."""
