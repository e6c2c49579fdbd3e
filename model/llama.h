// The Llama-family transformer forward (Llama, Mistral, Qwen2, MiniCPM/MiniCPM4) over blocked KV.
//
// A Sequence is a stream of tokens whose K/V live in blocks of an arena reached through block tables
// (memory/kv_cache.h). `forward` appends a chunk of tokens — a prefill chunk or one decode token —
// and returns logits. Any chunking gives the same logits as one call over the whole stream, except for
// length-dependent ropes (dynamic NTK, longrope) whose frequencies follow the stream's current length.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "attention/compress.h"
#include "attention/rope.h"
#include "attention/sparse_params.h"
#include "core/device.h"
#include "core/tensor.h"
#include "memory/kv_cache.h"
#include "memory/store.h"
#include "model/config.h"
#include "model/positions.h"
#include "model/weights.h"

namespace mnemo {

struct ModelOptions {
  // Where the forward pass runs: the CPU (f32, the reference) or a CUDA device (bf16 weights and KV,
  // f32 residual stream and accumulation; the store's GPU tier in device memory). Default: cpu.
  Device device = Device::cpu();
  // Position policy. Default: exact.
  PositionPolicy positions = PositionPolicy::kExact;
  // Local window of the bounded policy, in tokens. Default: 0 = the sparse window_size with sparse
  // attention, else half of max_position_embeddings.
  int64_t bounded_window = 0;
  // GPU-tier KV budget in tokens of every layer, shared by all sequences of the model (on CPU builds
  // the "GPU" tier is a separate host arena). Default: 65536 tokens.
  int64_t kv_budget_tokens = 65536;
  // Host-tier KV budget in bytes (sealed blocks' copies). Default: 0 = twice the GPU tier.
  int64_t host_budget_bytes = 0;
  // RocksDB directory of the disk tier; empty = no disk tier. Default: empty.
  std::string data_dir;
  // Tokens per KV block. Default: 64 (the sparse_config block_size when the model has one).
  int block_tokens = 64;
  // Largest prefill chunk run at once; longer inputs are split. Default: 2048.
  int64_t chunk_tokens = 2048;
  // InfLLM-V2 sparse attention settings replacing the checkpoint's sparse_config (or enabling sparse
  // attention on any Llama-family model: the training-free mode). Default: none = the checkpoint's.
  std::optional<SparseConfig> sparse;
  // Stage-1 normaliser: false = exact softmax over tier-1 compressed keys; true = the paper's cheaper
  // approximation from tier-2 keys (attention/select.h). Default: false.
  bool approximate_selection_lse = false;
};

class Sequence;

// attention/'s view of the model's sparse_config.
SparseParams to_sparse_params(const SparseConfig& config);

class LlamaModel {
 public:
  static Result<std::unique_ptr<LlamaModel>> load(const std::string& model_dir, const ModelOptions& options = {});
  static Result<std::unique_ptr<LlamaModel>> from_weights(ModelConfig config, ModelWeights weights,
                                                          const ModelOptions& options = {});
  ~LlamaModel();

  const ModelConfig& config() const { return config_; }
  const ModelOptions& options() const { return options_; }
  // The sparse settings in force (options, else the checkpoint's), or none: always dense.
  const std::optional<SparseConfig>& sparse() const { return sparse_; }

  // A new, empty sequence. `id` 0 picks a fresh one. An ephemeral sequence's blocks are dropped from
  // every tier when it is destroyed; a persistent one's stay in the store (see KvStore) for recovery.
  Result<std::unique_ptr<Sequence>> new_sequence(SequenceId id = 0, bool persistent = false);
  // A new sequence sharing `parent`'s sealed blocks copy-on-write (no block copies).
  Result<std::unique_ptr<Sequence>> fork_sequence(const Sequence& parent, SequenceId id = 0, bool persistent = false);
  // After a restart with a data_dir: the sequence `id` with its durable blocks, at most `max_tokens`
  // long (whole blocks). The caller re-runs the tokens past its length().
  Result<std::unique_ptr<Sequence>> recover_sequence(SequenceId id, int64_t max_tokens);
  // Drops the sequence's blocks from every tier and the disk (a persistent sequence's too).
  Status drop_sequence(std::unique_ptr<Sequence> seq);

  KvStore& store() { return *store_; }

  // Appends `tokens` to `seq` and writes logits to `logits`: [tokens.size(), vocab] when `all_logits`,
  // else [1, vocab] for the last token. On error the sequence is unchanged (its length is not advanced).
  Status forward(Sequence& seq, std::span<const int32_t> tokens, Tensor* logits, bool all_logits = false);

  // Several sequences in one pass (continuous batching): each item's tokens (1 to chunk_tokens)
  // are appended to its sequence and its last token's logits written to *logits ([1, vocab]).
  // Results equal running the items one by one. On error no sequence advanced.
  struct BatchItem {
    Sequence* seq;
    std::span<const int32_t> tokens;
    Tensor* logits;
  };
  Status forward_batch(std::span<BatchItem> items);

