"""Known bugs for module 09 (the Mini-GPT capstone): the mistakes people make when they turn a notebook loop
into a program that checkpoints, resumes and runs on several processes, and when they export it to Hugging Face.

Every mutant is the reference's solution cell with one line changed (`edit_mutant`): the cell is read from the
instructor notebook, so a mutant follows the notebook and fails loudly if its line is no longer there.
"""

from grader.mutants import edit_mutant

MUTANTS: list = []

# ------------------------------------------------------------------------------------- CharTokenizer
edit_mutant("CharTokenizer", "vocabulary in a set's order (list(set(text))): the ids change from one process to the "
            "next", MUTANTS, name="tokenizer_set_order", old="return cls(sorted(set(text)))",
            new="return cls(list(set(text)))")
edit_mutant("CharTokenizer", "unknown characters silently dropped instead of an error", MUTANTS,
            name="tokenizer_drops_unknown", old="            if c not in self.stoi:\n                raise ValueError(",
            new="            if c not in self.stoi:\n                continue\n                raise ValueError(")
edit_mutant("CharTokenizer", "an extra <unk> id for unknown characters: vocab_size is one more than the characters",
            MUTANTS, name="tokenizer_unk_id", old="return len(self.chars)", new="return len(self.chars) + 1")
edit_mutant("CharTokenizer", "saved one character per line: the newline character does not survive load", MUTANTS,
            name="tokenizer_lines_file", old='json.dumps({"chars": self.chars}, ensure_ascii=False)',
            new='"\\n".join(self.chars)')

# ------------------------------------------------------------------------------------------ get_batch
edit_mutant("get_batch", "targets not shifted: y = x", MUTANTS, name="batch_unshifted_targets",
            old="y = torch.stack([data[s + 1:s + 1 + block_size] for s in starts])",
            new="y = torch.stack([data[s:s + block_size] for s in starts])")
edit_mutant("get_batch", "randint's upper bound taken as inclusive: the last window that fits is never drawn",
            MUTANTS, name="batch_misses_last_start", old="torch.randint(0, len(data) - block_size, (batch_size,)",
            new="torch.randint(0, len(data) - block_size - 1, (batch_size,)")
edit_mutant("get_batch", "starts drawn from the global RNG: the generator (and so a resume) does not decide the data",
            MUTANTS, name="batch_global_rng", old="(batch_size,), generator=generator)", new="(batch_size,))")
edit_mutant("get_batch", "one start for the whole batch: every row is the same window", MUTANTS,
            name="batch_one_start", old="(batch_size,), generator=generator)", new="(1,), generator=generator).expand(batch_size)")

# ------------------------------------------------------------------------------------ save_checkpoint
edit_mutant("save_checkpoint", "the optimizer's state is not saved (a resumed AdamW starts its moments from zero)",
            MUTANTS, name="save_without_optimizer", old='"optimizer": optimizer.state_dict(), ', new="")
edit_mutant("save_checkpoint", "the generator's seed instead of its state: a resumed run draws the first batches again",
            MUTANTS, name="save_generator_seed", old='"generator": generator.get_state()',
            new='"generator": generator.initial_seed()')
edit_mutant("save_checkpoint", "the model object pickled instead of its state_dict: torch.load(weights_only=True) "
            "refuses the file", MUTANTS, name="save_pickles_model", old='"model": model.state_dict()',
            new='"model": model')
edit_mutant("save_checkpoint", "the config dataclass pickled instead of asdict(config)", MUTANTS,
            name="save_pickles_config", old='"config": asdict(config)', new='"config": config')

# ------------------------------------------------------------------------------------ load_checkpoint
edit_mutant("load_checkpoint", "the optimizer is not restored: the next step starts AdamW from scratch", MUTANTS,
            name="load_ignores_optimizer", old='optimizer.load_state_dict(ckpt["optimizer"])', new="pass")
edit_mutant("load_checkpoint", "the batch generator is not restored: a resumed run draws other batches", MUTANTS,
            name="load_ignores_generator", old='generator.set_state(ckpt["generator"])', new="pass")
edit_mutant("load_checkpoint", "torch's global RNG is not restored: dropout draws other masks after a resume", MUTANTS,
            name="load_ignores_torch_rng", old='torch.set_rng_state(ckpt["torch_rng"])', new="pass")

# ---------------------------------------------------------------------------------------------- train
edit_mutant("train", "warmup off by one: step s uses the rate of step s + 1", MUTANTS, name="train_lr_off_by_one",
            old="lr = warmup_cosine_lr(step, ", new="lr = warmup_cosine_lr(step + 1, ")
