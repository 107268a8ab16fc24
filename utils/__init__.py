"""The course library: the finished version of everything the chapters build.

Each module is named after what it holds and is introduced by one chapter:

    paths            where the repository, data and run outputs live          (all chapters)
    device           get_device(), set_seed()                                  (chapter 00)
    data             load_corpus(), train_val_split(), get_batch()             (chapter 00)
    sequence_models  the RNN-versus-attention experiment                       (chapter 00)
    tokenizers       CharTokenizer, WordTokenizer, BPETokenizer, pretrained_bpe (chapter 01)
    embeddings       sinusoidal positions, RoPE, ALiBi, TokenPositionEmbedding (chapter 02)
    word_vectors     co-occurrence + SVD word vectors, nearest words, analogies (chapter 02)
    attention        scaled dot-product attention, AttentionHead,
                     MultiHeadAttention (fused QKV, grouped-query heads)       (chapters 03-04)
    attention_lm     a tiny attention-only language model whose heads we inspect (chapter 04)
    checks/          the exercise graders, one module per chapter
    widgets/         the interactive demos, one module per widget family
"""
