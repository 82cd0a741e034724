"""Train or evaluate a transformer with recurrent memory on BABILong tasks (docs/design.md).

Two model families, chosen by `--model_type`:
- `encoder` (the AAAI-24 paper): a `*ForSequenceClassification` backbone (bert-base-cased in the paper, MiniLM
  offline) in `RMTEncoderForSequenceClassification`; the answer is a class over the task's answer vocabulary.
- `decoder` (the BABILong release): a causal LM in `MemoryCell` + `RecurrentWrapper`, trained on
  `context + question + GEN + answer + EOS` with the loss on the answer; validation generates the answer.
Metric: `exact_match` (accuracy, %), plus `f1_micro` and `f1_macro` for classification.

Lengths: a sample holds `input_seq_len` task tokens (no special tokens). By default it fills `max_n_segments`
segments exactly: segment_size * max_n_segments tokens (499 * N for BERT with input 512 and 10 memory tokens), less
the GEN + answer + EOS tokens for the decoder.

`--curriculum 1,2,4` trains one stage per segment count in one invocation; stage k starts from the best checkpoint
(model_best.pth) of stage k - 1 and writes its own run folder: `--model_path` then holds a `{n_segments}`
placeholder. After each stage the best checkpoint is evaluated at the stage's length; `--eval_n_segments 16,64`
also evaluates the last stage's best checkpoint at those segment counts. `--validate_only --model_cpt DIR`
evaluates DIR/model_best.pth (at `--input_seq_len`/`--max_n_segments`, or at each `--eval_n_segments`). Every
evaluation appends one record to `results.jsonl` in the run folder (`--model_path`, else the `--model_cpt`
folder); `python -m babilong.plot RUNS_DIR` draws them. Long samples are evaluated segment by segment with
constant memory and a progress bar per sample.

    python run_finetuning_babilong_rmt.py --task memorize --input_size 64 --num_mem_tokens 4 \
        --curriculum 1,2 --model_path runs/memorize/minilm/in64_mem4_seg{n_segments}/run_1 \
        --batch_size 16 --iters 100 --lr 1e-4 --valid_interval 20 --save_best \
        --optimize_metric exact_match --optimize_mode max

A `--model_path` that already holds a run is refused unless `--resume` (continue it; a curriculum skips the
stages that finished, i.e. have their evaluation record) or `--overwrite` (start over, deleting its checkpoints,
events and results) is given. `--validate_only` appends to the evaluated run's results, or writes a new folder
given as `--model_path`, never into another run. One run at a time writes a folder (lm_experiments_tools.run_folder).

Every error ends with one line on stderr naming the cause and the log file that holds the traceback (error.log in
the run folder): exit code 2 for bad input (flags, files, checkpoints, a `--model_cpt` made with another
num_mem_tokens or backbone, an input_seq_len that the segments cannot hold, ...), 1 for failures at run time (a
full disk, non-finite weights). The experiment is `babilong.experiment` (options in `babilong.run_args`, lengths in
`babilong.stages`, metrics in `babilong.metrics`); what it shares with run_finetuning_arxiv_rmt.py is in
`rmt_experiments`, the Trainer and its run plumbing in `lm_experiments_tools`.
"""
import signal

if __name__ == "__main__":
    # Ctrl-C while torch and transformers load (seconds) ends the process at once: nothing has started, and a
    # KeyboardInterrupt there would end in a traceback, since `main` turns it into its one line only once it runs
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    from babilong.experiment import main
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
