// The C++ core of the cpu and hybrid designs: the host's books of KV-cache blocks
// (the request books, the free blocks, each request row's block table) and the
// metadata packed from them. Free blocks are one contiguous stack; each request row
// owns a fixed-width slice of one flat block table. Blocks shared by equal prompt
// prefixes are the prefix cache's (prefix_cache.h, keyed by block id): it counts their
// holders and keeps the evictable ones; a pool never given hashes never reaches it.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "prefix_cache.h"
#include "request_table.h"

namespace disagmoe {

// Block id written into block tables past a row's last block.
constexpr int32_t kPadBlockId = -1;

// Byte offsets of the metadata arrays inside one packed buffer: the int32 seq_lens,
// context_lens, query_start_loc and seq_start_loc back to back from byte 0 (where they
// lie depends on the batch size alone), then the int64 slot_mapping, then the
// row-major [batch_size, width] int32 block table, 16-byte aligned.
struct MetadataLayout {
  int64_t batch_size, width, num_tokens;
  int64_t slot_mapping, seq_lens, context_lens, query_start_loc, seq_start_loc, block_tables;
  int64_t nbytes;
};

// Throws std::invalid_argument when a count is outside [0, INT32_MAX].
MetadataLayout metadata_layout(int64_t batch_size, int64_t width, int64_t num_tokens);

class BlockBooks {
 public:
  // Throws std::invalid_argument, before allocating anything, when a size is
  // outside [1, INT32_MAX], the pool's slots pass INT32_MAX, or the tables would
  // not fit in this machine's memory.
  BlockBooks(int64_t block_size, int64_t num_blocks, int64_t max_seq_len, int64_t max_reqs);

  int64_t max_blocks_per_seq() const { return max_blocks_per_seq_; }
  // Blocks a step may take: the free ones and the evictable ones.
  int64_t num_free_blocks() const {
    return static_cast<int64_t>(free_blocks_.size()) + cache_.num_evictable();
  }
  const RequestTable& table() const { return table_; }
  RequestTable& table() { return table_; }

  // A first-layer update planned by table().plan_update (with num_free_blocks()): with
  // the same batch and plan while table().version() is unchanged, registers the requests,
  // advances the lengths and takes the blocks the plan adds (their ids also into
  // block_ids, if given).
  // Evicts first what the free blocks lack; indexes the blocks the step fills under the
  // hashes their requests were matched with.
  void commit_first_layer(const BatchView& batch, const StepPlan& plan, int64_t total,
                          int32_t* block_ids) {
    table_.commit_update(batch, plan);
    if (total > static_cast<int64_t>(free_blocks_.size())) evict(total - free_blocks_.size());
    take_blocks(batch, plan, total, block_ids);
    if (rows_with_hashes_ > 0) index_filled(batch, plan);
  }

  // The prefix cache's match (docs/prefix-caching.md): registers the unknown `req_id` at
  // the length of the longest run of leading hashes[0, n) indexed now, its blocks in the
  // request's row (a reference each), remembers the hashes and returns the length.
  // Throws ValueError (n past (max_seq_len - 1) / block_size, a known req_id) and
  // CacheExhausted (no free row) before changing anything.
  int64_t match_prefix(const char* op, int64_t req_id, const int64_t* hashes, int64_t n);
  PrefixCacheStats prefix_cache_stats() const { return cache_.stats(); }

  // The device rows of the hybrid design: whether a matched request's first update is in
  // `batch` (its matched blocks are not in its device row yet); stage_matched then
  // rewrites the staged plan of a committed step so that such an entry's row is written
  // from block 0 (old length 0, its matched blocks first among its ids), and returns the
  // ids it staged. matched_unstaged counts the extra ids.
  int64_t matched_unstaged(const BatchView& batch, const StepPlan& plan) const;
  int64_t stage_matched(const BatchView& batch, const StepPlan& plan, int32_t* old_lens,
                        int32_t* block_offsets, int32_t* block_ids);
  bool any_unstaged() const { return num_unstaged_ > 0; }
  bool unstaged(int32_t row) const { return unstaged_[row] != 0; }

