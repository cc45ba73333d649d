// Host-side books of the running requests: which row each request holds,
// how many tokens it has, and which rows are free. All three designs keep these
// books on the host; they differ in where the block tables live and who allocates.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "flat_id_map.h"

namespace disagmoe {

// The pool, the request rows or max_seq_len cannot hold a batch (KVCacheExhausted).
struct CacheExhausted : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A request id the books do not hold (KeyError).
struct UnknownRequest : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// One step's batch as flat arrays; entries [0, num_prefill) are prefill entries.
struct BatchView {
  const int64_t* req_ids;
  int64_t size;
  int64_t num_prefill;
  const int64_t* prefill_lens;
  int64_t num_prefill_lens;
};

// Per-entry arrays that plan_update fills, each of batch size (block_offsets: size + 1).
struct StepPlan {
  int32_t* rows;
  int32_t* old_lens;
  int32_t* new_lens;
  int32_t* block_offsets;  // exclusive prefix sum of the blocks each entry adds
};

// Per-entry arrays that lookup() fills, each of batch size; the two exclusive
// prefix sums are optional (null: not written).
struct BatchLookup {
  int32_t* rows;
  int32_t* seq_lens;
  int32_t* query_lens;
  int32_t* query_starts = nullptr;
  int32_t* seq_starts = nullptr;
};

// The host integers of a batch's FlashAttention metadata, known without touching
// the device (names as in FlashAttentionMetadata), and the shape of its arrays.
struct BatchStats {
  int64_t batch_size = 0;
  int64_t num_prefills = 0;
  int64_t num_tokens = 0;
  int64_t num_prefill_tokens = 0;
  int64_t num_decode_tokens = 0;
  int64_t max_query_len = 0;
  int64_t max_seq_len = 0;
  int64_t max_prefill_seq_len = 0;
  int64_t max_decode_seq_len = 0;
  int64_t max_decode_query_len = 0;
  int64_t width = 0;  // blocks of the longest request: the block table's width
};

class RequestTable {
 public:
  // Throws std::invalid_argument, before allocating anything, when a size is
  // outside [1, INT32_MAX] or the books would not fit in this machine's memory.
  RequestTable(int64_t max_reqs, int64_t max_seq_len, int64_t block_size);

  // Host bytes the books of `max_reqs` rows hold.
  static int64_t host_bytes(int64_t max_reqs);

  // The books' part of a first-layer update, in two halves. plan_update checks the whole
  // batch and writes the step's plan (which blocks each entry adds; the caller takes
  // them), changing nothing, and returns the number of blocks the batch adds. It throws
  // ValueError / KeyError on a malformed batch, and only when the batch is well formed,
  // CacheExhausted when rows, max_seq_len or num_free_blocks cannot hold it; it writes at
  // most max_reqs entries of `plan`. commit_update, with the same batch and plan while
  // version() is still the one planned at, registers the new requests (the entries
  // planned at length 0; their rows into plan.rows) and advances the lengths.
  int64_t plan_update(const char* op, const BatchView& batch, int64_t num_free_blocks,
                      const StepPlan& plan);
  void commit_update(const BatchView& batch, const StepPlan& plan);

  // The checks of a match_prefix of `req_id` with `n` hashes, before anything changes:
  // std::invalid_argument for more than (max_seq_len - 1) // block_size hashes or a known
  // req_id, CacheExhausted when no request row is free.
  void check_match(const char* op, int64_t req_id, int64_t n) const;

  // Registers `req_id` (unknown; a row free) at `seq_len` tokens (0 allowed: a request
  // registered before its first update) and returns its row.
  int32_t register_request(int64_t req_id, int64_t seq_len);

  // Any-layer read: rows, current lengths and query lengths of a batch whose
  // requests are all registered. Throws on a malformed batch. Writes at most
  // max_reqs entries of `out`.
  BatchStats lookup(const char* op, const BatchView& batch, const BatchLookup& out);
  // lookup() of the batch of an update just committed with `plan` (no change since):
  // the same answer, read from the plan instead of the id map.
  BatchStats lookup_planned(const BatchView& batch, const StepPlan& plan,
                            const BatchLookup& out) const;

  // Forgets the requests (all or none) and returns their rows and lengths in `rows`/`lens`.
  void release_seqs(const char* op, const int64_t* req_ids, int64_t n, int32_t* rows,
                    int32_t* lens);

  void reset_state();

  // Bumped by every change of the books (commit_update, release_seqs, reset_state): a
  // plan or a remembered pack is valid while it is unchanged.
  uint64_t version() const { return version_; }

  int64_t max_reqs() const { return max_reqs_; }
  int64_t max_seq_len() const { return max_seq_len_; }
  int64_t block_size() const { return block_size_; }
  int64_t num_reqs() const { return ids_.size(); }
  int64_t num_free_rows() const { return static_cast<int64_t>(free_rows_.size()); }
  // `tokens` is at most max_seq_len: the sum cannot overflow.
  int64_t blocks_of(int64_t tokens) const {
    return block_shift_ >= 0 ? (tokens + block_size_ - 1) >> block_shift_
                             : (tokens + block_size_ - 1) / block_size_;
  }
  // The block of position p, and p's offset in it (a shift and a mask at a power of two).
  int64_t block_of(int64_t p) const {
    return block_shift_ >= 0 ? p >> block_shift_ : p / block_size_;
  }
  int64_t offset_in_block(int64_t p) const {
    return block_shift_ >= 0 ? p & (block_size_ - 1) : p % block_size_;
  }

  // -1 when the request is unknown.
  int32_t row_of(int64_t req_id) const { return ids_.find(req_id); }
  int32_t seq_len_of_row(int32_t row) const { return seq_lens_[row]; }
  std::vector<int64_t> req_ids() const;

 private:
  static int64_t checked_max_reqs(int64_t max_reqs, int64_t max_seq_len, int64_t block_size);
  void check_shape(const char* op, const BatchView& batch) const;
  // Marks `row` as seen in this batch; throws if an earlier entry had it.
  void mark_once(const char* op, const BatchView& batch, int64_t i, int32_t row) {
    if (seen_[row] == stamp_) throw_repeated(op, batch, i);
    seen_[row] = stamp_;
  }
  [[noreturn]] static void throw_repeated(const char* op, const BatchView& batch, int64_t i);
  void check_new_ids_distinct(const char* op, const BatchView& batch) const;
  [[noreturn]] void throw_unknown(const char* op, const BatchView& batch, int64_t i) const;
  int64_t query_len(const BatchView& batch, int64_t i) const {
    return i < batch.num_prefill ? batch.prefill_lens[i] : 1;
  }

  int64_t max_reqs_;
  int64_t max_seq_len_;
  int64_t block_size_;
  int block_shift_;  // log2(block_size) at a power of two, else -1 (a division is slow)
  FlatIdMap ids_;
  std::vector<int64_t> id_of_row_;  // meaningful only for live rows
  std::vector<int32_t> seq_lens_;   // a row is live while the id map names it
  std::vector<int32_t> free_rows_;  // a stack
  std::vector<uint32_t> seen_;      // per row: the batch stamp that last saw it
  uint32_t stamp_ = 0;
  uint64_t version_ = 0;
  std::vector<int64_t> new_entries_;  // scratch: entries of unknown requests
};

std::string entry_name(const BatchView& batch, int64_t i);

// The plan of a batch of `size` entries (block_offsets: size + 1) from one StepPlan to another.
void copy_plan(const StepPlan& from, const StepPlan& to, int64_t size);

}  // namespace disagmoe
