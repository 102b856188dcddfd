"""`peftkit bench`: run a suite of recipe variants and compare metric against trainable parameters.

    suite.yaml ─▶ suite.load_suite ─▶ [Variant(name, overrides, Recipe)]   (validated like recipes)
               ─▶ runner.run_suite ─▶ pipeline.run_recipe() per variant ─▶ DIR/runs/<variant>/
               ─▶ report.write_reports ─▶ DIR/results.json, results.csv, results.md (+ terminal)
               ─▶ plot.plot_pareto     ─▶ DIR/pareto.png
    compare.compare_dirs(DIR_A, DIR_B) ─▶ per-variant differences of two result sets

Nothing here trains or loads a model: every run goes through `peftkit.pipeline.run_recipe`.
Torch-free at import time.
"""
