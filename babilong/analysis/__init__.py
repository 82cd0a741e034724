"""Analyses of a trained BABILong checkpoint, each a command run on a run folder:

    python -m babilong.analysis.fact_position RUN_DIR       # accuracy by how far back the answer's fact lies
    python -m babilong.analysis.memory_probe RUN_DIR        # linear probe of what the memory holds
    python -m babilong.analysis.reasoning_by_axis RUN_DIR   # reasoning accuracy by how the two facts lie

Each rebuilds the checkpoint's model and validation samples through `babilong.checkpoint_eval` and prints one
JSON summary. What they found is in babilong/RESULTS.md.
"""
