"""The policy: a chat LM that speaks the logs (chat format, tokenizer, tiny model), its prompt rows,
supervised fine-tuning on the logged replies, sampling, and its optimization against user feedback."""
