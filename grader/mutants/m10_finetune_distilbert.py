"""Known bugs of module 10: tokenisation, metrics, freezing, counting, LoRA (peft and from scratch), label alignment.

Each is the reference's solution cell with one line changed (edit_mutant), so no solution is pasted here.
The alignment mutants that still train a usable tagger (labels on every piece, specials labelled O) are
caught by check_align_labels_with_tokens exactly; the trained checks catch what breaks learning (a frozen
LoRA model, a head that never trains): calibration next to MIN_ACCURACY / MIN_ENTITY_F1 and in
bench/finetune_calibration.py.
"""

from grader.mutants import edit_mutant

MUTANTS: list = []

# ------------------------------------------------------------------------------------------ tokenize_batch
edit_mutant("tokenize_batch", "max_length - 2, as if the tokenizer did not count [CLS] and [SEP] itself", MUTANTS,
            name="room_for_specials", old="truncation=True, max_length=max_length",
            new="truncation=True, max_length=max_length - 2")
edit_mutant("tokenize_batch", "pads every line to max_length in map (instead of letting the collator pad)", MUTANTS,
            name="pads_to_max_length", old="truncation=True, max_length=max_length",
            new="truncation=True, max_length=max_length, padding='max_length'")
edit_mutant("tokenize_batch", "add_special_tokens=False: no [CLS] for the head to read", MUTANTS,
            name="no_special_tokens", old="truncation=True, max_length=max_length",
            new="truncation=True, max_length=max_length, add_special_tokens=False")
edit_mutant("tokenize_batch", "ignores its max_length argument (a constant 64)", MUTANTS, name="fixed_max_length",
            old="truncation=True, max_length=max_length", new="truncation=True, max_length=64")

# ----------------------------------------------------------------------------------------- compute_metrics
edit_mutant("compute_metrics", "micro F1 (pooled counts, which equals accuracy) instead of macro", MUTANTS,
            name="micro_f1", old='"macro_f1": float(np.mean(f1s))',
            new='"macro_f1": float(np.mean(preds == labels))')
edit_mutant("compute_metrics", "F1 of class 1 only (scikit-learn's binary average)", MUTANTS, name="binary_f1",
            old='"macro_f1": float(np.mean(f1s))', new='"macro_f1": float(f1s[-1])')
edit_mutant("compute_metrics", "arg-max over the examples (axis 0) instead of the classes", MUTANTS,
            name="argmax_axis0", old="argmax(axis=-1)", new="argmax(axis=0)")
edit_mutant("compute_metrics", "averages F1 over the classes in the labels only (a class predicted but absent "
            "is dropped)", MUTANTS, name="classes_of_labels_only", old="np.union1d(labels, preds)",
            new="np.unique(labels)")

# -------------------------------------------------------------------------------------------- freeze_base
edit_mutant("freeze_base", "freezes the head too (every parameter of the model)", MUTANTS, name="freezes_head",
            old="model.base_model.parameters()", new="model.parameters()")
edit_mutant("freeze_base", "`p.requires_grad = False` written as an attribute of the body module: nothing frozen",
            MUTANTS, name="attribute_not_parameters", old="p.requires_grad_(False)",
            new="model.base_model.requires_grad = False")
edit_mutant("freeze_base", "freezes only the embeddings", MUTANTS, name="embeddings_only",
            old="model.base_model.parameters()", new="model.base_model.embeddings.parameters()")
edit_mutant("freeze_base", "hard-codes DistilBERT's body name (fails on GPT-2's `transformer`)", MUTANTS,
            name="hard_coded_distilbert", old="model.base_model.parameters()", new="model.distilbert.parameters()")

# --------------------------------------------------------------------------------------- count_trainable
edit_mutant("count_trainable", "counts tensors, not their numbers", MUTANTS, name="counts_tensors",
            old="total = sum(p.numel() for p in model.parameters())", new="total = len(list(model.parameters()))")
edit_mutant("count_trainable", "total from state_dict(): tied weights twice, buffers counted", MUTANTS,
            name="state_dict_total", old="total = sum(p.numel() for p in model.parameters())",
            new="total = sum(t.numel() for t in model.state_dict().values())")
edit_mutant("count_trainable", "trainable counts every parameter (requires_grad not tested)", MUTANTS,
            name="ignores_requires_grad", old="for p in model.parameters() if p.requires_grad)",
            new="for p in model.parameters())")

# --------------------------------------------------------------------------------------- make_lora_model
edit_mutant("make_lora_model", "no modules_to_save: the new head stays frozen at its random initialisation",
            MUTANTS, name="head_frozen", old="modules_to_save=head)", new="modules_to_save=None)")
edit_mutant("make_lora_model", "r and alpha swapped", MUTANTS, name="r_alpha_swapped",
            old="LoraConfig(r=r, lora_alpha=alpha", new="LoraConfig(r=alpha, lora_alpha=r")
