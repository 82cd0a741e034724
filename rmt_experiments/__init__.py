"""What the two RMT experiment families (`babilong`, `arxiv_lm`) share: the memory options and their checks, the
weights of a run folder, the offline tokenizer and backbones, and the text sources."""
