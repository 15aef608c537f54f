"""Data preparation: sources, the BPE tokenizer, packing and token shards. Covered by the data manifest."""