  // A pack in two halves, for a caller that stages the metadata itself: lookup_for_pack
  // checks the batch and returns its stats (the lengths then at packed_lengths());
  // write_metadata, right after it with the same batch, writes the arrays laid out by
  // `layout`: the lengths and slot_mapping into `head` (the layout's bytes before the
  // table, at their offsets), and block table row i at table + i * pitch (pitch >=
  // layout.width). With a `buffer` index (a ring buffer's: 0 and up), the rows that this
  // table already holds from the last write of that index (the same request in the same
  // entry, the same table and pitch) get only the blocks added since.
  BatchStats lookup_for_pack(const char* op, const BatchView& batch);
  // lookup_for_pack of the batch of an update just committed with `plan`, from the plan.
  BatchStats lookup_planned(const BatchView& batch, const StepPlan& plan);
  const int32_t* packed_lengths() const { return new_lens_.data(); }
  void write_metadata(const BatchView& batch, const MetadataLayout& layout, uint8_t* head,
                      int32_t* table, int64_t pitch, int64_t buffer);

  void release_seqs(const char* op, const int64_t* req_ids, int64_t n);
  void reset_state();

  std::vector<int32_t> block_ids(const char* op, int64_t req_id) const;
  // Empty when every invariant holds, else what is wrong.
  std::string check_integrity() const;

 private:
  static int64_t checked_width(int64_t block_size, int64_t num_blocks, int64_t max_seq_len,
                               int64_t max_reqs);
  const int32_t* row_blocks(int32_t row) const {
    return blocks_.data() + static_cast<int64_t>(row) * max_blocks_per_seq_;
  }
  // What a buffer's block table rows hold since its last pack.
  struct PackedRows {
    const int32_t* table = nullptr;
    int64_t pitch = -1;
    int64_t size = 0;
    std::vector<int32_t> rows, blocks, padded;  // padded: the row is PAD up to this width
    std::vector<uint32_t> epochs;
  };
  // Takes the blocks a planned step adds (into the rows, and into block_ids if given).
  void take_blocks(const BatchView& batch, const StepPlan& plan, int64_t total, int32_t* block_ids);
  // Pushes the `count` least recently used evictable blocks on the free stack.
  void evict(int64_t count);
  void index_filled(const BatchView& batch, const StepPlan& plan);
  // A released row's blocks (last to first) through the cache; its hashes forgotten.
  void release_cached(int32_t row, int64_t count);
  void write_block_table(const BatchView& batch, int64_t width, int32_t* block_tables,
                         int64_t pitch, int64_t* slot_mapping, PackedRows* packed);
  void write_batch_infos(const BatchView& batch, int32_t* seq_lens, int32_t* context_lens,
                         int32_t* query_start_loc, int32_t* seq_start_loc) const;

  int64_t block_size_;
  int64_t num_blocks_;
  int64_t max_blocks_per_seq_;
  RequestTable table_;
  std::vector<int32_t> free_blocks_;              // a stack: the last entry is handed out first
  std::vector<int32_t> blocks_;                   // [max_reqs, max_blocks_per_seq]
  std::vector<uint32_t> row_epochs_;              // per row: bumped whenever the row changes hands
  std::vector<PackedRows> packed_;                // per ring buffer index (write_metadata)
  PrefixCache cache_;                             // entries are block ids
  std::vector<std::vector<int64_t>> row_hashes_;  // per row: the hashes it was matched with
  int64_t rows_with_hashes_ = 0;
  std::vector<int8_t> unstaged_;  // per row: matched blocks not yet staged (hybrid)
  int64_t num_unstaged_ = 0;
  // Scratch for one batch.
  std::vector<int32_t> rows_, new_lens_, query_lens_;
};

}  // namespace disagmoe
