// The CPU backend's core: a paged KV-cache block manager on the host.
// Free blocks are one contiguous stack; each request row owns a fixed-width
// slice of one flat block table. No per-block locks or reference counts.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "request_table.h"

namespace disagmoe {

// Block id written into block tables past a row's last block.
constexpr int32_t kPadBlockId = -1;

// Byte offsets of the metadata arrays inside one packed buffer: slot_mapping
// (int64) first, then int32 seq_lens, context_lens, query_start_loc,
// seq_start_loc and the row-major [batch_size, width] block table.
struct MetadataLayout {
  int64_t batch_size, width, num_tokens;
  int64_t slot_mapping, seq_lens, context_lens, query_start_loc, seq_start_loc, block_tables;
  int64_t nbytes;
};

// Throws std::invalid_argument when a count is outside [0, INT32_MAX].
MetadataLayout metadata_layout(int64_t batch_size, int64_t width, int64_t num_tokens);

struct PackResult {
  BatchStats stats;
  MetadataLayout layout;
  bool written;  // false when the buffer was too small: nothing was written
};

class BlockManager {
 public:
  // Throws std::invalid_argument, before allocating anything, when a size is
  // outside [1, INT32_MAX], the pool's slots pass INT32_MAX, or the tables would
  // not fit in this machine's memory.
  BlockManager(int64_t block_size, int64_t num_blocks, int64_t max_seq_len, int64_t max_reqs);

  int64_t block_size() const { return block_size_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t max_blocks_per_seq() const { return max_blocks_per_seq_; }
  int64_t num_free_blocks() const { return static_cast<int64_t>(free_blocks_.size()); }
  const RequestTable& table() const { return table_; }

  // First layer: reserve slots and advance lengths; other layers: read lengths.
  // Returns the batch's lengths after the step, valid until the next call.
  const int32_t* update_block_table(const char* op, const BatchView& batch, bool first_layer);

  // Every metadata array into one buffer of `capacity` bytes laid out by
  // metadata_layout(): lengths, prefix sums, block table rows (padded with
  // kPadBlockId) and the slot of every query token.
  PackResult pack_flash_attn_metadata(const char* op, const BatchView& batch, uint8_t* out,
                                      int64_t capacity);

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
  void write_block_table(const BatchView& batch, int64_t width, int32_t* block_tables,
                         int64_t* slot_mapping) const;
  void write_batch_infos(const BatchView& batch, int32_t* seq_lens, int32_t* context_lens,
                         int32_t* query_start_loc, int32_t* seq_start_loc) const;

  int64_t block_size_;
  int64_t num_blocks_;
  int64_t max_blocks_per_seq_;
  RequestTable table_;
  std::vector<int32_t> free_blocks_;  // a stack: the last entry is handed out first
  std::vector<int32_t> blocks_;       // [max_reqs, max_blocks_per_seq]
  // Scratch for one batch.
  std::vector<int32_t> rows_, old_lens_, new_lens_, block_offsets_, query_lens_;
};

}  // namespace disagmoe
