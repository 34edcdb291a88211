"""`dept bench`: DePT's time and memory against vanilla prompt tuning (ours and PEFT's) and LoRA.

DePT's reason to exist is cost: the paper claims >20 % less training and inference time and
memory than prompt tuning (PT) at the same number of trainable parameters, because a shorter
prompt means shorter sequences. This package measures that claim on the same batches for every
method and reports every figure as a ratio to PT l=100 from the same run. It is not part of the
method; nothing in the library imports it.

Modules, in the order a run uses them:

- ``options``   names of models, length regimes and methods; ``Workload``, ``BenchOptions`` (no torch)
- ``workloads`` backbones (SmolLM2 or random-weight shapes), token batches, the suites' plans
- ``methods``   the compared methods, built as users build them; one train/score/generate step
- ``timing``    interleaved rounds and paired ratios (noise of a shared machine cancels)
- ``memory``    the memory probe process (peak RSS / CUDA peak of one method at a time)
- ``runner``    one run end to end
- ``targets``   pass/fail thresholds read from a JSON file that lives with the results
- ``report``    results.json, results.md, charts (drawn by ``dept.runs.plots``), console summary
- ``cli``       the ``dept bench`` command
"""
