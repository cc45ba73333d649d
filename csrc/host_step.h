// The cpu design's step path (step.h): the books and the block tables on the host, the
// metadata written into a ring buffer and copied into the device's metadata buffer.
#pragma once

#include <cstdint>
#include <vector>

#include "block_books.h"
#include "step.h"

namespace disagmoe {

// The cpu design: the core keeps the books and the tables on the host; a pack writes the
// metadata into the next ring buffer (block table rows at a fixed pitch, so a row stays
// where it was whatever the width: a decode step writes O(batch) words) and copies it
// into the device buffer laid out by metadata_layout (a 2D copy of the rows, one copy
// of the rest).
class HostStep : public Step {
 public:
  HostStep(BlockBooks& core, int64_t depth, int device);

  // Ring buffer k: its block table (max_reqs rows of max_blocks_per_seq words) and its
  // `head`, where the lengths and slot_mapping are laid out as in the metadata buffer
  // (the layout's bytes before the table). A table of at most kCompactBytes is gathered
  // there too, after them, and the whole metadata goes in one copy (a 2D copy of the
  // rows costs a call more): the head needs layout.block_tables bytes, and the table's
  // then.
  static constexpr int64_t kCompactBytes = 16384;
  // Throws unless the table holds max_reqs rows of max_blocks_per_seq int32.
  void set_buffer(int64_t k, int32_t* table, int64_t table_bytes, uint8_t* head,
                  int64_t head_bytes);
  // The device buffer (a host buffer on torch's CPU device) the metadata is copied into
  // (the last pack is forgotten: its metadata is not in it).
  void set_out(uint8_t* out, int64_t nbytes);

  void commit(const char* op);
  // The pack of `batch` at `layer`: a hit when it is the batch of the last pack, which
  // the caller remembers (`known` is that pack's id), at another layer, with nothing
  // changed since; else the metadata sent on `stream`.
  PackOutcome pack(const char* op, const BatchView& batch, int64_t layer, cuda::Stream stream,
                   int64_t known);
  void release(const char* op, const int64_t* req_ids, int64_t n);
  void reset();
  int64_t num_free_blocks() const override { return core_.num_free_blocks(); }

 private:
  void send(const MetadataLayout& l, cuda::Stream stream);

  BlockBooks& core_;
  int64_t pitch_;
  struct Buffer {
    int32_t* table = nullptr;
    uint8_t* head = nullptr;
    int64_t head_bytes = 0;
  };
  std::vector<Buffer> buffers_;
  uint8_t* out_ = nullptr;
  int64_t out_bytes_ = 0;
};

}  // namespace disagmoe