edit_mutant("train", "the cosine's length is counted from the end of the warmup (total_steps = max_iters - warmup)",
            MUTANTS, name="train_short_schedule", old="(step, cfg.lr, cfg.warmup_iters, cfg.max_iters, cfg.min_lr)",
            new="(step, cfg.lr, cfg.warmup_iters, cfg.max_iters - cfg.warmup_iters, cfg.min_lr)")
edit_mutant("train", "resume restores the checkpoint but starts again at step 0", MUTANTS, name="train_resume_at_zero",
            old='start = load_checkpoint(out_dir / "ckpt.pt", model, optimizer, generator)["step"]',
            new='load_checkpoint(out_dir / "ckpt.pt", model, optimizer, generator)')
edit_mutant("train", "resume does not hand the generator to load_checkpoint: the batches start over", MUTANTS,
            name="train_resume_without_generator", old='load_checkpoint(out_dir / "ckpt.pt", model, optimizer, generator)',
            new='load_checkpoint(out_dir / "ckpt.pt", model, optimizer)')
edit_mutant("train", "the checkpoint is labelled with the step just run instead of the steps done: a resume repeats "
            "it", MUTANTS, name="train_checkpoint_step_label", old="            checkpoint(step + 1)",
            new="            checkpoint(step)")
edit_mutant("train", "every process takes the first rows of the global batch: the processes train on the same data",
            MUTANTS, name="train_ddp_same_rows", old="rows = slice(rank * cfg.batch_size, (rank + 1) * cfg.batch_size)",
            new="rows = slice(0, cfg.batch_size)")
edit_mutant("train", "each process seeds its generator with seed + rank (nanoGPT's seed_offset): not one global batch",
            MUTANTS, name="train_ddp_seed_per_rank", old="generator = torch.Generator().manual_seed(cfg.seed)",
            new="generator = torch.Generator().manual_seed(cfg.seed + rank)")
edit_mutant("train", "the loss scaled by the number of processes: the gradients are summed, not averaged", MUTANTS,
            name="train_ddp_summed", old="scaler.scale(loss).backward()  #", new="scaler.scale(loss * world_size).backward()  #")
edit_mutant("train", "grad_accum_steps ignored: one micro-batch per step", MUTANTS, name="train_accum_ignored",
            old="for micro in range(cfg.grad_accum_steps):", new="for micro in range(1):")
edit_mutant("train", "the micro-batches' losses not divided by grad_accum_steps: their gradients are summed", MUTANTS,
            name="train_accum_summed", old="loss = loss / cfg.grad_accum_steps", new="pass")
edit_mutant("train", "zero_grad inside the micro-batch loop: only the last micro-batch's gradient is used", MUTANTS,
            name="train_accum_zero_grad_per_micro", old="            x, y = get_batch(train_data, world_size",
            new="            optimizer.zero_grad(set_to_none=True)\n            x, y = get_batch(train_data, world_size")
edit_mutant("train", "one draw for all micro-batches: the same windows grad_accum_steps times", MUTANTS,
            name="train_accum_one_draw", old="        for micro in range(cfg.grad_accum_steps):\n            x, y = get_batch(train_data, world_size * cfg.batch_size, cfg.block_size, generator)",
            new="        x, y = get_batch(train_data, world_size * cfg.batch_size, cfg.block_size, generator)\n        for micro in range(cfg.grad_accum_steps):")
edit_mutant("train", "the optimizer steps after every micro-batch: grad_accum_steps steps of the small batch", MUTANTS,
            name="train_accum_step_per_micro", old="            step_loss += loss.item()",
            new="            step_loss += loss.item()\n            optimizer.step()")
edit_mutant("train", "cfg.dtype ignored: float32 always", MUTANTS, name="train_amp_ignored",
            old="enabled=amp_dtype is not None):", new="enabled=False):")
edit_mutant("train", "autocast always in bfloat16, whatever cfg.dtype asks", MUTANTS, name="train_amp_always_bf16",
            old="with torch.autocast(device.type, dtype=amp_dtype,", new="with torch.autocast(device.type, dtype=torch.bfloat16,")
edit_mutant("train", "the model converted to the low precision instead of autocast", MUTANTS, name="train_amp_model_cast",
            old="                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):",
            new="                if amp_dtype is not None:\n                    model.to(amp_dtype)\n                with contextlib.nullcontext():")
edit_mutant("train", "float16: the gradients clipped while scaled (no unscale_ before clip_grad_norm_)", MUTANTS,
            name="train_amp_clip_scaled", old="scaler.unscale_(optimizer)  #", new="pass  #")
