#include "block_books.h"

#include <algorithm>
#include <cstring>
#include <new>

#include "sizes.h"

namespace disagmoe {

MetadataLayout metadata_layout(int64_t batch_size, int64_t width, int64_t num_tokens) {
  const char* op = "metadata_layout";
  check_range(op, "batch_size", batch_size, 0, kMaxInt32);
  check_range(op, "width", width, 0, kMaxInt32);
  check_range(op, "num_tokens", num_tokens, 0, kMaxInt32);
  MetadataLayout l;
  l.batch_size = batch_size;
  l.width = width;
  l.num_tokens = num_tokens;
  // The lengths first (where they lie depends on the batch size alone), then slot_mapping
  // (on the batch size), then the table (16-byte aligned). Past int32 counts, every
  // offset but the end is under 2**36 bytes; the table may pass int64.
  l.seq_lens = 0;
  l.context_lens = 4 * batch_size;
  l.query_start_loc = 8 * batch_size;
  l.seq_start_loc = 12 * batch_size + 4;
  l.slot_mapping = 16 * batch_size + 8;
  l.block_tables = (l.slot_mapping + 8 * num_tokens + 15) & ~int64_t{15};
  int64_t table_bytes = checked_mul(op, "the block table's bytes", 4 * batch_size, width);
  int64_t end = checked_add(op, "the buffer's bytes", l.block_tables, table_bytes);
  l.nbytes = checked_add(op, "the buffer's bytes", end, 7) & ~int64_t{7};
  return l;
}

int64_t BlockBooks::checked_width(int64_t block_size, int64_t num_blocks, int64_t max_seq_len,
                                  int64_t max_reqs) {
  const char* op = "BlockBooks";
  check_range(op, "block_size", block_size, 1, kMaxInt32);
  check_range(op, "num_blocks", num_blocks, 1, kMaxInt32);
  check_range(op, "max_seq_len", max_seq_len, 1, kMaxInt32);
  check_range(op, "max_reqs", max_reqs, 1, kMaxInt32);
  if (num_blocks > kMaxInt32 / block_size)
    throw std::invalid_argument(std::string(op) + ": num_blocks=" + str(num_blocks) +
                                " x block_size=" + str(block_size) + " = " +
                                str(num_blocks * block_size) +
                                " slots, past the int32 range of slots (" + str(kMaxInt32) + ")");
  int64_t width = (max_seq_len + block_size - 1) / block_size;
  // Both counts are at most INT32_MAX: entries fit in int64, their bytes may not.
  int64_t entries = max_reqs * width;
  int64_t bytes = checked_mul(op, "the block table's bytes", entries, 4);
  bytes = checked_add(op, "the tables' bytes", bytes,
                      4 * num_blocks + 45 * (max_reqs + 1) + RequestTable::host_bytes(max_reqs) +
                          PrefixCache::host_bytes(num_blocks));
  check_host_bytes(op,
                   "the block tables of max_reqs=" + str(max_reqs) + " rows x " + str(width) +
                       " blocks (max_seq_len=" + str(max_seq_len) +
                       ", block_size=" + str(block_size) + ") and the books",
                   bytes);
  return width;
}

BlockBooks::BlockBooks(int64_t block_size, int64_t num_blocks, int64_t max_seq_len,
                       int64_t max_reqs) try
    : block_size_(block_size),
      num_blocks_(num_blocks),
      max_blocks_per_seq_(checked_width(block_size, num_blocks, max_seq_len, max_reqs)),
      table_(max_reqs, max_seq_len, block_size),
      cache_(num_blocks) {
  blocks_.assign(max_reqs * max_blocks_per_seq_, kPadBlockId);
  row_epochs_.assign(max_reqs, 0);
  row_hashes_.resize(max_reqs);
  unstaged_.assign(max_reqs, 0);
  for (auto* v : {&rows_, &new_lens_, &query_lens_}) v->resize(max_reqs);
  reset_state();
} catch (const std::bad_alloc&) {
  throw std::invalid_argument(
      "BlockBooks: cannot allocate the block tables of max_reqs=" + str(max_reqs) +
      " rows for max_seq_len=" + str(max_seq_len) + " and block_size=" + str(block_size));
}

void BlockBooks::reset_state() {
  table_.reset_state();
  free_blocks_.resize(num_blocks_);
  // Popping from the back hands out block 0 first.
  for (int64_t i = 0; i < num_blocks_; ++i)
    free_blocks_[i] = static_cast<int32_t>(num_blocks_ - 1 - i);
  std::fill(blocks_.begin(), blocks_.end(), kPadBlockId);
  for (uint32_t& epoch : row_epochs_) ++epoch;
  cache_.reset();
  if (rows_with_hashes_ > 0)
    for (auto& hashes : row_hashes_) hashes.clear();
  rows_with_hashes_ = 0;
  std::fill(unstaged_.begin(), unstaged_.end(), 0);
  num_unstaged_ = 0;
}

int64_t BlockBooks::match_prefix(const char* op, int64_t req_id, const int64_t* hashes, int64_t n) {
  table_.check_match(op, req_id, n);
  int64_t m = cache_.count_hits(hashes, n);
  int32_t row = table_.register_request(req_id, m * block_size_);
  ++row_epochs_[row];
  cache_.acquire(hashes, m, blocks_.data() + static_cast<int64_t>(row) * max_blocks_per_seq_);
  cache_.count_query(n, m);
  if (n > 0) {
    row_hashes_[row].assign(hashes, hashes + n);
    ++rows_with_hashes_;
  }
  if (m > 0) {
    unstaged_[row] = 1;
    ++num_unstaged_;
  }
  return m * block_size_;
}

void BlockBooks::evict(int64_t count) {
  for (int64_t k = 0; k < count; ++k) free_blocks_.push_back(cache_.evict());
}

void BlockBooks::index_filled(const BatchView& batch, const StepPlan& plan) {
  for (int64_t i = 0; i < batch.size; ++i) {
    const std::vector<int64_t>& hashes = row_hashes_[plan.rows[i]];
    int64_t n = static_cast<int64_t>(hashes.size());
    int64_t first = table_.block_of(plan.old_lens[i]);
    if (first >= n) continue;
    int64_t last = std::min(table_.block_of(plan.new_lens[i]), n);
    const int32_t* blocks = row_blocks(plan.rows[i]);
    for (int64_t k = first; k < last; ++k) cache_.insert(hashes[k], blocks[k]);
  }
}

int64_t BlockBooks::matched_unstaged(const BatchView& batch, const StepPlan& plan) const {
  int64_t extra = 0;
  for (int64_t i = 0; i < batch.size; ++i)
    if (unstaged_[plan.rows[i]]) extra += table_.blocks_of(plan.old_lens[i]);
  return extra;
}

int64_t BlockBooks::stage_matched(const BatchView& batch, const StepPlan& plan, int32_t* old_lens,
                                  int32_t* block_offsets, int32_t* block_ids) {
  int64_t offset = 0;
  for (int64_t i = 0; i < batch.size; ++i) {
    int32_t row = plan.rows[i];
    int64_t first = table_.blocks_of(plan.old_lens[i]);
    if (unstaged_[row]) {
      unstaged_[row] = 0;
      --num_unstaged_;
      first = 0;
      old_lens[i] = 0;
    }
    int64_t count = table_.blocks_of(plan.new_lens[i]) - first;
    block_offsets[i] = static_cast<int32_t>(offset);
    std::memcpy(block_ids + offset, row_blocks(row) + first, count * sizeof(int32_t));
    offset += count;
  }
  block_offsets[batch.size] = static_cast<int32_t>(offset);
  return offset;
}

void BlockBooks::take_blocks(const BatchView& batch, const StepPlan& plan, int64_t total,
                             int32_t* block_ids) {
  // The m-th block that this step adds is the m-th from the top of the stack.
  const int64_t top = static_cast<int64_t>(free_blocks_.size()) - 1;
  for (int64_t i = 0; i < batch.size; ++i) {
    int32_t row = plan.rows[i];
    if (plan.old_lens[i] == 0) ++row_epochs_[row];  // a new request took the row
    int64_t first = table_.blocks_of(plan.old_lens[i]);
    int64_t count = table_.blocks_of(plan.new_lens[i]) - first;
    if (count == 0) continue;  // most entries of a decode step
    int64_t offset = plan.block_offsets[i];
    int32_t* dst = blocks_.data() + static_cast<int64_t>(row) * max_blocks_per_seq_ + first;
    for (int64_t k = 0; k < count; ++k) dst[k] = free_blocks_[top - offset - k];
    if (block_ids) std::memcpy(block_ids + offset, dst, count * sizeof(int32_t));
  }
  free_blocks_.resize(free_blocks_.size() - total);
}

void BlockBooks::write_block_table(const BatchView& batch, int64_t width, int32_t* block_tables,
                                   int64_t pitch, int64_t* slot_mapping, PackedRows* packed) {
  bool same = packed && packed->table == block_tables && packed->pitch == pitch;
  int64_t known = same ? std::min(packed->size, batch.size) : 0;
  if (packed) {
    packed->rows.resize(std::max<size_t>(packed->rows.size(), batch.size));
    packed->blocks.resize(packed->rows.size());
    packed->epochs.resize(packed->rows.size());
    packed->padded.resize(packed->rows.size());
  }
  int64_t t = 0;
  for (int64_t i = 0; i < batch.size; ++i) {
    int32_t r = rows_[i];
    const int32_t* blocks = row_blocks(r);
    int64_t seq_len = new_lens_[i];
    int64_t num_blocks = table_.blocks_of(seq_len);
    int32_t* row = block_tables + i * pitch;
    if (i < known && packed->rows[i] == r && packed->epochs[i] == row_epochs_[r] &&
        packed->blocks[i] <= num_blocks) {  // this entry's row as packed, plus new blocks
      int64_t had = packed->blocks[i];
      std::memcpy(row + had, blocks + had, (num_blocks - had) * sizeof(int32_t));
      // Padding past the row's blocks: up to the widest row this entry was ever packed at.
      if (packed->padded[i] < width) {
        std::fill(row + std::max<int64_t>(num_blocks, packed->padded[i]), row + width, kPadBlockId);
        packed->padded[i] = static_cast<int32_t>(width);
      }
    } else {
      std::memcpy(row, blocks, num_blocks * sizeof(int32_t));
      std::fill(row + num_blocks, row + width, kPadBlockId);
      if (packed) packed->padded[i] = static_cast<int32_t>(width);
    }
    if (packed) {
      packed->rows[i] = r;
      packed->epochs[i] = row_epochs_[r];
      packed->blocks[i] = static_cast<int32_t>(num_blocks);
    }
    for (int64_t p = seq_len - query_lens_[i]; p < seq_len; ++p)
      slot_mapping[t++] = static_cast<int64_t>(blocks[table_.block_of(p)]) * block_size_ +
                          table_.offset_in_block(p);
  }
}

void BlockBooks::write_batch_infos(const BatchView& batch, int32_t* seq_lens, int32_t* context_lens,
                                   int32_t* query_start_loc, int32_t* seq_start_loc) const {
  int32_t q_start = 0, s_start = 0;
  for (int64_t i = 0; i < batch.size; ++i) {
    seq_lens[i] = new_lens_[i];
    context_lens[i] = new_lens_[i] - query_lens_[i];
    query_start_loc[i] = q_start;
    seq_start_loc[i] = s_start;
    q_start += query_lens_[i];
    s_start += new_lens_[i];
  }
  query_start_loc[batch.size] = q_start;
  seq_start_loc[batch.size] = s_start;
}

BatchStats BlockBooks::lookup_for_pack(const char* op, const BatchView& batch) {
  return table_.lookup(op, batch, {rows_.data(), new_lens_.data(), query_lens_.data()});
}

BatchStats BlockBooks::lookup_planned(const BatchView& batch, const StepPlan& plan) {
  return table_.lookup_planned(batch, plan, {rows_.data(), new_lens_.data(), query_lens_.data()});
}

void BlockBooks::write_metadata(const BatchView& batch, const MetadataLayout& l, uint8_t* head,
                                int32_t* table, int64_t pitch, int64_t buffer) {
  auto i32 = [head](int64_t offset) { return reinterpret_cast<int32_t*>(head + offset); };
  write_batch_infos(batch, i32(l.seq_lens), i32(l.context_lens), i32(l.query_start_loc),
                    i32(l.seq_start_loc));
  PackedRows* packed = nullptr;
  if (buffer >= 0) {
    if (static_cast<int64_t>(packed_.size()) <= buffer) packed_.resize(buffer + 1);
    packed = &packed_[buffer];
  }
  write_block_table(batch, l.width, table, pitch, reinterpret_cast<int64_t*>(head + l.slot_mapping),
                    packed);
  if (packed) {
    packed->table = table;
    packed->pitch = pitch;
    packed->size = batch.size;
  }
}

void BlockBooks::release_seqs(const char* op, const int64_t* req_ids, int64_t n) {
  std::vector<int32_t> rows(n), lens(n);
  table_.release_seqs(op, req_ids, n, rows.data(), lens.data());
  bool caching = rows_with_hashes_ > 0 || cache_.num_cached() > 0;
  for (int64_t i = 0; i < n; ++i) {
    int32_t* blocks = blocks_.data() + static_cast<int64_t>(rows[i]) * max_blocks_per_seq_;
    int64_t count = table_.blocks_of(lens[i]);
    if (caching)
      release_cached(rows[i], count);
    else
      free_blocks_.insert(free_blocks_.end(), blocks, blocks + count);
    std::fill(blocks, blocks + count, kPadBlockId);
    ++row_epochs_[rows[i]];
  }
}

void BlockBooks::release_cached(int32_t row, int64_t count) {
  const int32_t* blocks = row_blocks(row);
  // The row's own blocks go back as a release without the cache pushes them; the shared
  // ones lose a holder, the last first (a prompt's tail is evicted before its head).
  for (int64_t k = 0; k < count; ++k)
    if (!cache_.indexed(blocks[k])) free_blocks_.push_back(blocks[k]);
  for (int64_t k = count - 1; k >= 0; --k)
    if (cache_.indexed(blocks[k])) cache_.release(blocks[k]);
  if (!row_hashes_[row].empty()) {
    row_hashes_[row].clear();
    --rows_with_hashes_;
  }
  if (unstaged_[row]) {
    unstaged_[row] = 0;
    --num_unstaged_;
  }
}

std::vector<int32_t> BlockBooks::block_ids(const char* op, int64_t req_id) const {
  int32_t row = table_.row_of(req_id);
  if (row < 0)
    throw UnknownRequest(std::string(op) + ": request id " + str(req_id) +
                         " is not a running request");
  const int32_t* blocks = row_blocks(row);
  return std::vector<int32_t>(blocks, blocks + table_.blocks_of(table_.seq_len_of_row(row)));
}

std::string BlockBooks::check_integrity() const {
  std::vector<int32_t> holders(num_blocks_, 0);
  std::vector<int8_t> is_free(num_blocks_, 0);
  auto out_of_range = [&](int32_t block) { return block < 0 || block >= num_blocks_; };
  for (int32_t block : free_blocks_) {
    if (out_of_range(block)) return "the free list holds block " + str(block) + ", out of range";
    if (is_free[block]) return "block " + str(block) + " is free twice";
    is_free[block] = 1;
  }
  int64_t owned = 0;
  for (int64_t req_id : table_.req_ids()) {
    int32_t row = table_.row_of(req_id);
    int64_t count = table_.blocks_of(table_.seq_len_of_row(row));
    const int32_t* blocks = row_blocks(row);
    for (int64_t k = 0; k < count; ++k) {
      int32_t block = blocks[k];
      std::string where = "request " + str(req_id);
      if (out_of_range(block)) return where + " holds block " + str(block) + ", out of range";
      if (is_free[block]) return "block " + str(block) + " is both free and in " + where;
      if (holders[block] > 0 && !cache_.indexed(block))
        return "block " + str(block) + " is both owned and in " + where + " (and not shared)";
      owned += holders[block]++ == 0;
    }
    for (int64_t k = count; k < max_blocks_per_seq_; ++k)
      if (blocks[k] != kPadBlockId)
        return "request " + str(req_id) + " has block " + str(blocks[k]) + " past its last block";
  }
  if (table_.num_reqs() + table_.num_free_rows() != table_.max_reqs())
    return str(table_.num_reqs()) + " live + " + str(table_.num_free_rows()) +
           " free request rows != " + str(table_.max_reqs());
  std::string err = cache_.check_integrity(holders, is_free);
  if (!err.empty()) return err;
  int64_t free = static_cast<int64_t>(free_blocks_.size()), evictable = cache_.num_evictable();
  if (owned + free + evictable != num_blocks_)
    return str(owned) + " owned + " + str(free) + " free + " + str(evictable) +
           " evictable blocks != " + str(num_blocks_) + " blocks";
  int64_t with_hashes = 0;
  for (const auto& hashes : row_hashes_) with_hashes += !hashes.empty();
  if (with_hashes != rows_with_hashes_)
    return str(with_hashes) + " rows hold hashes, the count says " + str(rows_with_hashes_);
  return "";
}

}  // namespace disagmoe
