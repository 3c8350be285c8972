"""Task heads: what a fine-tune predicts from the GPT's outputs and how it is scored."""