edit_mutant("train", "no zero_grad: every step's gradients add up", MUTANTS, name="train_no_zero_grad",
            old="optimizer.zero_grad(set_to_none=True)", new="pass")

# --------------------------------------------------------------------------------------------- sample
edit_mutant("sample", "returns only the generated characters, not the prompt and them", MUTANTS,
            name="sample_drops_prompt", old="return tokenizer.decode(out[0].tolist())",
            new="return tokenizer.decode(out[0, len(prompt):].tolist())")
edit_mutant("sample", "the generator is not passed on to generate: it draws from the global RNG, a seed does not make "
            "a sample reproducible", MUTANTS, name="sample_generator_not_passed",
            old="top_p=top_p,\n                       generator=generator)", new="top_p=top_p)")
edit_mutant("sample", "the temperature is not passed on to generate: temperature 0 (greedy) samples at 1.0", MUTANTS,
            name="sample_temperature_not_passed", old="temperature=temperature, top_k=top_k", new="top_k=top_k")
edit_mutant("sample", "the mode is not restored: generate leaves a model that was training in eval mode", MUTANTS,
            name="sample_mode_not_restored", old="model.train(mode_before)", new="pass")
edit_mutant("sample", "always back to training mode afterwards: a model in eval mode comes back in training mode",
            MUTANTS, name="sample_always_train", old="model.train(mode_before)", new="model.train()")

# ------------------------------------------------------------------------------------- export_to_gpt2
edit_mutant("export_to_gpt2", "the attention's square c_proj not transposed: no shape error, wrong logits", MUTANTS,
            name="export_c_proj_not_transposed",
            old='conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")',
            new='conv1d = ("attn.c_attn.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")')
edit_mutant("export_to_gpt2", "n_positions left at GPT2Config's default (1024) instead of block_size", MUTANTS,
            name="export_default_n_positions", old="n_positions=c.block_size, ", new="")
edit_mutant("export_to_gpt2", "lm_head given a copy of its own: the tie to wte is broken (same logits today)", MUTANTS,
            name="export_untied_lm_head", old="continue  # tied to wte in both models: copied with it",
            new="hf.lm_head.weight = torch.nn.Parameter(w.clone())\n                continue")
edit_mutant("export_to_gpt2", "every matrix transposed, the embeddings too", MUTANTS, name="export_transposes_all",
            old="w.t() if name.endswith(conv1d) else w", new="w.t() if w.dim() == 2 else w")
edit_mutant("export_to_gpt2", "tie_word_embeddings=False and lm_head skipped: the output layer keeps its random "
            "weights", MUTANTS, name="export_lm_head_left_random", old="bos_token_id=None, eos_token_id=None)",
            new="bos_token_id=None, eos_token_id=None, tie_word_embeddings=False)")

# ------------------------------------------------------------------------------------ ModernAttention
edit_mutant("ModernAttention", "new tokens rotated from position 0 whatever the cache holds: right without a cache, "
            "wrong with one", MUTANTS, name="modern_rope_no_offset",
            old="torch.arange(T_past, T_past + T, device=x.device)", new="torch.arange(0, T, device=x.device)")
_NORM = ("        if self.qk_norm:\n"
         "            q, k = self.q_norm(q), self.k_norm(k)  # each (position, head) vector to RMS 1, times the learned "
         "weight\n")
_ROTATE = "            q, k = rotate(q), rotate(k)\n"
edit_mutant("ModernAttention", "the norms after the rotation (the same with norm weights at 1, not once they are "
            "trained)", MUTANTS, name="modern_norm_after_rope",
            edits=((_NORM, ""), (_ROTATE, _ROTATE + _NORM)))  # the norm's `if` after the rope block
edit_mutant("ModernAttention", "k through q_norm (a copy-paste slip): k_norm's weight is never used", MUTANTS,
            name="modern_k_through_q_norm", old="q, k = self.q_norm(q), self.k_norm(k)",
            new="q, k = self.q_norm(q), self.q_norm(k)")
edit_mutant("ModernAttention", "v rotated too: the values carry positions into the output", MUTANTS,
            name="modern_v_rotated", old="q, k = rotate(q), rotate(k)", new="q, k, v = rotate(q), rotate(k), rotate(v)")
edit_mutant("ModernAttention", "the frequencies' exponent j / hs instead of 2j / hs (the pairs' index taken for the "
            "dimension's)", MUTANTS, name="modern_rope_exponent_halved",
            old="torch.arange(0, hs, 2, device=x.device).float() / hs", new="torch.arange(0, hs // 2, device=x.device).float() / hs")