edit_mutant("make_lora_model", "lora_alpha=r: the update is scaled by 1 instead of alpha / r", MUTANTS,
            name="alpha_equals_r", old="LoraConfig(r=r, lora_alpha=alpha", new="LoraConfig(r=r, lora_alpha=r")
edit_mutant("make_lora_model", "ignores target_modules (LoRA on q_lin and v_lin always)", MUTANTS,
            name="fixed_targets", old="target_modules=list(target_modules)", new="target_modules=['q_lin', 'v_lin']")
edit_mutant("make_lora_model", "freezes the body after wrapping: the LoRA matrices are frozen too, only the head "
            "trains", MUTANTS, name="frozen_after_wrapping", old="return get_peft_model(model, config)",
            new="return freeze_base(get_peft_model(model, config))")


# ------------------------------------------------------------------------------------ LoRA from scratch
edit_mutant("LoRALinear", "scales by r / alpha instead of alpha / r", MUTANTS, name="lora_scaling_inverted",
            old="self.r, self.scaling = r, alpha / r", new="self.r, self.scaling = r, r / alpha")
edit_mutant("LoRALinear", "A zero and B random (the initialisations swapped): no gradient reaches B at first",
            MUTANTS, name="lora_inits_swapped", edits=(
                ("nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # what nn.Linear does to its weight",
                 "nn.init.zeros_(self.lora_A)"),
                ("self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))",
                 "self.lora_B = nn.Parameter(torch.empty(base.out_features, r))\n"
                 "        nn.init.kaiming_uniform_(self.lora_B, a=math.sqrt(5))")))
edit_mutant("LoRALinear", "dropout on the input of both paths: the frozen pretrained path is dropped too",
            MUTANTS, name="lora_dropout_on_base", old="return self.base(x) + self.scaling * update",
            new="return self.base(self.dropout(x)) + self.scaling * update")
edit_mutant("LoRALinear", "the base layer is not frozen: its weight and bias train with A and B", MUTANTS,
            name="lora_base_not_frozen", old="        self.base.requires_grad_(False)\n", new="")
edit_mutant("LoRALinear", "no scaling: B A x added as it is", MUTANTS, name="lora_no_scaling",
            old="return self.base(x) + self.scaling * update", new="return self.base(x) + update")

edit_mutant("add_lora", "wraps every nn.Linear, whatever target_modules says", MUTANTS, name="add_lora_every_linear",
            old='if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in target_modules]',
            new="if isinstance(module, nn.Linear)]")
edit_mutant("add_lora", "freezes after wrapping: the new A and B are frozen too", MUTANTS,
            name="add_lora_freezes_after", edits=(("    model.requires_grad_(False)\n", ""),
                                                  ("    return model", "    model.requires_grad_(False)\n    return model")))
edit_mutant("add_lora", "freezes nothing: the whole model still trains beside the adapters", MUTANTS,
            name="add_lora_no_freeze", old="    model.requires_grad_(False)\n", new="")
edit_mutant("add_lora", "wraps the layers but returns nothing (the caller's `model = add_lora(...)` is None)",
            MUTANTS, name="add_lora_returns_none", old="    return model", new="    return None")

edit_mutant("merge_lora", "merges B A without the scaling alpha / r", MUTANTS, name="merge_no_scaling",
            old="base.weight += module.scaling * module.lora_B @ module.lora_A",
            new="base.weight += module.lora_B @ module.lora_A")
edit_mutant("merge_lora", "adds the transpose (A^T B^T): right shape for square layers only, wrong numbers",
            MUTANTS, name="merge_transposed", old="base.weight += module.scaling * module.lora_B @ module.lora_A",
            new="base.weight += module.scaling * (module.lora_B @ module.lora_A).T")
edit_mutant("merge_lora", "merges into W but leaves the LoRALinear in place: B A is counted twice", MUTANTS,
            name="merge_keeps_wrapper", old="        setattr(model.get_submodule(parent_name), child, base)\n", new="")

# ------------------------------------------------------------------------------- align_labels_with_tokens
edit_mutant("align_labels_with_tokens", "labels every piece of a word with the word's label", MUTANTS,
            name="labels_every_piece", old="-100 if w is None or w == previous else word_labels[w]",
            new="-100 if w is None else word_labels[w]")
edit_mutant("align_labels_with_tokens", "special tokens labelled 0 (O) instead of -100", MUTANTS,
            name="specials_labelled_O", old="-100 if w is None or w == previous else word_labels[w]",
            new="0 if w is None else -100 if w == previous else word_labels[w]")
edit_mutant("align_labels_with_tokens", "continuation pieces get I-PER (2) after a B-PER word", MUTANTS,
            name="continuations_inside", old="-100 if w is None or w == previous else word_labels[w]",
            new="-100 if w is None else (2 if word_labels[w] == 1 else -100) if w == previous else word_labels[w]")
