"""The course library: the finished version of everything the chapters build.

Each module is named after what it holds and is introduced by one chapter:

    paths            where the repository, data and run outputs live          (all chapters)
    device           get_device(), set_seed(), machine_description()           (chapter 00)
    data             load_corpus(), train_val_split(), get_batch()             (chapter 00)
    sequence_models  the RNN-versus-attention experiments: gradients over
                     distance, recall of the first token, sequential time      (chapter 00)
    pretokenize      GPT-2's pre-splitting: split_chunks, utf8, bytes_to_unicode (chapter 01)
    tokenizers       CharTokenizer, WordTokenizer                              (chapter 01)
    bpe              get_pair_counts, merge, train_bpe_naive, train_bpe_fast
                     (ties: the smallest pair of ids)                          (chapter 01)
    bpe_tokenizer    BPETokenizer (special tokens, streaming, save/load),
                     pretrained_bpe                                            (chapter 01)
    gpt2_vocab       load_gpt2_vocab(): GPT-2 style vocab.json + merges.txt
                     as a BPETokenizer with their own ids                      (chapter 01)
    embeddings       sinusoidal positions, RoPE, ALiBi, TokenPositionEmbedding (chapter 02)
    word_vectors     co-occurrence + SVD word vectors, nearest words, analogies (chapter 02)
    attention        scaled dot-product attention, AttentionHead,
                     MultiHeadAttention (fused QKV, grouped-query heads)       (chapters 03-04)
                     KVCache                                                   (chapter 08)
    attention_lm     a tiny attention-only language model whose heads we inspect (chapter 04)
    head_analysis    distance profiles, a layer x head grid, head ablation      (chapter 04)
    layers           layer_norm, rms_norm, LayerNorm, RMSNorm, FeedForward
                     (GELU tanh/exact, SwiGLU), ffn_hidden_size                (chapter 05)
    model            GPTConfig (ffn_hidden, rope_theta), Block, GPT,
                     parameter/FLOP counts                                     (chapter 05)
                     GPT.forward(positions=...): a position per token          (chapter 11)
    hf_convert       GPT-2 / Llama / Mistral weights from Hugging Face into
                     our GPT: gpt_from_hf, gpt_from_hf_pretrained              (chapter 05)
    masks            causal, padding and sliding-window masks, combine_masks,
                     masked_softmax (True = may attend)                        (chapter 06)
    encoder          bidirectional Encoder, MaskedLM, mask_tokens, the corpus
                     MLM, the loop and cache both toys share                   (chapter 06)
    encoder_decoder  cross-attention, EncoderDecoder, the string-reversal toy  (chapter 06)
    losses           cross-entropy written out; uniform/unigram/bigram loss lines (chapter 07)
    optim            AdamW from its update rule, lr_at (warm-up + cosine),
                     lr_wsd_at (warm-up, hold, warm-down), clip_grad_norm      (chapter 07)
    muon             Muon from its update rule (Newton-Schulz), the block
                     matrices / AdamW split, configure_muon                    (chapter 07)
    zero             ShardedAdamW: ZeRO-1, AdamW's moments split over ranks    (chapter 07)
    parallel         how the trainer spreads a model: DDP, ZeRO-1 or FSDP      (chapter 07)
    distributed      world_size(), process_rank(): which process of a torchrun  (chapter 07)
    train_config     TrainConfig (every setting of a run) and named presets    (chapter 07)
    checkpoints      atomic_save, checksum, save/load_checkpoint (weights only) (chapter 07)
    evaluation       estimate_loss (a sample of windows), split_loss (all)     (chapter 07)
                     text_bits_per_char: the fair metric across tokenizers    (chapter 11)
    resume           which settings a resumed run may change; its schedule     (chapter 07)
    trainer          the loop: train(), precision (bf16/fp16 + scaler, TF32),
                     history (loss, lr, grad norm, clipped, tokens/s, MFU)      (chapter 07)
    diagnostics      overfit_one_batch, lr_range_test                          (chapter 07)
    activation_memory  what backward keeps, counted per tensor and measured;
                     the cost of activation checkpointing                      (chapter 07)
    ablation         the ladder from a bigram to the GPT, and head-to-heads    (chapter 07)
    throughput       tokens/s and MFU: datasheet or measured peaks             (chapter 07)
    train            the command line: `python -m utils.train --preset ...`    (chapter 07)
                     (`--bpe-vocab N`: on the course's BPE tokens)             (chapter 11)
    pretrained       trained GPTs as safetensors; load_pretrained(name):
                     "shakespeare-char" and its draft "shakespeare-char-draft" (chapters 07, 09)
                     "shakespeare-bpe", its -sft and -dpo tuned versions       (chapter 11)
    generation       generate(), stream(), temperature/top-k/top-p/repetition
                     filters, beam_search, sequence_nll, perplexity            (chapter 08)
    kv_memory        KV-cache bytes (MHA/GQA/MQA, MLA, sliding window) of public
                     model configs, kv_cache_table                             (chapter 09)
    speculative      speculative_generate: a draft proposes, the target verifies (chapter 09)
    batch_generation generate_batch: prompts of different lengths, left-padded,
                     one KV cache, per-row stops and lengths                   (chapter 11)
    chat             Turn, ChatTemplate, encode_chat (loss mask on replies),
                     chat_prompt (oldest turns dropped), reply_stream,
                     check_message, load_gpt2_chat, Conversation              (chapter 11)
    tiled_attention  attention without the T x T matrix: online_softmax_merge,
                     tiled_attention, flash_attention (autograd.Function)     (chapter 09)
    ring_attention   simulated ring attention, O(T*W) sliding-window attention (chapter 09)
    quantization     int8 per-channel and NF4 blockwise quantisation,
                     model_size_bytes                                          (chapters 09-10)
    moe              top-k mixture-of-experts FFN with a load-balancing loss    (chapter 09)
    lora             LoRA from scratch: LoRALinear, apply_lora, merge_lora,
                     adapters saved and loaded alone; works on an NF4 base     (chapter 10)
    plays            the corpus as nine plays and their speeches               (chapter 10)
    classification   a classification head on the last position, what to
                     unfreeze, majority and bag-of-characters baselines        (chapter 10)
    instructions     special tokens and the prompt template, collation with
                     prompt masking, masked_lm_loss, answers, majority_baseline (chapter 10)
    preferences      preference data, sequence_logprob, collate_preferences,
                     dpo_loss                                                  (chapter 10)
    chat_tasks       instruction tasks whose answers are in the prompt, their
                     baselines, evaluate_tasks, evaluate_after_history          (chapter 11)
    tuning           the loops: instruction_tune (max_history: conversations),
                     preference_tune (DPO), preference_accuracy                 (chapter 11)
    report_card      `python -m utils.report_card`: every shipped model measured (chapter 11)
    pipeline         `python -m utils.pipeline --preset tiny|cpu|gpu`: tokenizer
                     -> pre-training -> SFT -> DPO -> report card, resumable    (chapter 11)
    checks/          the exercise graders, one module per chapter
    widgets/         the interactive demos, one module per widget family
"""
