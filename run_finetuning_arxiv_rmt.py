"""Train or evaluate a decoder with recurrent memory on long-document language modelling (docs/design.md).

The backbone (GPT-2 from the hub with `--from_pretrained gpt2`, or any causal LM from `--model_cfg`) is wrapped
in `MemoryCell` + `RecurrentWrapper`; `--num_mem_tokens 0 --max_n_segments 1` (the defaults) is the no-memory
baseline. Documents are tokenized once and every full block of `input_size - 2 * num_mem_tokens` tokens is scored once,
read after up to `max_n_segments - 1` blocks of its document (`arxiv_lm.data`). Validation reports loss and
perplexity of the last block (the trained objective), of all blocks and per segment position
(`arxiv_lm.metrics`); after training, the best checkpoint is evaluated on validation and test and the numbers
are written to `<model_path>/results.json`.

Text: `--dataset_path` (a `load_from_disk` folder with train/validation[/test], e.g. the ArXiv part of the
Pile), `--dataset_name` (a hub dataset), `--text_files` + `--valid_text_files` (one document per file), or,
with none of them, the offline default: docstrings of the Python standard library (`rmt_experiments.text_sources`).
Without `--from_pretrained`/`--model_cfg`/`--tokenizer` the backbone is a small GPT-2 initialised from scratch
with the MiniLM tokenizer, so the script runs on a fresh CPU machine without downloads.

    torchrun --nproc_per_node=1 run_finetuning_arxiv_rmt.py --model_path runs/arxiv/rmt --input_size 128 \
        --num_mem_tokens 2 --max_n_segments 2 --batch_size 8 --iters 300 --lr 1e-3 --valid_interval 100

A `--model_path` that already holds a run is refused unless `--resume` (continue it) or `--overwrite` (start over,
deleting its checkpoints, events and results) is given. Every error ends with one line on stderr naming the cause
and the log file that holds the traceback (error.log in the run folder): exit code 2 for bad input (missing data,
missing splits, input_size <= 2 * num_mem_tokens, a tokenizer without pad/eos fallback, a checkpoint that does not
load, ...), 1 for failures at run time (a full disk, non-finite weights or metrics, which are never written to
results.json). The experiment is `arxiv_lm.experiment` (options in `arxiv_lm.run_args`); what it shares with
run_finetuning_babilong_rmt.py is in `rmt_experiments`, the Trainer and its run plumbing in `lm_experiments_tools`.
"""
import signal

if __name__ == "__main__":
    # Ctrl-C while torch and transformers load (seconds) ends the process at once: nothing has started, and a
    # KeyboardInterrupt there would end in a traceback, since `main` turns it into its one line only once it runs
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    from arxiv_lm.experiment import main
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
