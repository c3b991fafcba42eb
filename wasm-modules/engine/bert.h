/* A BERT-family sentence encoder: embeddings, post-LN transformer layers, masked mean
 * pooling and L2 normalisation, from config.json + model.safetensors. */
#ifndef EI_BERT_H
#define EI_BERT_H

/* Loads config.json and model.safetensors and plans every buffer for calls of up to
 * max_tokens padded tokens (batch x sequence) and sequences of up to max_seq. */
int bert_load(const char *config, const char *weights, int max_tokens, int max_seq);
int bert_hidden(void);
int bert_max_positions(void);
/* ids, types, mask: int32 [batch][seq]; out: float [batch][hidden]. 0 or -1. */
int bert_embed(const int *ids, const int *types, const int *mask, int batch, int seq, float *out);

#endif
