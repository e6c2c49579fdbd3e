// The rotary frequencies a config asks for, at a given sequence length.
//
// Matches transformers' rope init functions: default, linear (inv_freq / factor), dynamic NTK
// (base grows once seq_len > max_position_embeddings), llama3 (per-band smoothing), longrope
// (MiniCPM4 / Phi-3: short or long per-dim factors chosen by seq_len, cos/sin scaled by the attention
// factor). Because keys are stored un-rotated, a length-dependent rope re-rotates every key: this equals
// transformers' forward over the whole sequence at that length.
#pragma once

#include "attention/rope.h"
#include "model/config.h"

namespace mnemo {

// `seq_len` is the number of positions in the sequence after the current step.
Result<Rope> make_rope(const ModelConfig& config, int64_t seq_len);
// True when make_rope's result changes with seq_len (dynamic, longrope).
bool rope_depends_on_length(const ModelConfig& config);

}  // namespace mnemo
