"""Known bugs of module 11: causal-LM blocks, perplexity, seq2seq preprocessing, exact match.

Each is the reference's solution cell with one line changed (edit_mutant), so no solution is pasted here. The
exact checks catch every one of them; the trained checks (perplexity after fine-tuning DistilGPT-2 on the
learner's blocks, exact match of T5 trained on the learner's preprocessing, per task) catch what breaks learning:
calibration next to MAX_PPL_RATIO / MIN_EXACT_MATCH and in bench/generative_calibration.py.
"""

from grader.mutants import edit_mutant

MUTANTS: list = []

# -------------------------------------------------------------------------------------------- group_texts
edit_mutant("group_texts", "keeps the short last block (no floor to a multiple of block_size)", MUTANTS,
            name="keeps_short_block", old='total = len(concatenated["input_ids"]) // block_size * block_size',
            new='total = len(concatenated["input_ids"])')
edit_mutant("group_texts", "shifts the labels itself (the model shifts them again: it learns two tokens ahead)",
            MUTANTS, name="shifts_labels", old='result["labels"] = [list(block) for block in result["input_ids"]]',
            new='result["labels"] = [list(block[1:]) + [-100] for block in result["input_ids"]]')
edit_mutant("group_texts", "cuts each text on its own (texts shorter than a block vanish, every text's end is lost)",
            MUTANTS, name="per_text_blocks",
            old="result = {k: [ids[i:i + block_size] for i in range(0, total, block_size)] for k, ids in concatenated.items()}",
            new="result = {k: [t[i:i + block_size] for t in examples[k] for i in range(0, len(t) - block_size + 1, "
                "block_size)] for k in examples.keys()}")
edit_mutant("group_texts", "groups input_ids only (attention_mask is dropped)", MUTANTS, name="input_ids_only",
            old="for k, ids in concatenated.items()}", new='for k, ids in concatenated.items() if k == "input_ids"}')

# --------------------------------------------------------------------------------------------- perplexity
edit_mutant("perplexity", "base 2 (bits) instead of e: PyTorch's cross-entropy is in nats", MUTANTS, name="base_2",
            old="return math.exp(eval_loss)", new="return 2 ** eval_loss")
edit_mutant("perplexity", "base 10", MUTANTS, name="base_10", old="return math.exp(eval_loss)",
            new="return 10 ** eval_loss")
edit_mutant("perplexity", "the log of the loss instead of its exponential", MUTANTS, name="log_of_loss",
            old="return math.exp(eval_loss)", new="return math.log(eval_loss)")
edit_mutant("perplexity", "no overflow guard: a diverged model's evaluation crashes with OverflowError", MUTANTS,
            name="overflow_raises", old="except OverflowError:", new="except ZeroDivisionError:")

# ------------------------------------------------------------------------------------- preprocess_seq2seq
edit_mutant("preprocess_seq2seq", "pad tokens left in the labels (the model is trained to predict padding)", MUTANTS,
            name="pads_in_labels", old='model_inputs["labels"] = [[-100 if t == pad else t for t in row] for row in '
            'targets["input_ids"]]', new='model_inputs["labels"] = targets["input_ids"]')
edit_mutant("preprocess_seq2seq", "forgets the task prefix", MUTANTS, name="no_prefix",
            old='inputs = [prefix + text for text in batch["source"]]', new='inputs = list(batch["source"])')
edit_mutant("preprocess_seq2seq", "the prefix on the targets too", MUTANTS, name="prefix_on_targets",
            old='text_target=batch["target"]', new='text_target=[prefix + t for t in batch["target"]]')
edit_mutant("preprocess_seq2seq", "targets truncated and padded to max_source_length", MUTANTS,
            name="target_length_of_source", old="max_length=max_target_length", new="max_length=max_source_length")

# -------------------------------------------------------------------------------------------- exact_match
edit_mutant("exact_match", "no whitespace normalisation (a leading space makes a right answer wrong)", MUTANTS,
            name="no_normalisation", old='return " ".join(text.split())', new="return text")
edit_mutant("exact_match", "strips the ends only (inner runs of spaces still count)", MUTANTS, name="strip_only",
            old='return " ".join(text.split())', new="return text.strip()")
edit_mutant("exact_match", "case-insensitive", MUTANTS, name="ignores_case", old='return " ".join(text.split())',
            new='return " ".join(text.lower().split())')
edit_mutant("exact_match", "returns the count of matches, not the share", MUTANTS, name="count_not_share",
            old="for p, r in zip(predictions, references)) / len(references)",
            new="for p, r in zip(predictions, references))")
edit_mutant("exact_match", "never checks the lengths (zip drops the extra predictions)", MUTANTS,
            name="no_length_check", old='raise ValueError(f"{len(predictions)} predictions for {len(references)} '
            'references")', new="pass")
