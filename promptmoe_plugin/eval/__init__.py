"""Evaluation harness: datasets, metrics, coarse masks, click simulation and benchmarks.

* :mod:`.datasets` image/ground-truth folders and the one sampler of their images;
  :mod:`.metrics` (Boundary) IoU; :mod:`.coarse` generated coarse masks;
  :mod:`.clicker` the click protocol and click figures;
* :mod:`.methods` the compared click and refine methods with their typed options,
  :mod:`.options` ``[METHOD:]KEY=VALUE`` strings to those options;
* :mod:`.click_bench`, :mod:`.refine_bench` the two method benchmarks, :mod:`.stats`
  the refinement statistics, :mod:`.report` tables, ``report.md``, overlays and JSON;
* :mod:`.engine_bench` SAM engine timings, :mod:`.stages` refinement stage timings,
  :mod:`.router_data` training the expert selector from dataset folders.
"""