  // Benchmarks: appends `tokens` positions of random K and V (normal(0, 1), every layer) to `seq` as if
  // a prompt had been prefilled, representatives included — no forward pass, so a decode benchmark
  // starts at a 1M-token context in seconds. What attends to them afterwards is meaningless text-wise
  // but costs what a real context costs (blocks, tiers, selection). On error the sequence is unchanged.
  Status fill_synthetic_kv(Sequence& seq, int64_t tokens, uint64_t seed);

 // The CUDA backend's state (model/llama_cuda.cpp): device weights, stream, cuBLAS, scratch. A
  // CUDA-free base so this header and CPU builds need no CUDA types. Opaque to callers.
  struct CudaState {
    virtual ~CudaState() = default;
  };

 private:
  struct Impl;
  LlamaModel(ModelConfig config, ModelWeights weights, ModelOptions options, std::unique_ptr<KvStore> store,
             std::unique_ptr<CudaState> cuda = nullptr);
  // Makes the sequence's representatives cover its first `tokens` tokens in `layer`, loading blocks
  // a bounded number at a time (they may be on host or disk after a recovery).
  Status update_representatives(Sequence& seq, int layer, int64_t tokens, const RopeTable& table);
  struct ChunkItem {
    Sequence* seq;
    std::span<const int32_t> tokens;
    float* logits;  // [tokens, vocab] with all_logits, else [1, vocab]
    bool all_logits;
  };
  Status forward_chunk(Sequence& seq, std::span<const int32_t> tokens, float* logits, bool all_logits);
  Status forward_chunks(std::span<ChunkItem> items);
  // Attention of one layer for queries at q_index (consecutive stream indices): dense before the
  // sparse switch, InfLLM-V2 (stage 1, top-k, stage 2) after it. out: [n, heads, head_dim].
  Status attend(Sequence& seq, int layer, const float* q, const float* q_nope, const std::vector<int64_t>& q_index,
                const RopeTable& table, float* out);
  // The bounded policy: q_local rotated at t - rope_offset, q_raw un-rotated. Local window + memory
  // (dense, or the sparse selection) as two partial attentions joined by their LSE.
  Status attend_bounded(Sequence& seq, int layer, const float* q_local, const float* q_raw,
                        const std::vector<int64_t>& q_index, const RopeTable& table, int64_t rope_offset, float* out);
  int64_t bounded_window() const;
  // Stage 1 + top-k for m queries: block_ids [m, kv_heads, max_selected_blocks] (-1 padded).
  Status select_blocks(Sequence& seq, int layer, const float* q_score, const int64_t* q_index, int64_t m,
                       int64_t num_blocks, std::vector<int32_t>* block_ids);

  static Result<std::unique_ptr<CudaState>> make_cuda_state(const ModelConfig& config, const ModelWeights& weights,
                                                            Device device);
  static void* cuda_stream_of(CudaState& state);
  // A device copy of `parent`'s representatives for a fork (null when it has none).
  Result<std::shared_ptr<void>> clone_cuda_repr(const Sequence& parent);
  Status forward_chunks_cuda(std::span<ChunkItem> items);
  Status forward_chunks_cuda_step(std::span<ChunkItem> items);
  Status fill_synthetic_kv_cuda(Sequence& seq, int64_t tokens, uint64_t seed);

  ModelConfig config_;
  ModelWeights weights_;
  std::unique_ptr<CudaState> cuda_;  // set when options_.device is CUDA
  ModelOptions options_;
  std::unique_ptr<KvStore> store_;
  std::optional<SparseConfig> sparse_;
  SequenceId next_sequence_id_ = uint64_t{1} << 62;  // fresh ids stay clear of callers' small ids
};

// One token stream's state: its KV blocks and length.
class Sequence {
 public:
  ~Sequence();
  Sequence(const Sequence&) = delete;
  Sequence& operator=(const Sequence&) = delete;
  SequenceId id() const { return id_; }
  int64_t length() const { return length_; }

 private:
  friend class LlamaModel;
  Sequence(KvStore* store, SequenceId id, bool persistent) : store_(store), id_(id), persistent_(persistent) {}
  KvStore* store_;
  SequenceId id_;
  bool persistent_;
  int64_t length_ = 0;
  // Representatives for sparse selection, per layer: tier-1 (kernel_size) and tier-2 (4x) keys.
  std::vector<CompressedKeys> compressed_, compressed_lse_;
  // The CUDA backend's representatives (bf16 tables on the device, model/llama_cuda.cpp); null on the
  // CPU and until the first sparse-enabled forward.
  std::shared_ptr<void> cuda_repr_;
};

}  // namespace mnemo
